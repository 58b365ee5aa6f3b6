"""The list hybrid: the hybrid's fusion (dmporec.hybrid) fitted on what `recommend` ranks, titles a
user has not rated, instead of the rated pairs the pair hybrid (`dmporec hybrid`) is fitted on.

Why a second fit. The pair hybrid learns from the authors' pairs, a liked title against one the
user rated low: there like-rate carries the signal and popularity points the wrong way (rated-low
titles are often popular). In a catalogue ranking the other candidates are unrated, and
popularity and BPR-MF carry it: on 200 MovieLens-1M test users (1 positive + 19 unrated titles)
the pair-fitted fusion ranked below BPR-MF alone (NDCG@10 0.531 vs 0.615, docs/results.md).

The fit. Each validation user's list (their positive and unrated catalogue titles,
dmporec.listwise.unrated_candidates) is reranked as `recommend` reranks it: the retriever's top M
and the LLM's score of each (its mean log-prob margin over the pivots, rerank.llm_scores). Every
pair (positive, another candidate) of a list whose positive is among the M gives one row of
margins, each component's item score of the positive minus the other's, with the item scores
`recommend` fuses (rerank.component_scores: popularity as log(1 + count)); lists whose positive
the retriever left out of the M give none (they are counted). Hybrid.fit then fits the weights
on those rows, its regularization chosen by cross-validation over validation users; test users
never touch it. Components: the LLM and every classic scorer `recommend` can fit, but random
(noise) and SASRec (`recommend` cannot fit it per request).

`recommend` and `serve` rank with STAGE/hybrid/list-model.json where a stage has one (over the
pair hybrid's model.json); benchmarks/catalogue_eval.py fits it (`--part list-hybrid`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dmporec.baselines import Scorer
from dmporec.files import atomic_write_text, files_digest
from dmporec.hybrid import LLM, Hybrid
from dmporec.model import read_lineage
from dmporec.records import Record
from dmporec.rerank import LIST_HYBRID_FILE, component_scores

# Beside an installed list hybrid: the adapters (and rerank settings) it was fitted for.
FITTED_FOR = LIST_HYBRID_FILE.with_name("list-model.fitted-for.json")
SKIPPED = ("random", "sasrec")


def list_components(scorers: Mapping[str, Scorer], llm: bool = True) -> tuple[str, ...]:
    """The LLM (unless `llm` is off) and the classic scorers a list hybrid fuses (random and
    SASRec left out)."""
    return (*((LLM,) if llm else ()), *(name for name in scorers if name not in SKIPPED))


def list_margins(
    results: Sequence[dict[str, Any]],
    records: Sequence[Record],
    scorers: Mapping[str, Scorer],
    components: Sequence[str],
) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """(margins per component, the user of each pair, lists left out) of every (positive,
    other candidate) pair of the reranked lists. `results[i]` is one rerank of `records[i]`'s
    list as benchmarks/catalogue_eval.py caches it: "retrieved" (the M titles in the
    retriever's order), "llm" (their LLM scores) and "positive_position" (the positive's
    1-based place in the retriever's order of the whole list)."""
    margins: dict[str, list[np.ndarray]] = {c: [] for c in components}
    users: list[str] = []
    left_out = 0
    for result, record in zip(results, records, strict=True):
        titles, llm = result["retrieved"], result["llm"]
        pos = result["positive_position"] - 1
        if pos >= len(titles) or len(titles) < 2 or None in llm:
            left_out += 1
            continue
        history = [item.title for item in record.history]
        scores = component_scores(components, scorers, history, record.user_id, titles, llm)
        for c in components:
            s = np.asarray(scores[c], float)
            margins[c].append(s[pos] - np.delete(s, pos))
        users.extend([record.user_id] * (len(titles) - 1))
    stacked = {c: np.concatenate(v) if v else np.zeros(0) for c, v in margins.items()}
    return stacked, np.asarray(users), left_out


def fit_list_hybrid(
    results: Sequence[dict[str, Any]],
    records: Sequence[Record],
    scorers: Mapping[str, Scorer],
    *,
    llm: bool = True,
) -> tuple[Hybrid, int]:
    """The list hybrid fitted on validation users' reranked lists (list_margins), and the number
    of lists left out; `llm` off: the same fit on the classic scorers alone (what the LLM adds
    is the difference). ValueError (from Hybrid.fit) on too few users for its cross-validation."""
    components = list_components(scorers, llm)
    margins, users, left_out = list_margins(results, records, scorers, components)
    return Hybrid.fit(margins, users), left_out


def list_fused(
    hybrid: Hybrid,
    result: dict[str, Any],
    record: Record,
    scorers: Mapping[str, Scorer],
) -> list[float]:
    """The list hybrid's score of each of a cached rerank's M candidates (no LLM call: its
    scores are in the result)."""
    history = [item.title for item in record.history]
    scores = component_scores(
        hybrid.components, scorers, history, record.user_id, result["retrieved"], result["llm"]
    )
    return hybrid.item_scores(scores).tolist()


def adapters_digest(stage: Path) -> str:
    """sha256 (16 hex digits) of the stage's lineage.json and every adapter file, in order: the
    trained model whose LLM scores a list hybrid's weights were fitted on."""
    _, adapters = read_lineage(stage)
    weights = sorted(p for a in adapters for p in Path(a).rglob("*") if p.is_file())
    return files_digest(stage / "lineage.json", *weights)


def install(hybrid: Hybrid, stage: Path, settings: Mapping[str, Any]) -> Path:
    """Write `hybrid` to STAGE/hybrid/list-model.json, where `recommend` and `serve` rank with
    it, and beside it the stage's adapters digest and `settings` (what it was fitted with)."""
    hybrid.save(stage / LIST_HYBRID_FILE)
    fitted_for = {"model.adapters": adapters_digest(stage), **settings}
    atomic_write_text(stage / FITTED_FOR, json.dumps(fitted_for, indent=1) + "\n")
    return stage / LIST_HYBRID_FILE


def check_installed(stage: Path) -> str | None:
    """None when STAGE's list hybrid was installed for its adapters as they are now; else why
    not (a line for the answer's notes: the pair hybrid or reciprocal rank is used instead)."""
    path = stage / FITTED_FOR
    try:
        then = json.loads(path.read_text())["model.adapters"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{stage / LIST_HYBRID_FILE} has no readable {path.name}: not used"
    if then != adapters_digest(stage):
        return (
            f"{stage / LIST_HYBRID_FILE} was fitted for other adapters than the stage's now "
            "(trained again?): not used; fit it again (benchmarks/catalogue_eval.py --part "
            "list-hybrid --install)"
        )
    return None
