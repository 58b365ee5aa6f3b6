"""Learning curve on real MovieLens-1M users: pairwise accuracy against the number of training users.

    .venv/bin/python benchmarks/learning_curve.py [--sizes 100,400,1000] [--eval-pairs 1000]
        [--out runs/learning-curve] [--cells sft-100,dmpo-k3-100] [overrides ...]

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
4. Writes results.md, report.md, curve.png (accuracy against N with 95% CIs, one line per model)
   and curve.json (the points, and paired tests of DMPO against SFT, zero-shot and popularity at
   each N) under --out, and copies curve.png, curve.json and results.md to --publish.

Every cell costs CPU time (on 2 cores: ~13 min to score 1000 test pairs in both orders; SFT
~1.5 s and DMPO k=3 ~5 s per training user): run it in the background, one heavy job at a time.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from dmporec.baselines import Popularity  # noqa: E402
from dmporec.baselines import pair_scores as baseline_pair_scores  # noqa: E402
from dmporec.build import BuildConfig, prepare  # noqa: E402
from dmporec.config import load_config  # noqa: E402
from dmporec.data import load_records  # noqa: E402
from dmporec.evaluation import pair_scores, read_predictions  # noqa: E402
from dmporec.metrics import pair_correct, paired_test  # noqa: E402
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


def experiment_file(
    out: Path, data: Path, sizes: list[int], eval_pairs: int, extra: list[str]
) -> Path:
    def train(n: int) -> list[str]:
        path = data / f"train_{n}.jsonl"
        return [f"data.sft_train={path}", f"data.dmpo_train={path}"]

    cells: list[dict] = [
        {"name": "zero-shot", "stages": ["zero_shot"], "overrides": train(sizes[0])}
    ]
    for n in sizes:
        cells += [
            {"name": f"baselines-{n}", "stages": ["baselines"], "overrides": train(n)},
            {"name": f"sft-{n}", "stages": ["sft"], "overrides": train(n)},
            {
                "name": f"dmpo-k3-{n}",
                "stages": ["dmpo"],
                "sft_from": f"sft-{n}",
                "overrides": [*train(n), "dmpo.k=3"],
            },
        ]
    top = max(sizes)
    cells.append(
        {
            "name": f"dpo-k1-{top}",
            "stages": ["dmpo"],
            "sft_from": f"sft-{top}",
            "overrides": [*train(top), "dmpo.k=1"],
        }
    )
    exp = {
        "base": str(BASE),
        "output_dir": str(out),
        "overrides": [
            f"data.eval={data / EVAL}",
            f"data.max_eval_pairs={eval_pairs}",
            "data.title_normalization.strip_year=false",
            *extra,
        ],
        "cells": cells,
    }
    path = out / "experiment.yaml"
    atomic_write_text(
        path, "# written by benchmarks/learning_curve.py\n" + yaml.safe_dump(exp, sort_keys=False)
    )
    return path


_N = re.compile(r"-(\d+)$")


def curve_points(out: Path) -> dict[str, list[tuple[int, float, float, float]]]:
    """{model: [(N, accuracy, CI low, CI high)]} from results.jsonl; zero-shot is flat."""
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for r in rows:
        m, match = r["metrics"], _N.search(r["cell"])
        point = (m["accuracy"], m["accuracy_ci_low"], m["accuracy_ci_high"])
        if match:
            series.setdefault(r["model"], []).append((int(match.group(1)), *point))
        elif r["cell"] == "zero-shot":
            series["zero-shot"] = [(0, *point)]
    return {k: sorted(v) for k, v in series.items()}


def plot_curve(series: dict, sizes: list[int], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, pts in series.items():
        if name == "zero-shot":
            _, acc, low, high = pts[0]
            ax.axhspan(low, high, color="gray", alpha=0.15)
            ax.axhline(acc, color="gray", linestyle=":", label="zero-shot (95% CI band)")
            continue
        ns = np.array([p[0] for p in pts])
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
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def paired(out: Path, data: Path, sizes: list[int], eval_pairs: int, orders: str) -> list[dict]:
    """DMPO k=3 against SFT, zero-shot and popularity (fitted as the baselines cell fits it: on
    the N training users' and the test users' histories) at each finished N, on the same pairs."""

    def correct(cell: str, stage: str) -> np.ndarray | None:
        path = out / cell / stage
        if not (path / "predictions.jsonl").is_file():
            return None
        return pair_correct(*pair_scores(read_predictions(path), orders))

    test = load_records(data / EVAL, TitleNormalization())[:eval_pairs]
    tests = []
    zero = correct("zero-shot", "zero_shot")
    for n in sizes:
        dmpo = correct(f"dmpo-k3-{n}", "dmpo/eval")
        if dmpo is None:
            continue
        popularity = Popularity.fit([*read_records(data / f"train_{n}.jsonl"), *test])
        _, chosen, rejected = baseline_pair_scores(popularity, test)
        others = {
            "SFT": correct(f"sft-{n}", "sft/eval"),
            "zero-shot": zero,
            "popularity": pair_correct(chosen, rejected),
        }
        for name, other in others.items():
            if other is not None:
                tests.append({"n": n, "a": "DMPO (k=3)", "b": name, **paired_test(dmpo, other)})
    return tests


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
    parser.add_argument("overrides", nargs="*", help="config overrides for every cell")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.sizes.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = build_data(out, sizes)
    exp = experiment_file(out, data, sizes, args.eval_pairs, args.overrides)
    print(run_experiment(str(exp), only=args.cells.split(",") if args.cells else None))
    series = curve_points(out)
    plot_curve(series, sizes, out / "curve.png")
    orders = load_config(BASE, args.overrides).eval.orders
    tests = paired(out, data, sizes, args.eval_pairs, orders)
    atomic_write_text(
        out / "curve.json", json.dumps({"series": series, "paired_tests": tests}, indent=2) + "\n"
    )
    write_report(out)
    publish = Path(args.publish)
    publish.mkdir(parents=True, exist_ok=True)
    for name in ("curve.png", "curve.json", "results.md", "report.md", "report_models.png"):
        if (out / name).is_file():
            shutil.copy(out / name, publish / name)
    print(f"curve: {out / 'curve.png'} (copied to {publish})")


if __name__ == "__main__":
    main()
