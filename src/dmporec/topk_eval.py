"""Top-K evaluation from a run's catalogue, per user: each user's candidates, the classic scorers'
rank of the positive, one LLM rerank request as `recommend` makes it, and the per-user results
file a long evaluation resumes from (benchmarks/catalogue_eval.py wires them; its docstring says
the protocol). Statistics over users are in dmporec.topk_stats."""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dmporec.baselines import Scorer, fit_scorers
from dmporec.catalogue import Catalogue, CatalogueItem, retrieve
from dmporec.config import ConfigError
from dmporec.files import atomic_write_text, files_digest
from dmporec.hybrid import LLM, Hybrid
from dmporec.list_hybrid import list_fused
from dmporec.listwise import CandidateSet, unrated_candidates
from dmporec.metrics import rank_of_positive, ties_with_positive, user_ndcg
from dmporec.ranker import Ranker
from dmporec.records import Record, TitleNormalization
from dmporec.rerank import HYBRID_FILE, Recommender, ranks, reciprocal_rank_fusion

K = 10


def say(text: str) -> None:
    tqdm.write(text, file=sys.stderr)


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


def draw(n_items: int, n: int, seed: int, what: str) -> list[int]:
    """The first n of a seeded permutation of range(n_items): a larger n extends a smaller."""
    order = list(range(n_items))
    random.Random(f"{seed}:{what}").shuffle(order)
    return order[:n]


def fit_with_sasrec(
    records: list[Record], seed: int, labelled: Sequence[Record] = ()
) -> list[Scorer]:
    """The classic scorers (like-rate on `labelled`, the training users' records) and SASRec (a
    row here, never the retriever: `recommend` offers no sequential retriever), SASRec skipped
    with a line where Cornac is not installed."""
    try:
        return fit_scorers(records, seed=seed, say=say, sasrec={}, labelled=labelled)
    except ConfigError as e:
        say(f"catalogue_eval: sasrec skipped ({e})")
        return fit_scorers(records, seed=seed, say=say, labelled=labelled)


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
    stage: Path,
    normalization: TitleNormalization,
    catalogue: Catalogue,
    retriever: str,
    scorers: list[Scorer],
) -> tuple[Recommender, dict[str, Any]]:
    """The Recommender `recommend` would build, with these fitted scorers; the stage's hybrid
    when it has one and every component is fitted here (else RRF, said). And what its fused
    rows are made with, taken as the hybrid is read: {"fusion": "hybrid" or "rrf", "file",
    "digest"} (the last two None for RRF)."""
    by_name = {s.name: s for s in scorers}
    hybrid, path = None, stage / HYBRID_FILE
    fusion: dict[str, Any] = {"fusion": "rrf", "file": None, "digest": None}
    if path.is_file():
        digest = files_digest(path)
        fitted = Hybrid.load(path)
        missing = [c for c in fitted.components if c != LLM and c not in by_name]
        if missing:
            say(f"catalogue_eval: the hybrid needs {', '.join(missing)}: fused by reciprocal rank")
        else:
            hybrid = fitted
            fusion = {"fusion": "hybrid", "file": str(path), "digest": digest}
    return Recommender(catalogue, normalization, retriever, by_name, hybrid), fusion


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
    in its order), the LLM's score of each, and where the positive sits in the retriever's
    order of every candidate (1-based). The fused scores are not kept: fused_now makes them from
    these, with whatever hybrid the stage has when they are read."""
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
        "positive_position": order.indices.index(rec.catalogue.index(titles[pos])) + 1,
        "prompts": doc["prompts"],
        "seconds": round(seconds, 3),
        "notes": doc["notes"],
    }


def fused_now(rec: Recommender, result: dict[str, Any], record: Record) -> list[float | None]:
    """A cached rerank's fused scores as `rec` fuses now: its hybrid over the cached LLM scores,
    else reciprocal rank (what Recommender.finish does, without the LLM call). The fusion is
    recomputed on every read, so refitting or installing a hybrid never costs an LLM pass and a
    cache never holds another hybrid's fusion."""
    llm = result["llm"]
    if None in llm:  # not reranked (rerank none): nothing to fuse
        return [None] * len(llm)
    if rec.hybrid is not None:
        return list_fused(rec.hybrid, result, record, rec.scorers)
    return reciprocal_rank_fusion(range(1, len(llm) + 1), ranks(llm))


def reranked_rank(result: dict[str, Any], row: str) -> tuple[float, int]:
    """(rank, ties) of the positive under `row` ("llm" or "fused"): among the top M by that
    row's scores when retrieved there, else its place in the retriever's order."""
    position = result["positive_position"]
    scores = result[row]
    if position > len(scores) or None in scores:  # not retrieved, or not reranked
        return float(position), 0
    return rank_of_positive(scores, position - 1), ties_with_positive(scores, position - 1)


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


def differences(then: dict[str, Any], now: dict[str, Any], retired: Sequence[str] = ()) -> str:
    """Every key whose value differs, 'key: old then, new now'; '' when none does. `retired`:
    keys older records hold that no longer bear on the result (left out of `then`). (A run's
    stage settings go through stages.common.settings_changes, which reads older records.)"""
    then = {k: v for k, v in then.items() if k not in retired}
    return "; ".join(
        f"{k}: {then.get(k)!r} then, {now.get(k)!r} now"
        for k in sorted(then.keys() | now.keys())
        if then.get(k) != now.get(k)
    )


class ResultCache:
    """Per-user results in JSON lines, the first line {"settings": ...}. Reopened, it refuses
    other settings (naming them), keeps every whole line and drops one cut by a kill (that user
    is redone). `retired`: settings that older caches recorded and that no longer bear on what
    is cached (not compared)."""

    def __init__(self, path: Path, settings: dict[str, Any], retired: Sequence[str] = ()) -> None:
        self.path, self.results = path, {}
        if path.is_file() and path.stat().st_size:
            text = path.read_text(encoding="utf-8")
            lines = text.splitlines()
            said = differences(json.loads(lines[0]).get("settings", {}), settings, retired)
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
