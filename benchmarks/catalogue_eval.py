"""Top-10 from a run's catalogue evaluated as recommender papers report it (issue #35, items 6
and 3): HR@10 and NDCG@10 of each test user's positive, for the classic scorers, the LLM
reranking the retriever's top M, and the fused ranking; and the pivot rerank against all pairs.

    .venv/bin/python benchmarks/catalogue_eval.py --model RUN [--test FILE] [--valid FILE]
        [--out DIR] [--part all|test|agreement] [--llm-users 200] [--valid-users 25]
        [--retrieve 20] [--pivots 2] [--sampled 100]

Candidates. The catalogue is the run's (RUN/catalogue.jsonl if it has one, else built from its
training records as `recommend` builds it; never written). A user is known to have rated their
history and their record's negatives: that is all the data files say (the authors' files hold a
window of a user's last 40 ratings; the history is its positives, the negatives some of its
rated-low items; nothing outside the window is known, so an "unrated" candidate may have been
rated). Each test user's positive is ranked among (a) full: every catalogue title they are not
known to have rated, (b) sampled: 100 of those drawn uniformly (seeded per user), the SASRec
protocol (dmporec.listwise.unrated_candidates). A positive the catalogue lacks is added to
that user's candidates only (papers rank every item), at a seeded random place among the
catalogue's uncounted titles, and counted in the output.

Rows. The classic scorers of dmporec.baselines.fit_scorers (random, popularity, BPR-MF, ALS,
MiniLM similarity, and SASRec where Cornac is installed; one not installed is skipped with a
printed line), fitted as the hybrid stage fits them: on the run's training histories plus the
evaluated users' histories (a history is model input, never a label); each scores every
candidate, ties averaged over random tie-breaks. The retriever is the `recommend --retriever`
choice with the best full NDCG@10 on the validation users (chosen there only). llm: the
retriever's top M (among the user's candidates, as `recommend` retrieves; its ties broken by
catalogue order, as there) reordered by the LLM's pivot rerank, the rest after them in the
retriever's order. fused: what `recommend` returns, the run's hybrid
(STAGE/hybrid/model.json) over the same M, or reciprocal-rank fusion without one. The LLM rows
cover --llm-users test users (a seeded draw), and every classic row is reported on the same
users too, for the paired tests.

Statistics. Means with 95% percentile bootstrap CIs over users; paired tests between rows on
the same users: the mean difference of per-user NDCG@10 (and HR@10) with its paired bootstrap
CI, and the two-sided Wilcoxon signed-rank p-value of the per-user NDCG@10 differences, users
where both rows score the same left out (dmporec.metrics.paired_user_test).

Agreement (issue #35, item 3). On --valid-users validation users (a seeded draw), the pivot
rerank and all pairs over the same top M of the full catalogue: the positive's NDCG@10 under
each (LLM order and fused), top-10 overlap and Kendall tau between the two orders (over the M,
and over all pairs' top 10), NDCG@10 of pivot's LLM order with all-pairs' as graded truth
(relevance M - rank), prompts and seconds per request. Few validation users have their positive
in the top M, so the positive's NDCG@10 compares the two on those few; the order agreement
uses every user.

Resuming. LLM results are appended per user to DIR/test-llm.jsonl and DIR/agreement.jsonl, whose
first line holds the settings they were made with; a rerun reuses them, refuses other settings
(naming them) and checks each reused user's retrieved candidates against this run's. Writes
DIR/test.json and DIR/agreement.json (every row's per-user values, so rows can be paired later)
and prints tables. The LLM's seconds are those of the machine; run it alone.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from datetime import date
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau
from tqdm.auto import tqdm

from dmporec.baselines import Scorer, fit_scorers
from dmporec.catalogue import (
    CATALOGUE,
    RETRIEVERS,
    Catalogue,
    CatalogueItem,
    catalogue_from_records,
    catalogue_text,
    read_catalogue,
    retrieve,
    training_records,
)
from dmporec.config import ConfigError, RunConfig
from dmporec.data import load_records
from dmporec.files import atomic_write_text
from dmporec.hybrid import LLM, Hybrid
from dmporec.listwise import CandidateSet, unrated_candidates
from dmporec.metrics import (
    bootstrap_ci,
    paired_user_test,
    rank_of_positive,
    ties_with_positive,
    user_hits,
    user_ndcg,
)
from dmporec.model import read_lineage
from dmporec.ranker import Ranker, find_stage, load_ranker, run_config
from dmporec.records import DataError, Record
from dmporec.rerank import HYBRID_FILE, PIVOTS, RETRIEVE, Recommender
from dmporec.stages.common import fingerprint, read_settings

K = 10
SAMPLED = 100
PROTOCOLS = ("full", "sampled")
LLM_ROW, FUSED_ROW = "llm-rerank", "fused"
AGREEMENT_TOLERANCE = 0.02  # issue #35: the cheaper rerank within 0.02 NDCG@10 of all pairs


def say(text: str) -> None:
    tqdm.write(text, file=sys.stderr)


def digest(*paths: Path) -> str:
    """sha256 of the files' bytes in order (16 hex digits)."""
    import hashlib

    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Setup:
    stage: Path
    cfg: RunConfig
    train: list[Record]
    catalogue: Catalogue  # the run's
    files: dict[str, Path]  # test, valid


def load_setup(args: argparse.Namespace) -> Setup:
    stage = find_stage(Path(args.model).expanduser())
    cfg = run_config(stage) if stage is not None else None
    if stage is None or cfg is None:
        raise ConfigError(f"--model {args.model}: not a trained run (a run or stage directory)")
    files = {
        "test": Path(args.test or cfg.data.eval or ""),
        "valid": Path(args.valid or cfg.data.valid or ""),
    }
    for name, path in files.items():
        if not path.is_file():
            raise ConfigError(
                f"--{name}: {path or 'not given'}: no such file (the run's config names "
                f"{cfg.data.eval if name == 'test' else cfg.data.valid})"
            )
    train = training_records(cfg)
    path = stage.parent / CATALOGUE
    norm = cfg.data.title_normalization
    catalogue = (
        read_catalogue(path, norm)
        if path.is_file()
        else catalogue_from_records(train, "the run's training data")
    )
    return Setup(stage, cfg, train, catalogue, files)


def split_records(setup: Setup, name: str) -> list[Record]:
    records = load_records(setup.files[name], setup.cfg.data.title_normalization)
    shared = {r.user_id for r in records} & {r.user_id for r in setup.train}
    if shared:
        raise DataError(
            f"{len(shared)} user ids are also training users' (e.g. {sorted(shared)[0]!r}): "
            "the classic scorers are fitted on both and would merge them",
            file=setup.files[name],
        )
    return records


def with_positives(catalogue: Catalogue, records: list[Record], seed: int) -> Catalogue:
    """The catalogue with the positives it lacks added (count 0), so each has an index; a
    user's candidates hold only their own (dmporec.listwise.unrated_candidates). Each goes to a
    seeded random place among the titles counted 0 (after the last counted one): a retriever
    breaks ties by catalogue order, and one it cannot score ties with the others it cannot, so
    a fixed place (last) would rank it below all of them."""
    extra = dict.fromkeys(
        r.positive.title for r in records if catalogue.index(r.positive.title) is None
    )
    items = list(catalogue.items)
    start = max((i + 1 for i, item in enumerate(items) if item.count > 0), default=0)
    rng = random.Random(f"{seed}:added-positives")
    for title in extra:
        items.insert(rng.randint(start, len(items)), CatalogueItem(title, None, 0))
    return Catalogue(tuple(items), catalogue.source)


def candidate_sets(
    run: Catalogue, catalogue: Catalogue, records: list[Record], sampled: int | None, seed: int
) -> dict[str, list[CandidateSet]]:
    """Each user's full candidates (and `sampled` ones): `catalogue` (the run's with the
    positives added) without the positives added for other users."""
    added = set(catalogue.titles) - set(run.titles)
    sets: dict[str, list[CandidateSet]] = {"full": [], "sampled": []}
    for r in records:
        titles = [t for t in catalogue.titles if t not in added or t == r.positive.title]
        sets["full"].append(unrated_candidates(r, titles))
        if sampled is not None:
            sets["sampled"].append(unrated_candidates(r, titles, sampled, seed))
    return sets


def fit_with_sasrec(records: list[Record], seed: int) -> list[Scorer]:
    """The classic scorers and SASRec (a row here, never the retriever: `recommend` offers no
    sequential retriever), SASRec skipped with a line where Cornac is not installed."""
    if "sasrec" not in inspect.signature(fit_scorers).parameters:  # a dmporec from before it
        say("catalogue_eval: sasrec skipped (this dmporec's baselines have no SASRec)")
        return fit_scorers(records, seed=seed, say=say)
    try:
        return fit_scorers(records, seed=seed, say=say, sasrec={})
    except ConfigError as e:
        say(f"catalogue_eval: sasrec skipped ({e})")
        return fit_scorers(records, seed=seed, say=say)


def classic_ranks(
    scorers: list[Scorer], records: list[Record], sets: list[CandidateSet], desc: str
) -> dict[str, dict[str, list[float]]]:
    """{scorer: {"rank": [...], "ties": [...]}}: each user's positive among their candidates."""
    out = {s.name: {"rank": [], "ties": []} for s in scorers}
    for record, (titles, pos) in tqdm(
        list(zip(records, sets, strict=True)), desc=desc, unit="user", file=sys.stderr
    ):
        for scorer in scorers:
            scores = scorer.score(record, titles)
            out[scorer.name]["rank"].append(rank_of_positive(scores, pos))
            out[scorer.name]["ties"].append(ties_with_positive(scores, pos))
    return out


def ndcg_of(ranks: dict[str, list[float]]) -> np.ndarray:
    return user_ndcg(ranks["rank"], K, ranks["ties"])


def recommender(
    setup: Setup, catalogue: Catalogue, retriever: str, scorers: list[Scorer]
) -> Recommender:
    """The Recommender `recommend` would build, with these fitted scorers; the run's hybrid
    when it has one and every component is fitted here (else RRF, said)."""
    by_name = {s.name: s for s in scorers}
    hybrid, path = None, setup.stage / HYBRID_FILE
    if path.is_file():
        fitted = Hybrid.load(path)
        missing = [c for c in fitted.components if c != LLM and c not in by_name]
        if missing:
            say(f"catalogue_eval: the hybrid needs {', '.join(missing)}: fused by reciprocal rank")
        else:
            hybrid = fitted
    return Recommender(catalogue, setup.cfg.data.title_normalization, retriever, by_name, hybrid)


def rerank_user(
    rec: Recommender,
    ranker: Ranker,
    record: Record,
    candidates: CandidateSet,
    *,
    m: int,
    rerank: str,
    pivots: int,
) -> dict[str, Any]:
    """One request as `recommend` makes it, over `candidates`: the retriever's top M (titles,
    in its order), the LLM's and the fused score of each, and where the positive sits in the
    retriever's order of every candidate (1-based)."""
    titles, pos = candidates
    among = [rec.catalogue.index(t) for t in titles]
    m = min(m, len(among))  # a sampled set smaller than M is reranked whole
    history = [item.title for item in record.history]
    start = time.perf_counter()
    plan = rec.plan(
        history, k=m, m=m, rerank=rerank, pivots=pivots, user_id=record.user_id,
        domain=record.wording, among=among,
    )  # fmt: skip
    doc = rec.finish(plan, ranker)
    seconds = time.perf_counter() - start
    order = retrieve(
        rec.scorers[rec.retriever], rec.catalogue, history, len(among), record.user_id, among
    )
    by_title = {it["title"]: it for it in doc["recommended"]}
    top = [rec.catalogue.items[i].title for i in plan.retrieved.indices]
    return {
        "retrieved": top,
        "llm": [by_title[t]["llm_score"] for t in top],
        "fused": [by_title[t]["fused_score"] for t in top],
        "positive_position": order.indices.index(rec.catalogue.index(titles[pos])) + 1,
        "fusion": doc["fusion"],
        "prompts": doc["prompts"],
        "seconds": round(seconds, 3),
        "notes": doc["notes"],
    }


def reranked_rank(result: dict[str, Any], row: str) -> tuple[float, int]:
    """(rank, ties) of the positive under `row` ("llm" or "fused"): among the top M by that
    row's scores when retrieved there, else its place in the retriever's order."""
    position = result["positive_position"]
    scores = result[row]
    if position > len(scores) or None in scores:  # not retrieved, or not reranked
        return float(position), 0
    return rank_of_positive(scores, position - 1), ties_with_positive(scores, position - 1)


class Cache:
    """Per-user results in JSON lines, the first line {"settings": ...}; see the docstring."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path, self.results = path, {}
        if path.is_file() and path.stat().st_size:
            text = path.read_text(encoding="utf-8")
            lines = text.splitlines()
            then = json.loads(lines[0]).get("settings", {})
            said = "; ".join(
                f"{k}: {then.get(k)!r} then, {settings.get(k)!r} now"
                for k in sorted(then.keys() | settings.keys())
                if then.get(k) != settings.get(k)
            )
            if said:
                raise ConfigError(
                    f"{path} holds results made with other settings ({said}); use another "
                    f"--out, or delete {path} to redo them"
                )
            kept = lines[:1]
            for line in lines[1:]:
                try:
                    result = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: that user is redone
                    continue
                self.results[result["user"]] = result
                kept.append(line)
            if len(kept) < len(lines) or not text.endswith("\n"):
                atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"settings": settings}) + "\n")

    def add(self, result: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(result, ensure_ascii=False) + "\n")
        self.results[result["user"]] = result


def check_reused(
    rec: Recommender,
    record: Record,
    candidates: CandidateSet,
    m: int,
    result: dict[str, Any],
    where: Path,
) -> None:
    """Stop when a cached result's candidates are not the ones the retriever gives now."""
    titles, _ = candidates
    m = min(m, len(titles))
    plan = rec.plan(
        [t.title for t in record.history], k=m, m=m, user_id=record.user_id,
        domain=record.wording, among=[rec.catalogue.index(t) for t in titles],
    )  # fmt: skip
    if result["retrieved"] != [rec.catalogue.items[i].title for i in plan.retrieved.indices]:
        raise ConfigError(
            f"{where}: user {record.user_id}'s cached candidates are not what the retriever "
            "gives now (refitted differently?); use another --out"
        )


def summary(
    per_user: dict[str, dict[str, list[float]]], n_boot: int, seed: int
) -> dict[str, dict[str, float]]:
    """HR@10 and NDCG@10 of each row with 95% bootstrap CIs over users."""
    out = {}
    for name, ranks in per_user.items():
        row: dict[str, float] = {"users": len(ranks["rank"])}
        for metric, values in (
            (f"hr@{K}", user_hits(ranks["rank"], K, ranks["ties"])),
            (f"ndcg@{K}", user_ndcg(ranks["rank"], K, ranks["ties"])),
        ):
            row[metric] = float(values.mean())
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = bootstrap_ci(
                lambda x: float(np.mean(x)), values, n_boot=n_boot, seed=seed
            )
        out[name] = row
    return out


def paired_tests(
    per_user: dict[str, dict[str, list[float]]], n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """Every pair of rows: per-user NDCG@10 and HR@10 compared (metrics.paired_user_test)."""
    tests = []
    for a, b in combinations(per_user, 2):
        ra, rb = per_user[a], per_user[b]
        test = {"a": a, "b": b}
        for metric, fn in ((f"ndcg@{K}", user_ndcg), (f"hr@{K}", user_hits)):
            result = paired_user_test(
                fn(ra["rank"], K, ra["ties"]), fn(rb["rank"], K, rb["ties"]),
                n_boot=n_boot, seed=seed,
            )  # fmt: skip
            test.update({f"{metric}_{key}": value for key, value in result.items()})
        tests.append(test)
    return tests


def subset(ranks: dict[str, list[float]], idx: list[int]) -> dict[str, list[float]]:
    return {key: [values[i] for i in idx] for key, values in ranks.items()}


def fmt_ci(row: dict[str, float], metric: str) -> str:
    return f"{row[metric]:.3f} [{row[f'{metric}_ci_low']:.3f}, {row[f'{metric}_ci_high']:.3f}]"


def fmt_test(t: dict[str, Any], protocol: str, users: str) -> str:
    n = f"ndcg@{K}_"
    return (
        f"| {protocol} | {users} | {t['a']} | {t['b']} | {t[n + 'difference']:+.3f} "
        f"[{t[n + 'difference_ci_low']:+.3f}, {t[n + 'difference_ci_high']:+.3f}] | "
        f"{t[n + 'a_better']} / {t[n + 'b_better']} | {t[n + 'p_value']:.3g} | "
        f"{t[f'hr@{K}_difference']:+.3f} |"
    )


def draw(n_items: int, n: int, seed: int, what: str) -> list[int]:
    """The first n of a seeded permutation of range(n_items): a larger n extends a smaller."""
    order = list(range(n_items))
    random.Random(f"{seed}:{what}").shuffle(order)
    return order[:n]


def common_settings(setup: Setup, args: argparse.Namespace, split: str) -> dict[str, Any]:
    data = setup.cfg.data
    _, adapters = read_lineage(setup.stage)
    weights = sorted(p for a in adapters for p in Path(a).rglob("*") if p.is_file())
    hybrid = setup.stage / HYBRID_FILE
    train = dict.fromkeys(Path(f) for f in (data.sft_train, data.dmpo_train) if f)
    return {
        "model.settings": fingerprint(read_settings(setup.stage) or {}),
        "model.adapters": digest(setup.stage / "lineage.json", *weights),
        "data.train": digest(*train),
        f"data.{split}": digest(setup.files[split]),
        "data.valid": digest(setup.files["valid"]),  # the retriever is chosen there
        "data.title_normalization": data.title_normalization.model_dump(),
        "data.max_prompt_tokens": data.max_prompt_tokens,
        "catalogue": fingerprint(catalogue_text(setup.catalogue)),
        "hybrid": digest(hybrid) if hybrid.is_file() else None,
        "retrieve": args.retrieve,
        "pivots": args.pivots,
        "seed": setup.cfg.eval.seed,
    }


def run_test(args, setup: Setup, retriever: str, ranker_of, out: Path) -> None:
    seed, n_boot = setup.cfg.eval.seed, setup.cfg.eval.n_boot
    test = split_records(setup, "test")
    catalogue = with_positives(setup.catalogue, test, seed)
    added = len(catalogue) - len(setup.catalogue)
    say(
        f"catalogue_eval: {len(test):,} test users; {len(setup.catalogue):,} catalogue titles; "
        f"{added} test positives not among them, added to their users' candidates"
    )
    sets = candidate_sets(setup.catalogue, catalogue, test, args.sampled, seed)
    scorers = fit_with_sasrec([*setup.train, *test], seed)
    classic = {
        p: classic_ranks(scorers, test, sets[p], f"test users, {p} ranking") for p in PROTOCOLS
    }
    llm_idx = draw(len(test), min(args.llm_users, len(test)), seed, "llm-users")
    settings = {
        **common_settings(setup, args, "test"), "sampled": args.sampled, "retriever": retriever,
    }  # fmt: skip
    llm: dict[str, dict[str, dict[str, list[float]]]] = {p: {} for p in PROTOCOLS}
    seconds: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
    prompts: dict[str, list[int]] = {p: [] for p in PROTOCOLS}
    fusion = None
    if llm_idx:
        rec = recommender(setup, catalogue, retriever, scorers)
        cache = Cache(out / "test-llm.jsonl", settings)
        for i in tqdm(llm_idx, desc="LLM rerank (test users)", unit="user", file=sys.stderr):
            record = test[i]
            result = cache.results.get(record.user_id)
            if result is None:
                result = {"user": record.user_id}
                for p in PROTOCOLS:
                    result[p] = rerank_user(
                        rec, ranker_of(), record, sets[p][i], m=args.retrieve, rerank="pivot",
                        pivots=args.pivots,
                    )  # fmt: skip
                cache.add(result)
            else:
                for p in PROTOCOLS:
                    check_reused(rec, record, sets[p][i], args.retrieve, result[p], cache.path)
            for p in PROTOCOLS:
                for row, key in ((LLM_ROW, "llm"), (FUSED_ROW, "fused")):
                    rank, ties = reranked_rank(result[p], key)
                    llm[p].setdefault(row, {"rank": [], "ties": []})
                    llm[p][row]["rank"].append(rank)
                    llm[p][row]["ties"].append(ties)
                seconds[p].append(result[p]["seconds"])
                prompts[p].append(result[p]["prompts"])
                fusion = result[p]["fusion"]
    protocols: dict[str, Any] = {}
    targets: list[str] = []
    table = [
        f"| protocol | users | row | HR@{K} [95% CI] | NDCG@{K} [95% CI] |",
        "|---|---|---|---|---|",
    ]
    tests_table = [
        f"| protocol | users | A | B | NDCG@{K} A - B [95% CI] | users A / B better | "
        f"p (Wilcoxon) | HR@{K} A - B |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in PROTOCOLS:
        everyone = summary(classic[p], n_boot, seed)
        best = max(
            (name for name in classic[p] if name != "random"),
            key=lambda name: everyone[name][f"ndcg@{K}"],
        )
        protocols[p] = {
            "all_users": {"rows": everyone, "tests": paired_tests(classic[p], n_boot, seed)},
            "best_classic": best,
        }
        for name, row in everyone.items():
            table.append(
                f"| {p} | all {row['users']} | {name} | {fmt_ci(row, f'hr@{K}')} | "
                f"{fmt_ci(row, f'ndcg@{K}')} |"
            )
        for t in protocols[p]["all_users"]["tests"]:
            if best in (t["a"], t["b"]):
                tests_table.append(fmt_test(t, p, f"all {len(test)}"))
        if llm_idx:
            rows = {name: subset(r, llm_idx) for name, r in classic[p].items()} | llm[p]
            sub = summary(rows, n_boot, seed)
            tests = paired_tests(rows, n_boot, seed)
            protocols[p]["llm_users"] = {"rows": sub, "tests": tests}
            protocols[p]["target"] = fused_target(sub, tests, p)
            targets.append(protocols[p]["target"]["said"])
            for name, row in sub.items():
                table.append(
                    f"| {p} | LLM {row['users']} | {name} | {fmt_ci(row, f'hr@{K}')} | "
                    f"{fmt_ci(row, f'ndcg@{K}')} |"
                )
            for t in tests:
                if t["a"] in (LLM_ROW, FUSED_ROW) or t["b"] in (LLM_ROW, FUSED_ROW):
                    tests_table.append(fmt_test(t, p, f"LLM {len(llm_idx)}"))
    print("\n".join(table) + "\n\n" + "\n".join(tests_table) + "\n" + "\n".join(targets))
    doc = {
        **header(args),
        "settings": settings,
        "test_file": str(setup.files["test"]),
        "catalogue": {
            "titles": len(setup.catalogue),
            "source": setup.catalogue.source,
            "positives_added": added,
        },  # fmt: skip
        "rated": "history and the record's negatives (all the data files say a user rated)",
        "fitted_on": f"{len(setup.train):,} training users' histories + the test histories",
        "retriever": retriever,
        "fusion": fusion,
        "k": K,
        "llm_users": len(llm_idx),
        "llm_per_request": {
            p: {
                "seconds_mean": float(np.mean(seconds[p])),
                "prompts_mean": float(np.mean(prompts[p])),
            }
            for p in PROTOCOLS
            if seconds[p]
        },
        "llm_seconds_per_user": sum(float(np.mean(v)) for v in seconds.values() if v) or None,
        "protocols": protocols,
        "table": "\n".join(table),
        "tests_table": "\n".join(tests_table),
        "per_user": {
            "users": [r.user_id for r in test],
            "llm_users": [test[i].user_id for i in llm_idx],
            "classic": classic,  # aligned with "users"
            "llm": llm,  # aligned with "llm_users"
        },
    }
    atomic_write_text(out / "test.json", json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    say(f"catalogue_eval: wrote {out / 'test.json'}")


def fused_target(
    rows: dict[str, dict[str, float]], tests: list[dict[str, Any]], protocol: str
) -> dict[str, Any]:
    """Issue #35's target: the fused NDCG@10 at or above the best classic row on the same
    users (random aside)."""
    classic = [n for n in rows if n not in (LLM_ROW, FUSED_ROW, "random")]
    best = max(classic, key=lambda n: rows[n][f"ndcg@{K}"])
    test = next(t for t in tests if {t["a"], t["b"]} == {best, FUSED_ROW})
    sign = 1 if test["a"] == FUSED_ROW else -1
    n = f"ndcg@{K}_"
    diff = sign * test[n + "difference"] + 0.0  # no -0.0
    low, high = sorted(sign * test[n + c] for c in ("difference_ci_low", "difference_ci_high"))
    said = (
        f"target ({protocol}): fused NDCG@{K} {rows[FUSED_ROW][f'ndcg@{K}']:.3f} against the "
        f"best classic row, {best}, {rows[best][f'ndcg@{K}']:.3f}, on the same "
        f"{test[n + 'users']} users: {diff:+.3f} [{low:+.3f}, {high:+.3f}], p = "
        f"{test[n + 'p_value']:.3g}: {'met' if diff >= 0 else 'not met'}"
    )
    return {"best_classic": best, "difference": diff, "ci": [low, high],
            "p_value": test[n + "p_value"], "met": diff >= 0, "said": said}  # fmt: skip


def agreement_of(pivot: dict[str, Any], every: dict[str, Any], position: int) -> dict[str, Any]:
    """Pivot against all-pairs on the same M candidates (see the module docstring)."""
    out: dict[str, Any] = {}
    for key in ("llm", "fused"):
        a, b = np.asarray(pivot[key], float), np.asarray(every[key], float)
        top_a, top_b = np.argsort(-a, kind="stable")[:K], np.argsort(-b, kind="stable")[:K]
        out[f"{key}_top{K}_overlap"] = len(set(top_a) & set(top_b)) / min(K, a.size)
        out[f"{key}_kendall_tau"] = float(kendalltau(a, b).statistic)
        out[f"{key}_top{K}_kendall_tau"] = float(kendalltau(a[top_b], b[top_b]).statistic)
        for name, result in (("pivot", pivot), ("all_pairs", every)):
            rank, ties = reranked_rank({**result, "positive_position": position}, key)
            out[f"{name}_{key}_ndcg@{K}"] = float(user_ndcg([rank], K, [ties])[0])
    truth = np.asarray(every["llm"], float)
    relevance = np.empty(truth.size)
    relevance[np.argsort(-truth, kind="stable")] = np.arange(truth.size, 0, -1) - 1
    discount = 1 / np.log2(np.arange(2, K + 2))[: truth.size]
    got = relevance[np.argsort(-np.asarray(pivot["llm"], float), kind="stable")][:K]
    ideal = np.sort(relevance)[::-1][:K]
    out[f"llm_ndcg@{K}_vs_all_pairs"] = float(got @ discount / (ideal @ discount))
    return out


def run_agreement(
    args, setup: Setup, retriever: str, valid, catalogue, sets, scorers, ranker_of, out: Path
) -> None:
    seed, n_boot = setup.cfg.eval.seed, setup.cfg.eval.n_boot
    idx = draw(len(valid), min(args.valid_users, len(valid)), seed, "agreement-users")
    settings = {**common_settings(setup, args, "valid"), "retriever": retriever}
    rec = recommender(setup, catalogue, retriever, scorers)
    cache = Cache(out / "agreement.jsonl", settings)
    rows = []
    for i in tqdm(idx, desc="pivot vs all pairs (validation users)", unit="user", file=sys.stderr):
        record = valid[i]
        full = sets[i]
        result = cache.results.get(record.user_id)
        if result is None:
            result = {"user": record.user_id}
            for mode in ("pivot", "all-pairs"):
                result[mode] = rerank_user(
                    rec, ranker_of(), record, full, m=args.retrieve, rerank=mode, pivots=args.pivots
                )
            if result["pivot"]["retrieved"] != result["all-pairs"]["retrieved"]:
                raise AssertionError("pivot and all-pairs reranked different candidates")
            cache.add(result)
        else:
            check_reused(rec, record, full, args.retrieve, result["pivot"], cache.path)
        rows.append({"user": record.user_id, **agreement_of(
            result["pivot"], result["all-pairs"], result["pivot"]["positive_position"]
        ), **{f"{mode}_{key}": result[mode][key] for mode in ("pivot", "all-pairs")
              for key in ("prompts", "seconds")}})  # fmt: skip
    keys = [k for k in rows[0] if k != "user"] if rows else []
    means = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    tests = {
        key: paired_user_test(
            [r[f"pivot_{key}"] for r in rows],
            [r[f"all_pairs_{key}"] for r in rows],
            n_boot=n_boot,
            seed=seed,
        )  # fmt: skip
        for key in (f"llm_ndcg@{K}", f"fused_ndcg@{K}")
    }
    lines = [
        f"pivot (P={args.pivots}) vs all pairs over the same top {args.retrieve} of {retriever}, "
        f"{len(rows)} validation users:",
        "| | pivot | all pairs | pivot - all pairs [95% CI] | p (Wilcoxon) |",
        "|---|---|---|---|---|",
    ]
    for key, t in tests.items():
        lines.append(
            f"| positive's {key} | {t['mean_a']:.3f} | {t['mean_b']:.3f} | "
            f"{t['difference']:+.3f} [{t['difference_ci_low']:+.3f}, "
            f"{t['difference_ci_high']:+.3f}] | {t['p_value']:.3g} |"
        )
    for what in ("prompts", "seconds"):
        lines.append(
            f"| {what} per request | {means.get(f'pivot_{what}', float('nan')):.1f} | "
            f"{means.get(f'all-pairs_{what}', float('nan')):.1f} | | |"
        )
    lines.append(
        "agreement: "
        + ", ".join(
            f"{k} {v:.3f}"
            for k, v in means.items()
            if "overlap" in k or "tau" in k or k.endswith("vs_all_pairs")
        )  # fmt: skip
    )
    for key, t in tests.items():
        lines.append(
            f"target: pivot within {AGREEMENT_TOLERANCE} {key} of all pairs: "
            f"{t['difference']:+.3f}: "
            f"{'met' if t['difference'] >= -AGREEMENT_TOLERANCE else 'not met'}"
        )
    print("\n".join(lines))
    doc = {
        **header(args),
        "settings": settings,
        "valid_file": str(setup.files["valid"]),
        "users": len(rows),
        "retriever": retriever,
        "means": means,
        "tests": tests,
        "table": "\n".join(lines),
        "per_user": rows,
    }
    atomic_write_text(out / "agreement.json", json.dumps(doc, indent=1) + "\n")
    say(f"catalogue_eval: wrote {out / 'agreement.json'}")


def header(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "date": date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "torch_threads": torch.get_num_threads(),
        "model": args.model,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="the trained run (or stage) directory")
    parser.add_argument("--test", help="test users (default: the run's data.eval)")
    parser.add_argument(
        "--valid", help="validation users: the retriever's choice, the agreement (data.valid)"
    )
    parser.add_argument(
        "--out",
        default="runs/catalogue-eval",
        help="where results go (default runs/catalogue-eval)",
    )
    parser.add_argument(
        "--part",
        choices=("all", "test", "agreement"),
        default="all",
        help="test: the rows on the test users; agreement: pivot vs all pairs on validation "
        "users; all: both",
    )
    parser.add_argument(
        "--llm-users", type=int, default=200, help="test users the LLM rows cover (default 200)"
    )
    parser.add_argument(
        "--valid-users",
        type=int,
        default=25,
        help="validation users of the agreement (all pairs: M(M-1) prompts each; default 25)",
    )
    parser.add_argument(
        "--retrieve", type=int, default=RETRIEVE, help=f"M, reranked (default {RETRIEVE})"
    )
    parser.add_argument(
        "--pivots", type=int, default=PIVOTS, help=f"P of the pivot rerank (default {PIVOTS})"
    )
    parser.add_argument(
        "--sampled",
        type=int,
        default=SAMPLED,
        help=f"unrated titles drawn per user in the sampled protocol (default {SAMPLED})",
    )
    args = parser.parse_args(argv)
    for name in ("llm_users", "valid_users", "retrieve", "pivots", "sampled"):
        if getattr(args, name) < (0 if name.endswith("users") else 1):
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.retrieve < K:
        parser.error(f"--retrieve must be at least {K}: the top {K} come from it")
    try:
        setup = load_setup(args)
        out = Path(args.out)
        seed = setup.cfg.eval.seed
        valid = split_records(setup, "valid")
        say(f"catalogue_eval: fitting the classic scorers on {len(setup.train):,} training + "
            f"{len(valid):,} validation users' histories")  # fmt: skip
        scorers = fit_scorers([*setup.train, *valid], seed=seed, say=say)
        catalogue = with_positives(setup.catalogue, valid, seed)
        sets = candidate_sets(setup.catalogue, catalogue, valid, None, seed)["full"]
        ranks = classic_ranks(scorers, valid, sets, "validation users, full ranking")
        choice = {n: float(ndcg_of(r).mean()) for n, r in ranks.items() if n in RETRIEVERS}
        retriever = max(choice, key=lambda n: (choice[n], -RETRIEVERS.index(n)))
        say(
            f"catalogue_eval: retriever {retriever} (validation NDCG@{K}, full ranking: "
            + ", ".join(f"{n} {v:.4f}" for n, v in choice.items())
            + ")"
        )
        loaded: list[Ranker] = []

        def ranker_of() -> Ranker:  # loaded once, and only when something is left to score
            if not loaded:
                loaded.append(load_ranker(str(setup.stage)))
            return loaded[0]

        if args.part in ("all", "test"):
            run_test(args, setup, retriever, ranker_of, out)
        if args.part in ("all", "agreement") and args.valid_users:
            run_agreement(args, setup, retriever, valid, catalogue, sets, scorers, ranker_of, out)
    except (ConfigError, DataError) as e:
        print(f"catalogue_eval: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
