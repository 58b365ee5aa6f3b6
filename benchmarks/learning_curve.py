"""Learning curve on real MovieLens-1M users: pairwise accuracy against the number of training users.

    .venv/bin/python benchmarks/learning_curve.py [--sizes 100,400,1000] [--eval-pairs 1000]
        [--out runs/learning-curve] [--cells sft-100,dmpo-k3-100] [--valid-lrs 2e-4,1e-3]
        [--dmpo-lr 1e-3] [--dmpo-sft-weight 1] [--rerun dmpo-k3-1000] [overrides ...]

1. Builds the data with the authors' rules (`dmporec prepare --rules authors`) from
   ../shared/data/raw/ml-1m-users-1-2999: the test pairs are the authors' 1000 (each test user's
   first negative, as their eval file has it: 929 of their records identical, the rest differing
   only in their U+FFFD titles), validation the next 100,
   and the training pool the first 100 qualifying users plus the 1,586 after validation.
2. Training sets: the first N users of that pool, in id order (data/train_N.jsonl).
3. One experiment (`dmporec experiment`, resumable cell by cell: a stopped run starts again where
   it stopped): zero-shot; per N the baselines fitted on those N users (random, popularity,
   BPR-MF, MiniLM similarity), SFT, and DMPO k=3 on that SFT; DPO k=1 at the largest N. Settings
   of configs/ml-1m-smollm2.yaml (light SFT, one DMPO epoch, both listing orders), titles with
   their year in every split.
   With --valid-lrs, DMPO k=3 from the smallest N's SFT at each learning rate is scored on the
   validation users (all 5 negatives, both orders; cells valid-dmpo-k3-N-lrX, not on the curve):
   pick the rate there, then --dmpo-lr X runs the curve's DMPO cells at it (named -lrX, their
   own line; a cell never changes settings under its name: the experiment refuses).
   --dmpo-sft-weight W adds the authors' SFT term on the chosen answers (`dmpo.sft_weight`; they
   use 1.0) to the curve's DMPO/DPO cells (named -sftwW, again their own line).
4. Diagnostics (diagnostics.md, and in curve.json): each model's accuracy on the pairs of the
   first 100 training users (all 5 negatives, scored through eval.split=valid), accuracy by the
   positive's listed position, DMPO's reward accuracy and margin in its first and last steps.
5. With --listwise-users U: every finished model and popularity / BPR-MF rank U test users'
   lists of --listwise candidates (the positive and the builder's sampled unrated titles):
   HR@1, NDCG@5, MRR with CIs (listwise.md; `dmporec evaluate --out` keeps them apart).
6. Writes results.md, report.md, curve.png (accuracy against N with 95% CIs, one line per model)
   curve.json (the points and the paired tests) and paired.md (every trained model against
   zero-shot, popularity and BPR-MF at its N; DMPO/DPO against their SFT; SFT against SFT at the
   N below) under --out, and copies them to --publish, with results.jsonl: every finished cell's
   row carrying its per-pair correctness, paired tests and diagnostics.
7. Across sessions: a run starts by restoring the cells --publish holds that --out lacks (a new
   session's checkout has no runs/), so it trains only what is missing and the published curve
   only grows; an SFT cell whose adapter a DMPO/DPO cell run now needs is trained again.
   --rerun CELLS runs finished cells again; their new rows replace the published ones.

Every cell costs CPU time (measured alone on 2 cores, 2026-12-02: 9-17 min to score the 1000
test pairs in both orders; SFT 1,744 s at N = 1000; DPO k=1 with the SFT term 2,485 s at N = 1000
with its reference pass; DMPO k=3 with the SFT term ~9.3 s per user, 3,710 s at N = 400): run it
in the background, one heavy job at a time, from a checkout you do not edit meanwhile (`git
worktree`). A stopped cell resumes from its last checkpoint with
sft.save_every_steps / dmpo.save_every_steps, and its reference pass and scoring from the batches
they had kept.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from dmporec.baselines import BPRMF, Popularity  # noqa: E402
from dmporec.baselines import pair_scores as baseline_pair_scores  # noqa: E402
from dmporec.build import BuildConfig, prepare  # noqa: E402
from dmporec.config import load_config  # noqa: E402
from dmporec.data import load_records  # noqa: E402
from dmporec.evaluation import pair_scores, read_jsonl, read_predictions  # noqa: E402
from dmporec.metrics import pair_correct, paired_auc_test, paired_test  # noqa: E402
from dmporec.model import LINEAGE  # noqa: E402
from dmporec.records import (  # noqa: E402
    TitleNormalization,
    atomic_write_text,
    read_records,
    write_records,
)
from dmporec.report import write_report  # noqa: E402
from dmporec.stages.experiment import run_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The test pairs as the authors score them: each test user's first negative (1000 pairs).
EVAL = "rec_data_ml_1m_eval_ranking.json"
RAW = ROOT.parent / "shared" / "data" / "raw" / "ml-1m-users-1-2999"
BASE = ROOT / "configs" / "ml-1m-smollm2.yaml"


def build_data(out: Path, sizes: list[int]) -> Path:
    """The authors' construction, then train_N.jsonl for every N (built once, reused after)."""
    data = out / "data"
    if not (data / "stats.json").is_file():
        prepare(
            BuildConfig(source="movielens", rules="authors", name="rec_data_ml_1m"),
            RAW / "ratings.dat.gz",
            RAW / "movies.dat",
            data,
        )
    pool = read_records(data / "train.jsonl") + read_records(data / "rest.jsonl")
    if max(sizes) > len(pool):
        raise SystemExit(f"--sizes: at most {len(pool)} training users are available")
    for n in sizes:
        if not (data / f"train_{n}.jsonl").is_file():
            write_records(data / f"train_{n}.jsonl", pool[:n])
    return data


def variant_tag(lr: float | None = None, sft_weight: float | None = None) -> str:
    """The cell-name part of DMPO settings other than the base config's: -lrX (learning rate),
    -sftwW (the authors' SFT term on the chosen answers, `dmpo.sft_weight`)."""
    return ("" if lr is None else f"-lr{lr:g}") + (
        "" if sft_weight is None else f"-sftw{sft_weight:g}"
    )


def valid_file(data: Path, users: int) -> Path:
    """The first `users` validation users (all their negatives), built once."""
    path = data / f"valid_{users}.jsonl"
    if not path.is_file():
        valid = read_records(data / "valid.jsonl")
        if not 1 <= users <= len(valid):
            raise SystemExit(f"--valid-users: 1 to {len(valid)} validation users are available")
        write_records(path, valid[:users])
    return path


def experiment_file(
    out: Path,
    data: Path,
    sizes: list[int],
    eval_pairs: int,
    extra: list[str],
    dmpo_lr: float | None = None,
    probe_lrs: tuple[float, ...] = (),
    valid_users: int = 60,
    sft_weight: float | None = None,
) -> Path:
    def train(n: int) -> list[str]:
        path = data / f"train_{n}.jsonl"
        return [f"data.sft_train={path}", f"data.dmpo_train={path}"]

    def lr(value: float | None) -> list[str]:
        return [] if value is None else [f"dmpo.learning_rate={value:g}"]

    # The curve's DMPO/DPO cells: the chosen rate, and the SFT term when asked for.
    tag = variant_tag(dmpo_lr, sft_weight)
    dmpo = [*lr(dmpo_lr), *([] if sft_weight is None else [f"dmpo.sft_weight={sft_weight:g}"])]

    cells: list[dict] = [
        {"name": "zero-shot", "stages": ["zero_shot"], "overrides": train(sizes[0])}
    ]
    # The DMPO learning rate chosen on validation users: DMPO k=3 from the smallest N's SFT at
    # each rate, scored on the validation users' pairs (all 5 negatives, both orders).
    low = min(sizes)
    cells.append({"name": f"sft-{low}", "stages": ["sft"], "overrides": train(low)})
    for value in probe_lrs:
        cells.append(
            {
                "name": f"{VALID_PREFIX}dmpo-k3-{low}{variant_tag(value)}",
                "stages": ["dmpo"],
                "sft_from": f"sft-{low}",
                "overrides": [
                    *train(low),
                    "dmpo.k=3",
                    *lr(value),
                    "eval.split=valid",
                    f"data.valid={valid_file(data, valid_users)}",
                ],
            }
        )
    for n in sizes:
        cells += [
            {"name": f"baselines-{n}", "stages": ["baselines"], "overrides": train(n)},
            *([] if n == low else [{"name": f"sft-{n}", "stages": ["sft"], "overrides": train(n)}]),
            {
                "name": f"dmpo-k3-{n}{tag}",
                "stages": ["dmpo"],
                "sft_from": f"sft-{n}",
                "overrides": [*train(n), "dmpo.k=3", *dmpo],
            },
        ]
    top = max(sizes)
    cells.append(
        {
            "name": f"dpo-k1-{top}{tag}",
            "stages": ["dmpo"],
            "sft_from": f"sft-{top}",
            "overrides": [*train(top), "dmpo.k=1", *dmpo],
        }
    )
    # The paper's ablation over the number of negatives, and S-DPO, at the largest N on the same
    # SFT, rate and SFT term (issue #36): cells of the full curve like the others (~2.5 h each on
    # 2 cores at N = 1000, so a session runs them one at a time with --cells).
    for loss, k in (("dmpo", 2), ("dmpo", 5), ("sdpo", 3)):
        cells.append(
            {
                "name": f"{loss}-k{k}-{top}{tag}",
                "stages": ["dmpo"],
                "sft_from": f"sft-{top}",
                "overrides": [
                    *train(top),
                    f"dmpo.k={k}",
                    *([f"dmpo.loss={loss}"] if loss != "dmpo" else []),
                    *dmpo,
                ],
            }
        )
    exp = {
        "base": str(BASE),
        "output_dir": str(out),
        "overrides": [
            f"data.eval={data / EVAL}",
            f"data.max_eval_pairs={eval_pairs}",
            "data.title_normalization.strip_year=false",
            # 1 user x 8 accumulation steps, as every cell of the curve so far was trained (the
            # base config's CPU default is 2 x 4 since 2026-12-02); a command-line grad_accum
            # (the documented runs give 2) is then the users per optimizer step.
            "sft.batch_size=1",
            "sft.grad_accum=8",
            "dmpo.batch_size=1",
            "dmpo.grad_accum=8",
            *extra,
        ],
        "cells": cells,
    }
    path = out / "experiment.yaml"
    atomic_write_text(
        path, "# written by benchmarks/learning_curve.py\n" + yaml.safe_dump(exp, sort_keys=False)
    )
    return path


PUBLISHED = "results.jsonl"  # under --publish: every finished cell's row, carrying its results


def restore(
    out: Path,
    cells: dict[str, dict],
    publish: Path,
    only: list[str] | None,
    rerun: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """Bring back the cells that earlier sessions finished and published (a session's runs/ does
    not outlive it; the repository does): their rows from --publish's results.jsonl go into
    out/results.jsonl, so the experiment skips them and the curve, the tables, the paired tests
    and the diagnostics include them, from what each row carries (per-pair correctness, paired
    tests, diagnostics, the learning-rate probe), and their lists into out/listwise. A published
    row whose cell this experiment makes with other overrides stops the run (it would be
    relabelled). Returns the restored cells, and the SFT cells to train again: those a cell run
    now starts from whose adapter is not here (their rows, published or restored before, are
    left out of out/results.jsonl until they have trained). The `rerun` cells are neither
    restored nor kept: they run again, and their new rows replace the published ones. `cells`:
    the experiment file's cells by name."""
    source = publish / PUBLISHED
    results = out / "results.jsonl"
    every = read_jsonl(results) if results.is_file() else []
    local = [r for r in every if r["cell"] not in rerun]
    have = {r["cell"] for r in local}
    published = read_jsonl(source) if source.is_file() else []
    published = [r for r in published if r["cell"] not in have and r["cell"] not in rerun]
    for r in published:
        cell = cells.get(r["cell"])
        if cell is not None and cell["overrides"] != r["overrides"]:
            raise SystemExit(
                f"{source}: cell {r['cell']} was published with overrides {r['overrides']}; this "
                f"run gives it {cell['overrides']} (another --out?): rerun with the --out it was "
                "made with, or --publish elsewhere"
            )
    done = have | {r["cell"] for r in published}
    retrain = {
        c["sft_from"]
        for name, c in cells.items()
        if c.get("sft_from")
        and name not in done
        and (not only or name in only)
        and not (out / c["sft_from"] / "sft" / LINEAGE).is_file()
    }
    rows = [r for r in published if r["cell"] not in retrain]
    stay = [r for r in local if r["cell"] not in retrain]  # restored before, without an adapter
    if rows or len(stay) < len(every):
        atomic_write_text(results, "".join(json.dumps(r) + "\n" for r in [*rows, *stay]))
    curve = publish / "curve.json"
    lists = json.loads(curve.read_text()).get("listwise", []) if curve.is_file() else []
    restored = {r["cell"] for r in rows}
    lists = [r for r in lists if r["cell"] in restored]
    if lists and not (out / LISTWISE / "rows.json").is_file():
        atomic_write_text(out / LISTWISE / "rows.json", json.dumps(lists, indent=2) + "\n")
    for name in sorted({r["cell"] for r in lists}):
        target = out / LISTWISE / name
        if target.exists():
            continue
        mine = [{k: v for k, v in r.items() if k != "cell"} for r in lists if r["cell"] == name]
        if name.startswith("baselines-"):
            atomic_write_text(target / "rows.json", json.dumps(mine, indent=2) + "\n")
        else:
            (row,) = mine
            atomic_write_text(target / "eval.json", json.dumps(row, indent=2) + "\n")
    return sorted(restored), sorted(retrain)


def published_rows(
    out: Path, orders: str, tests: list[dict], diag: list[dict], probe: list[dict]
) -> list[dict]:
    """Every finished cell's row for --publish, carrying what a later session needs to rebuild
    the curve, the paired tests and the diagnostics without the run directory."""
    rows = []
    for r in read_results(out):
        carried = dict(r.get("carried", {}))
        mine = correct(out, r, orders) if r.get("eval_dir") else None
        if mine is not None:
            carried["pair_correct"] = mine.tolist()
        scores = r.get("pair_scores") or (scored(out, r, orders) if r.get("eval_dir") else None)
        if scores is not None:  # the per-pair scores outlive the run directory
            r = {**r, "pair_scores": scores}
        match, label = _N.search(r["cell"]), series_name(r)
        if match and not r["cell"].startswith(VALID_PREFIX):
            n = int(match.group(1))
            carried["paired_tests"] = [t for t in tests if t["n"] == n and t["a"] == label]
        for key, found in (("diagnostics", diag), ("lr_probe", probe)):
            kept = next((d for d in found if d["cell"] == r["cell"]), None)
            if kept is not None:
                carried[key] = kept
        rows.append({**r, "carried": carried} if carried else r)
    return rows


VALID_PREFIX = "valid-"  # cells scored on the validation users: settings, not the curve
_VALUE = r"\d[0-9.]*(?:e[+-]?\d+)?"  # a number as variant_tag writes it (:g)
_VARIANT = re.compile(rf"-(lr|sftw)({_VALUE})")
_N = re.compile(rf"-(\d+)(?:-(?:lr|sftw){_VALUE})*$")
_VARIANT_WORDS = {"lr": "lr", "sftw": "SFT term"}


def variant(cell: str) -> dict[str, str]:
    """{"lr": "0.001", "sftw": "1"}: the settings a cell's name carries (see variant_tag)."""
    match = _N.search(cell)
    return dict(_VARIANT.findall(cell[match.start() :])) if match else {}


def series_name(row: dict) -> str:
    """A model's line: DMPO at settings other than the base config's is its own line."""
    words = [f"{_VARIANT_WORDS[key]} {value}" for key, value in variant(row["cell"]).items()]
    return ", ".join([row["model"], *words])


def read_results(out: Path) -> list[dict]:
    return read_jsonl(out / "results.jsonl")


def step_mean(steps: list[dict], key: str) -> float:
    """The mean of a training metric over some of metrics.jsonl's steps."""
    return float(np.mean([x[key] for x in steps]))


def curve_points(out: Path) -> dict[str, list[tuple[int, float, float, float]]]:
    """{model: [(N, accuracy, CI low, CI high)]} from results.jsonl; zero-shot is flat."""
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for r in read_results(out):
        if r["cell"].startswith(VALID_PREFIX):
            continue
        m, match = r["metrics"], _N.search(r["cell"])
        point = (m["accuracy"], m["accuracy_ci_low"], m["accuracy_ci_high"])
        if match:
            series.setdefault(series_name(r), []).append((int(match.group(1)), *point))
        elif r["cell"] == "zero-shot":
            series["zero-shot"] = [(0, *point)]
    return {k: sorted(v) for k, v in series.items()}


def plot_curve(series: dict, sizes: list[int], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8.6, 4.4))
    # Each line a little to the side (on the log axis), so CIs at the same N do not cover each other.
    dodge = {name: 1.025 ** (i - (len(series) - 1) / 2) for i, name in enumerate(series)}
    for name, pts in series.items():
        if name == "zero-shot":
            _, acc, low, high = pts[0]
            ax.axhspan(low, high, color="gray", alpha=0.15)
            ax.axhline(acc, color="gray", linestyle=":", label="zero-shot (95% CI band)")
            continue
        ns = np.array([p[0] for p in pts]) * dodge[name]
        acc = np.array([p[1] for p in pts])
        err = [acc - [p[2] for p in pts], [p[3] for p in pts] - acc]
        ax.errorbar(ns, acc, yerr=err, marker="o", capsize=3, label=name)
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("training users (N)")
    ax.set_ylabel("pairwise accuracy, test pairs (95% CI)")
    ax.set_title("MovieLens-1M, authors' test users, SmolLM2-135M")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: no point hidden
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def paired(out: Path, data: Path, sizes: list[int], eval_pairs: int, orders: str) -> list[dict]:
    """Paired tests on the same test pairs (exact McNemar, paired bootstrap CI of the difference)
    for every finished model of the curve: SFT, DMPO k=3 and DPO k=1 (each variant) at each N
    against zero-shot and against popularity and BPR-MF fitted as that N's baselines cell fits
    them (on the N training users' and the test users' histories, BPR-MF at the eval seed);
    DMPO/DPO also against the SFT it started from, SFT against SFT at the N below."""

    test = load_records(data / EVAL, TitleNormalization())[:eval_pairs]
    seed = load_config(BASE).eval.seed
    rows = [
        r for r in read_results(out) if r.get("eval_dir") and not r["cell"].startswith(VALID_PREFIX)
    ]
    labels = {r["cell"]: series_name(r) for r in rows}
    scored = {r["cell"]: correct(out, r, orders) for r in rows}
    # (users, chosen, rejected) where a cell's scores are here or published: AUCs are paired too.
    scores = {r["cell"]: pair_score_arrays(out, r, orders) for r in rows}
    tests, below = [], None
    for n in sizes:
        fitted = [*read_records(data / f"train_{n}.jsonl"), *test]
        baselines, baseline_scores = {}, {}
        for scorer in (Popularity.fit(fitted), BPRMF.fit(fitted, seed=seed)):
            users, chosen, rejected = baseline_pair_scores(scorer, test)
            name = f"{scorer.name} (N = {n})"
            baselines[name] = pair_correct(chosen, rejected)
            baseline_scores[name] = (users, chosen, rejected)
        for cell, mine in scored.items():
            match = _N.search(cell)
            if mine is None or match is None or int(match.group(1)) != n:
                continue
            tag = match.group(0)[len(f"-{n}") :]
            others = {"zero-shot": "zero-shot", **{b: b for b in baselines}}
            if cell.startswith("sft-"):  # none at the smallest N
                others[f"SFT (N = {below})"] = f"sft-{below}"
            else:
                others["SFT"] = f"sft-{n}"
                if not cell.startswith("dpo-k1-"):  # the paper's claim: several negatives vs one
                    others["DPO (k=1)"] = f"dpo-k1-{n}{tag}"
            for name, key in others.items():
                other = baselines.get(key, scored.get(key))
                if other is None:
                    continue
                test_ = {"n": n, "a": labels[cell], "b": name, **paired_test(mine, other)}
                a, b = scores.get(cell), baseline_scores.get(key, scores.get(key))
                if a is not None and b is not None:
                    auc = paired_auc_test(a[0], a[1], a[2], b[1], b[2], seed=seed)
                    test_.update(auc)  # its "pairs" is paired_test's
                tests.append(test_)
        below = n
    # Tests of restored cells whose counterpart's per-pair results are gone, as published.
    done = {(t["n"], t["a"], t["b"]) for t in tests}
    for r in rows:
        for t in r.get("carried", {}).get("paired_tests", []):
            if (t["n"], t["a"], t["b"]) not in done:
                tests.append(t)
    return tests


def correct(out: Path, row: dict, orders: str) -> np.ndarray | None:
    """A scored cell's per-pair correctness: from its predictions here, else as published."""
    here = scored(out, row, orders)
    if here is not None:
        return pair_correct(here["chosen"], here["rejected"])
    kept = row.get("carried", {}).get("pair_correct")
    return None if kept is None else np.asarray(kept, float)


def pair_score_arrays(out: Path, row: dict, orders: str) -> tuple[np.ndarray, ...] | None:
    """A cell's (users, chosen, rejected): from its predictions here, else as published."""
    kept = scored(out, row, orders) or row.get("pair_scores")
    if kept is None:
        return None
    return np.asarray(kept["users"]), np.asarray(kept["chosen"]), np.asarray(kept["rejected"])


def scored(out: Path, row: dict, orders: str) -> dict | None:
    """A scored cell's per-pair scores (users, chosen, rejected) from its predictions here."""
    parts = Path(row["eval_dir"]).parts  # recorded relative to where the run started
    path = out / row["cell"] / Path(*parts[parts.index(row["cell"]) + 1 :])
    if not (path / "predictions.jsonl").is_file():
        return None
    rows = read_predictions(path)
    chosen, rejected = pair_scores(rows, orders)
    users = [r["user_id"] for r in rows]
    return {"users": users, "chosen": chosen.tolist(), "rejected": rejected.tolist()}


def paired_md(tests: list[dict]) -> str:
    lines = [
        "## Paired tests (the same test pairs, both orders)\n",
        "Accuracy difference A - B with its paired bootstrap 95% CI; McNemar's exact p on the pairs",
        "where the two differ. Popularity and BPR-MF are refitted here exactly as the baselines",
        "cell fits them (their accuracy is column B).\n",
        "Coin-flip AUC difference A - B (the same coins for both) with its paired bootstrap over",
        "users and the bootstrap p, where both models' per-pair scores are kept ('-' otherwise).\n",
        "| N | A | B | accuracy A | accuracy B | A - B [95% CI] | A / B better | p "
        "| AUC A | AUC B | AUC A - B [95% CI] | AUC p |",
        "|---:|---|---|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for t in sorted(tests, key=lambda t: t["n"]):  # restored cells' tests come last otherwise
        auc = (
            f"| {t['auc_a']:.3f} | {t['auc_b']:.3f} | {t['auc_difference']:+.3f} "
            f"[{t['auc_difference_ci_low']:+.3f}, {t['auc_difference_ci_high']:+.3f}] "
            f"| {t['auc_p_value']:.3g} |"
            if "auc_difference" in t
            else "| - | - | - | - |"
        )
        lines.append(
            f"| {t['n']} | {t['a']} | {t['b']} | {t['accuracy_a']:.3f} | {t['accuracy_b']:.3f} "
            f"| {t['difference']:+.3f} [{t['difference_ci_low']:+.3f}, "
            f"{t['difference_ci_high']:+.3f}] | {t['a_better']} / {t['b_better']} "
            f"| {t['p_value']:.3g} {auc}"
        )
    return "\n".join(lines) + "\n"


def train_pairs(out: Path, data: Path, sizes: list[int], extra: list[str]) -> None:
    """Score every finished model on the pairs of the first 100 training users (in every N's
    training set: the N are prefixes of one pool), through `eval.split=valid` with data.valid =
    those users: all 5 negatives each, both orders, into the stage's eval-valid/."""
    from dmporec.cli import main as cli

    exp = yaml.safe_load((out / "experiment.yaml").read_text())
    for cell in exp["cells"]:
        stage = {"sft": "sft", "dmpo": "dmpo"}.get(cell["stages"][0])
        if cell["name"].startswith(VALID_PREFIX):
            continue
        if stage is None or not (out / cell["name"] / stage / "eval" / "eval.json").is_file():
            continue
        if (out / cell["name"] / stage / "eval-valid" / "eval.json").is_file():
            continue
        cli(
            ["evaluate", "--stage", stage, "--config", exp["base"], *exp["overrides"],
             *cell["overrides"], f"output_dir={out / cell['name']}", "eval.split=valid",
             f"data.valid={data / f'train_{min(sizes)}.jsonl'}"]
        )  # fmt: skip


LISTWISE = "listwise"  # under --out: one evaluation directory per model, and the baselines


def list_file(data: Path, users: int) -> Path:
    """The first `users` test users (the authors' test users, in order), each with its first
    negative (the test pair) and the builder's 19 sampled titles it never rated
    (`list_negatives`: a list's other candidates), built once."""
    path = data / f"test_list_{users}.jsonl"
    if not path.is_file():
        test = read_records(data / "test.jsonl")
        if not 1 <= users <= len(test):
            raise SystemExit(f"--listwise-users: 1 to {len(test)} test users are available")
        write_records(
            path,
            [
                replace(
                    r,
                    negatives=r.negatives[:1],
                    positive_first=None if r.positive_first is None else r.positive_first[:1],
                )
                for r in test[:users]
            ],
        )
    return path


def listwise(
    out: Path, data: Path, users: int, n: int, only: list[str] | None = None
) -> list[dict]:
    """Listwise HR@k / NDCG@k / MRR on the first `users` test users, `n` candidates each (the
    positive and n-1 sampled unrated titles): every finished model (zero-shot, SFT, DMPO/DPO) ranks
    them by round robin over all pairs in both orders (ranking.py), through `dmporec evaluate
    --out`; popularity and BPR-MF fitted per N as in the baselines cells. Rows for listwise.md.
    `only` limits what is ranked now; the rows of cells ranked before (also cells of an earlier
    experiment file, e.g. another --dmpo-lr) are kept, in the experiment's order, then by name."""
    from dmporec.cli import main as cli
    from dmporec.stages.pipeline import baseline_rows

    path = list_file(data, users)
    exp = yaml.safe_load((out / "experiment.yaml").read_text())
    common = [*exp["overrides"], f"data.eval={path}", f"eval.listwise={n}"]
    for cell in exp["cells"]:
        name, kind = cell["name"], cell["stages"][0]
        target = out / LISTWISE / name
        if name.startswith(VALID_PREFIX) or (only and name not in only):
            continue
        if kind == "baselines":
            if _listwise_rows(target, users, n) is None:
                cfg = load_config(BASE, [*common, *cell["overrides"]])
                written = [{"model": r["model"], **r["metrics"]} for r in baseline_rows(cfg)]
                atomic_write_text(target / "rows.json", json.dumps(written, indent=2) + "\n")
            continue
        stage = kind  # zero_shot, sft or dmpo: `dmporec evaluate --stage` takes the same names
        finished = out / name / (stage if stage == "zero_shot" else f"{stage}/eval") / "eval.json"
        if finished.is_file() and _listwise_rows(target, users, n) is None:
            code = cli(
                ["evaluate", "--stage", stage, "--config", exp["base"], *common,
                 *cell["overrides"], f"output_dir={out / name}", "--out", str(target)]
            )  # fmt: skip
            if code:
                raise SystemExit(f"listwise: evaluating {name} failed (exit {code})")
    order = [c["name"] for c in exp["cells"]]
    ranked = (out / LISTWISE).iterdir() if (out / LISTWISE).is_dir() else []
    names = sorted(
        (d.name for d in ranked if d.is_dir()),
        key=lambda name: (order.index(name) if name in order else len(order), name),
    )
    rows = []
    for name in names:
        for row in _listwise_rows(out / LISTWISE / name, users, n) or []:
            rows.append({**row, "cell": name, "model": row.get("model", name)})
    return rows


def _listwise_rows(target: Path, users: int, n: int) -> list[dict] | None:
    """The listwise rows already in `target` (a model's eval.json, or a baselines cell's
    popularity and BPR-MF rows), None if it holds none. Rows of other list settings stop the run:
    they would be relabelled as this run's."""
    if (target / "eval.json").is_file():
        rows = [{**json.loads((target / "eval.json").read_text()), "model": target.name}]
    elif (target / "rows.json").is_file():
        rows = [
            r
            for r in json.loads((target / "rows.json").read_text())
            if r["model"] in ("popularity", "bpr-mf")
        ]
    else:
        return None
    for row in rows:
        if row.get(f"list{n}_users") != users:
            made = sorted(k for k in row if k.startswith("list") and k.endswith("_users"))
            raise SystemExit(
                f"listwise: {target} holds lists of other settings "
                f"({', '.join(f'{k}={row[k]}' for k in made) or 'unknown'}; this run asks for "
                f"list{n}_users={users}): rerun with those --listwise-users/--listwise, or "
                f"delete {target.parent} to rank every model again"
            )
    return rows


def listwise_md(rows: list[dict], n: int) -> str:
    if not rows:
        return ""
    k = f"list{n}_"
    lines = [
        f"## Listwise: {rows[0][k + 'users']} test users, {n} candidates each\n",
        f"The positive and the builder's first {n - 1} sampled titles the user never rated; an LLM ranks "
        f"them by asking every pair in both listing orders ({n * (n - 1)} prompts per user); popularity and "
        "BPR-MF fitted on each N's training users (and the listed users' histories). 95% "
        f"bootstrap CIs over users; random ranking: HR@1 = {1 / n:.2f}.\n",
        "| cell | model | HR@1 [95% CI] | NDCG@5 [95% CI] | MRR | pairwise acc. (same users) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "-"
        lines.append(
            f"| {r['cell']} | {r['model']} | {r[k + 'hr@1']:.3f} [{r[k + 'hr@1_ci_low']:.3f}, "
            f"{r[k + 'hr@1_ci_high']:.3f}] | {r[k + 'ndcg@5']:.3f} [{r[k + 'ndcg@5_ci_low']:.3f}, "
            f"{r[k + 'ndcg@5_ci_high']:.3f}] | {r[k + 'mrr']:.3f} | {acc} |"
        )
    return "\n".join(lines) + "\n"


def diagnostics(out: Path) -> list[dict]:
    """Where each model stops: accuracy on its own training users' pairs (by negative: SFT
    trained on the first, DMPO k=3 on the first three) against the test pairs, accuracy by the
    positive's listed position, and for DMPO the reward accuracy and margin of its first and
    last 10 steps (metrics.jsonl)."""
    rows = []
    # Trained stages keep their test evaluation in STAGE/eval/, zero-shot in zero_shot/ itself.
    for path in sorted([*out.glob("*/*/eval/eval.json"), *out.glob("*/zero_shot/eval.json")]):
        stage = path.parents[1] if path.parent.name == "eval" else path.parent
        test = json.loads(path.read_text())
        row = {
            "cell": stage.parent.name,
            "test_accuracy": test["accuracy"],
            "accuracy_positive_listed_first": test["accuracy_positive_listed_first"],
            "accuracy_positive_listed_second": test["accuracy_positive_listed_second"],
            "first_listed_rate": test["first_listed_rate"],
        }
        valid = stage / "eval-valid"
        if (valid / "eval.json").is_file():
            preds = read_predictions(valid)
            correct = pair_correct(*pair_scores(preds, test["orders"]))
            index: dict[str, int] = {}
            by_negative: dict[int, list[float]] = {}
            for pred, ok in zip(preds, correct, strict=True):
                i = index[pred["user_id"]] = index.get(pred["user_id"], -1) + 1
                by_negative.setdefault(i + 1, []).append(float(ok))
            row["train_accuracy"] = float(np.mean(correct))
            row["train_accuracy_by_negative"] = {
                str(i): round(float(np.mean(v)), 3) for i, v in sorted(by_negative.items())
            }
        metrics = stage / "metrics.jsonl"
        if stage.name == "dmpo" and metrics.is_file():
            steps = read_jsonl(metrics)
            for name, part in (("first10", steps[:10]), ("last10", steps[-10:])):
                row[f"reward_accuracy_{name}"] = step_mean(part, "reward_accuracy")
                row[f"reward_margin_{name}"] = step_mean(part, "reward_margin")
                row[f"chosen_reward_{name}"] = step_mean(part, "chosen_reward")
            # Each step's users are new to the adapter, so its reward accuracy (before the
            # update) is held out: by quarter of training, it says where DMPO got and when.
            quarters = np.array_split(np.arange(len(steps)), 4)
            for key in ("reward_accuracy", "chosen_reward"):
                row[f"{key}_by_quarter"] = [
                    round(step_mean([steps[i] for i in q], key), 3) for q in quarters if len(q)
                ]
        rows.append(row)
    found = {r["cell"] for r in rows}
    for r in read_results(out):
        kept = r.get("carried", {}).get("diagnostics")
        if kept and r["cell"] not in found:
            rows.append(kept)
            found.add(r["cell"])
    return sorted(rows, key=lambda d: d["cell"])


def label_counts(data: Path, sizes: list[int], eval_pairs: int) -> list[dict]:
    """What the training labels alone carry: each test candidate scored by how often it was a
    training user's positive (no histories, no model; ties count half). An LLM trained on those
    N answers that learned no more than "this title was chosen" would score this."""
    test = load_records(data / EVAL, TitleNormalization())[:eval_pairs]
    rows = []
    for n in sizes:
        counts = Counter(r.positive.title for r in read_records(data / f"train_{n}.jsonl"))
        _, chosen, rejected = baseline_pair_scores(Popularity(counts), test)
        rows.append(
            {
                "n": n,
                "accuracy": float(np.mean(pair_correct(chosen, rejected))),
                "ties": float(np.mean(chosen == rejected)),
            }
        )
    return rows


def label_counts_md(rows: list[dict]) -> str:
    lines = [
        "\nWhat the training labels alone carry (test candidates scored by how often they were a "
        "training positive; no histories, no model; ties count half):\n",
        "| N | accuracy | test pairs tied (neither or both candidates ever a positive, equally) |",
        "|---|---|---|",
    ]
    lines += [f"| {r['n']} | {r['accuracy']:.3f} | {r['ties']:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


def lr_probe(out: Path) -> list[dict]:
    """The validation cells: DMPO k=3 at each learning rate, scored on the validation users."""
    rows = []
    for r in read_results(out):
        if not r["cell"].startswith(VALID_PREFIX):
            continue
        metrics = Path(r["eval_dir"]).parent / "metrics.jsonl"
        if not metrics.is_file():  # a restored cell: its row as published, if any
            if "lr_probe" in r.get("carried", {}):
                rows.append(r["carried"]["lr_probe"])
            continue
        last10 = read_jsonl(metrics)[-10:]
        m = r["metrics"]
        rows.append(
            {
                "cell": r["cell"],
                "learning_rate": variant(r["cell"])["lr"],  # every valid- cell has its rate
                "valid_pairs": m["pairs"],
                "valid_accuracy": m["accuracy"],
                "valid_accuracy_ci": [m["accuracy_ci_low"], m["accuracy_ci_high"]],
                "train_loss_last10": step_mean(last10, "loss"),
                "reward_accuracy_last10": step_mean(last10, "reward_accuracy"),
                "reward_margin_last10": step_mean(last10, "reward_margin"),
            }
        )
    return rows


def lr_probe_md(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = [
        "\nDMPO k=3 learning rate on the validation users (trained on the smallest N, scored on "
        "the validation users' pairs, all 5 negatives, both orders):\n",
        "| cell | learning rate | validation pairs | validation accuracy (95% CI) | training loss "
        "/ reward acc / margin, last 10 steps |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["valid_accuracy_ci"]
        lines.append(
            f"| {r['cell']} | {r['learning_rate']} | {r['valid_pairs']} | "
            f"{r['valid_accuracy']:.3f} [{low:.3f}, {high:.3f}] | {r['train_loss_last10']:.4f} / "
            f"{r['reward_accuracy_last10']:.2f} / {r['reward_margin_last10']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


def diagnostics_md(rows: list[dict]) -> str:
    lines = [
        "| cell | test acc | train-user pairs acc (by negative 1..5) | acc, positive listed "
        "first / second | DMPO reward acc / margin, first -> last 10 steps | DMPO held-out "
        "reward acc (chosen reward) by quarter of training |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        train = (
            f"{r['train_accuracy']:.3f} ({', '.join(f'{v:.2f}' for v in r['train_accuracy_by_negative'].values())})"
            if "train_accuracy" in r
            else "-"
        )
        reward = (
            f"{r['reward_accuracy_first10']:.2f} / {r['reward_margin_first10']:+.4f} -> "
            f"{r['reward_accuracy_last10']:.2f} / {r['reward_margin_last10']:+.4f}"
            if "reward_accuracy_last10" in r
            else "-"
        )
        quarters = "-"
        if "reward_accuracy_by_quarter" in r:
            pairs = zip(r["reward_accuracy_by_quarter"], r["chosen_reward_by_quarter"], strict=True)
            quarters = " / ".join(f"{a:.2f} ({c:+.1f})" for a, c in pairs)
        lines.append(
            f"| {r['cell']} | {r['test_accuracy']:.3f} | {train} | "
            f"{r['accuracy_positive_listed_first']:.3f} / {r['accuracy_positive_listed_second']:.3f} "
            f"| {reward} | {quarters} |"
        )
    return "\n".join(lines) + "\n"


def _rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated learning rates such as 1e-3,3e-3, got {text!r}"
        ) from None


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite weight >= 0, got {text!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,400,1000", help="training set sizes N")
    parser.add_argument(
        "--eval-pairs", type=int, default=1000, help="first N test pairs (1000 = all)"
    )
    parser.add_argument("--out", default="runs/learning-curve")
    parser.add_argument("--cells", help="run only these cells (comma-separated), e.g. sft-100")
    parser.add_argument("--publish", default=str(ROOT / "docs" / "results" / "learning-curve"))
    parser.add_argument(
        "--rerun",
        help="run these finished cells again (comma-separated): their rows, here and published, "
        "are replaced by the new ones (an SFT a rerun cell starts from is retrained if its "
        "adapter is not here)",
    )
    parser.add_argument(
        "--no-train-pairs",
        action="store_true",
        help="skip scoring the models on their first 100 training users (~12 min per model)",
    )
    parser.add_argument(
        "--dmpo-lr",
        type=float,
        help="DMPO learning rate of the curve's DMPO/DPO cells (default: the base config's, "
        "2e-4); cells at another rate are named -lrX and drawn as their own line",
    )
    parser.add_argument(
        "--dmpo-sft-weight",
        type=_weight,
        help="the authors' SFT term on the chosen answers (dmpo.sft_weight; they use 1.0) in the "
        "curve's DMPO/DPO cells, named -sftwW and drawn as their own line (default: none)",
    )
    parser.add_argument(
        "--valid-lrs",
        type=_rates,
        default=(),
        help="DMPO learning rates to compare on the validation users first (comma-separated, "
        "e.g. 2e-4,1e-3,3e-3): one DMPO k=3 cell each from the smallest N's SFT",
    )
    parser.add_argument(
        "--valid-users",
        type=int,
        default=60,
        help="validation users scored per --valid-lrs cell (5 pairs each, both orders: ~5 min "
        "for 60 on 2 cores)",
    )
    parser.add_argument(
        "--listwise-users",
        type=int,
        default=0,
        help="also rank lists for the first N test users with every finished model and the "
        "baselines (0 = off; 100 with 5 candidates: ~20 prompts per user per model)",
    )
    parser.add_argument(
        "--listwise", type=int, default=5, help="candidates per list (the positive and N-1)"
    )
    parser.add_argument(
        "--listwise-cells",
        help="rank lists with these cells only (comma-separated; default all); the rows of "
        "cells ranked before are kept",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides for every cell")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.sizes.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = build_data(out, sizes)
    exp = experiment_file(
        out, data, sizes, args.eval_pairs, args.overrides, args.dmpo_lr, args.valid_lrs,
        args.valid_users, args.dmpo_sft_weight,
    )  # fmt: skip
    only = args.cells.split(",") if args.cells else None
    publish = Path(args.publish)
    rerun = args.rerun.split(",") if args.rerun else []
    cells = {c["name"]: c for c in yaml.safe_load(exp.read_text())["cells"]}
    unknown = sorted(set(rerun) - set(cells))
    if unknown:
        raise SystemExit(f"--rerun: no cell named {', '.join(unknown)} in {exp}")
    if only is not None:
        only = [*only, *(c for c in rerun if c not in only)]
    restored, retrain = restore(out, cells, publish, only, rerun)
    if restored:
        print(f"restored from {publish / PUBLISHED}: {', '.join(restored)}")
    if retrain:
        print(f"trained again, their adapters are not in {out}: {', '.join(retrain)}")
        only = None if only is None else [*retrain, *only]
    print(run_experiment(str(exp), only=only))
    series = curve_points(out)
    plot_curve(series, sizes, out / "curve.png")
    orders = load_config(BASE, args.overrides).eval.orders
    tests = paired(out, data, sizes, args.eval_pairs, orders)
    atomic_write_text(out / "paired.md", paired_md(tests))
    if not args.no_train_pairs:
        train_pairs(out, data, sizes, args.overrides)
    lists = (
        listwise(
            out,
            data,
            args.listwise_users,
            args.listwise,
            args.listwise_cells.split(",") if args.listwise_cells else None,
        )
        if args.listwise_users
        else []
    )
    saved_lists = out / LISTWISE / "rows.json"
    if lists:
        atomic_write_text(saved_lists, json.dumps(lists, indent=2) + "\n")
        atomic_write_text(out / "listwise.md", listwise_md(lists, args.listwise))
    elif saved_lists.is_file():  # an earlier --listwise-users run: kept in curve.json
        lists = json.loads(saved_lists.read_text())
    diag, probe = diagnostics(out), lr_probe(out)
    labels = label_counts(data, sizes, args.eval_pairs)
    atomic_write_text(
        out / "diagnostics.md",
        diagnostics_md(diag) + label_counts_md(labels) + lr_probe_md(probe),
    )
    atomic_write_text(
        out / "curve.json",
        json.dumps(
            {
                "series": series,
                "paired_tests": tests,
                "diagnostics": diag,
                "label_counts": labels,
                "valid_lrs": probe,
                "listwise": lists,
            },
            indent=2,
        )
        + "\n",
    )
    write_report(out)
    publish.mkdir(parents=True, exist_ok=True)
    rows = published_rows(out, orders, tests, diag, probe)
    atomic_write_text(publish / PUBLISHED, "".join(json.dumps(r) + "\n" for r in rows))
    for name in (
        "curve.png",
        "curve.json",
        "results.md",
        "report.md",
        "report_models.png",
        "report_training.png",
        "report_k.png",
        "diagnostics.md",
        "listwise.md",
        "paired.md",
    ):
        if (out / name).is_file():
            shutil.copy(out / name, publish / name)
    print(f"curve: {out / 'curve.png'} (copied to {publish})")


if __name__ == "__main__":
    main()
