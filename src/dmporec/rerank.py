"""Top-K from a catalogue for one history: retrieve M candidates with a classic scorer, rerank
them with the trained LLM in far fewer than M(M-1) prompts, fuse the two orders.

1. Retrieve (dmporec.catalogue): the M catalogue items a classic scorer ranks highest for the
   history, its own items left out. An empty history gets the most popular titles and nothing
   more (nothing to personalize; the LLM needs a history).
2. Rerank (`rerank`):
   - pivot (default): each candidate is compared with P pivots, the retriever's top P (default
     2), each comparison asked in both listing orders: 2P(M-1) - P(P-1) prompts (M = 20, P = 2:
     74 instead of 380). An item's LLM score is its mean log-prob margin over the pivots (a
     pivot against itself counts 0; ranking.margin_matrix: a pair's margin as evaluation and
     the hybrid read it), so differences of scores read as pair margins.
   - all-pairs: every pair, M(M-1) prompts, the score the mean margin over all M candidates
     (the exact mode: pivot with P = M).
   - none: the retriever's order.
   All the comparisons of a request hang off its history in one batched scoring
   (ranking.pair_answers), the history encoded once.
3. Fuse: the run's fitted hybrid ranks by its weights over each candidate's LLM score and
   classic scores (popularity as log(1 + count), its scale in the fit): the list hybrid
   (STAGE/hybrid/list-model.json, dmporec.list_hybrid: fitted on unrated candidates, what is
   ranked here) where the stage has one, else the pair hybrid (STAGE/hybrid/model.json,
   dmporec.hybrid: fitted on rated pairs); without one, with the hybrid turned off, or when
   a component it needs cannot be computed (which is said), reciprocal-rank fusion of the
   retriever's order and the LLM's: sum of 1 / (60 + rank) (Cormack, Clarke and Buettcher, SIGIR 2009).

Each item says what every stage gave it: retriever_rank and retriever_score, llm_score (None
without a rerank), fused_score (None without a fusion); `rank` is the final order.
`Recommender.plan` needs no model (input checked, candidates retrieved, prompts counted), so a
command can fail on bad input before it loads one; `Recommender.finish` scores and fuses.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmporec import retriever_cache
from dmporec.baselines import LikeRate, Scorer
from dmporec.catalogue import (
    CATALOGUE,
    DEFAULT_RETRIEVER,
    Catalogue,
    Retrieved,
    fit_scorer,
    query_record,
    read_catalogue,
    retrieve,
    run_catalogue,
    training_records,
)
from dmporec.config import ConfigError
from dmporec.data import training_labels
from dmporec.hybrid import LLM, Hybrid
from dmporec.ranking import (
    RankRequest,
    check_request,
    margin_matrix,
    ordered_pairs,
    pivot_pairs,
    pivot_scores,
)
from dmporec.records import DataError, Record, TitleNormalization, normalize_title
from dmporec.wording import Wording, resolve_wording

RERANKS = ("pivot", "all-pairs", "none")
TOP_K = 10
RETRIEVE = 20  # M: candidates the retriever hands the LLM
PIVOTS = 2
RRF_K = 60  # reciprocal-rank fusion's constant, as Cormack et al. set it
HYBRID_FILE = Path("hybrid") / "model.json"  # under the stage directory (stages/hybrid.py)
# The list hybrid (dmporec.list_hybrid), preferred where a stage has one: fitted on unrated lists.
LIST_HYBRID_FILE = Path("hybrid") / "list-model.json"
# Pair lines and answers per packed prompt tree of a rerank (ranking.pair_answers): one request
# alone encodes its history once as the call's stem, so small trees cost no repeated history
# and less attention over masked tokens. SmolLM2-135M, 2 cores, pivot M = 20 over a 30-title
# history: 10.1 s at 512 against 12.9 s at 2,048 (with the pair order of `rerank_pairs`).
RERANK_GROUP_TOKENS = 512


def rerank_pairs(n: int, rerank: str, pivots: int) -> list[tuple[int, int]]:
    """The ordered pairs (listed first, second) a rerank of n candidates asks the LLM, sorted by
    the candidate listed first: a prompt tree's pair lines then share their first title (the
    trie encodes "... <Title:A>  and  <Title:" once for every B listed after A), 7% fewer
    seconds for pivot M = 20 than both orders of a pair side by side."""
    if rerank == "pivot":
        return sorted(pivot_pairs(n, pivots))
    if rerank == "all-pairs":
        return sorted(ordered_pairs(n))
    return []


def rerank_prompts(n: int, rerank: str, pivots: int) -> int:
    """len(rerank_pairs(n, rerank, pivots)) without building them: 2P(n-1) - P(P-1) with P the
    pivots (n for all-pairs, which gives n(n-1))."""
    if rerank == "none" or n < 2:
        return 0
    p = n if rerank == "all-pairs" else min(pivots, n)
    return 2 * p * (n - 1) - p * (p - 1)


def llm_scores(
    n: int, rerank: str, pivots: int, first: torch.Tensor, second: torch.Tensor
) -> list[float]:
    """Each candidate's mean margin over the pivots (all n candidates for all-pairs), from the
    answers of `rerank_pairs(n, rerank, pivots)` (ranking.pair_answers)."""
    margins = margin_matrix(n, rerank_pairs(n, rerank, pivots), first, second)
    return pivot_scores(margins, n if rerank == "all-pairs" else pivots)


def ranks(scores: Sequence[float]) -> list[int]:
    """The 1-based rank of each score, highest first; ties keep the input order."""
    out = [0] * len(scores)
    for r, i in enumerate(sorted(range(len(scores)), key=lambda i: -scores[i]), 1):
        out[i] = r
    return out


def reciprocal_rank_fusion(*rankings: Sequence[int], k: int = RRF_K) -> list[float]:
    """sum over rankings of 1 / (k + rank), per item (ranks 1-based, aligned lists)."""
    return [sum(1.0 / (k + r) for r in item) for item in zip(*rankings, strict=True)]


@dataclass(frozen=True)
class Plan:
    """A checked request with its candidates retrieved; what `Recommender.finish` scores."""

    history: tuple[str, ...]  # cleaned titles
    wording: Wording
    user_id: str | None
    retrieved: Retrieved
    k: int
    rerank: str
    pivots: int
    retriever: str
    matched: int  # history titles found in the catalogue
    notes: tuple[str, ...]

    @property
    def prompts(self) -> int:
        return rerank_prompts(len(self.retrieved.indices), self.rerank, self.pivots)


def say_stderr(text: str) -> None:
    print(text, file=sys.stderr)


@dataclass
class Recommender:
    """A catalogue with fitted classic scorers (the retriever's, popularity, and the hybrid's
    components), and the run's hybrid if it has one; the LLM is passed to `finish`."""

    catalogue: Catalogue
    norm: TitleNormalization
    retriever: str
    scorers: dict[str, Scorer]
    hybrid: Hybrid | None = None
    notes: tuple[str, ...] = ()  # said with every answer: a hybrid that cannot run here
    hybrid_kind: str = "hybrid"  # "list-hybrid" when fitted on unrated lists (list_hybrid)

    def plan(
        self,
        history: Sequence[str],
        *,
        k: int = TOP_K,
        m: int = RETRIEVE,
        rerank: str = "pivot",
        pivots: int = PIVOTS,
        user_id: str | None = None,
        domain: Any = "movies",
        among: Sequence[int] | None = None,
    ) -> Plan:
        """Clean and check the request, retrieve its candidates; no model needed. DataError (one
        line) for a blank history title, a bad domain, M < K or a catalogue smaller than K; a
        catalogue smaller than M gives fewer candidates, said in the notes. `among`: catalogue
        indices to retrieve from instead of the whole catalogue (an evaluation's candidates)."""
        if rerank not in RERANKS:
            raise DataError(f"rerank must be one of {', '.join(RERANKS)}, got {rerank!r}")
        for name, value in (("top-K", k), ("M (candidates to rerank)", m), ("pivots", pivots)):
            if value < 1:
                raise DataError(f"{name} must be at least 1, got {value}")
        try:
            wording = resolve_wording(domain)
        except ValueError as e:
            raise DataError(str(e), field="domain") from None
        titles = []
        for i, title in enumerate(history):
            if not isinstance(title, str) or not title.strip():
                raise DataError(f"title {i} is empty", field="history")
            titles.append(normalize_title(title, self.norm))
        seen = {i for t in titles if (i := self.catalogue.index(t)) is not None}
        matched = sum(self.catalogue.index(t) is not None for t in titles)
        pool = set(range(len(self.catalogue))) if among is None else set(among)
        left = len(pool - seen)
        notes = list(self.notes)
        if titles and matched < len(titles):
            notes.append(
                f"history: {matched} of {len(titles)} titles are in the catalogue; the others "
                "are read as text only (by the LLM, not by a fitted retriever)"
            )
        if k > left:
            raise DataError(
                f"top-K {k} is more than the {left} catalogue titles left once the history's "
                f"{len(seen)} are taken out ({self.catalogue.source}: {len(self.catalogue)} titles)"
            )
        retriever = self.retriever
        if not titles:
            notes.append(
                "empty history: the catalogue's most popular titles (popularity only: nothing "
                "to personalize, no LLM)"
            )
            rerank, retriever = "none", "popularity"
        if rerank == "none":
            m = k
        elif m < k:
            raise DataError(
                f"M={m} candidates to rerank is under top-K {k}: the top K come from the M "
                "reranked; raise M or lower K"
            )
        elif m > left:
            notes.append(
                f"M={m} candidates asked, the catalogue has {left} left once the history's are "
                f"taken out: reranking {left}"
            )
            m = left
        retrieved = retrieve(self.scorers[retriever], self.catalogue, titles, m, user_id, among)
        return Plan(
            tuple(titles), wording, user_id, retrieved, k, rerank, pivots, retriever, matched,
            tuple(notes),
        )  # fmt: skip

    def finish(
        self,
        plan: Plan,
        ranker: Any,
        *,
        use_hybrid: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Rerank `plan`'s candidates with `ranker` (a recommend.Ranker), fuse, and describe the
        answer: {"recommended": [items], "retriever", "rerank", "pivots", "candidates",
        "prompts", "fusion", "history_matched", "history_titles", "catalogue_titles", "notes"}."""
        items = [self.catalogue.items[i] for i in plan.retrieved.indices]
        titles = [item.title for item in items]
        n, notes = len(titles), list(plan.notes)
        llm: list[float] | None = None
        fused: list[float] | None = None
        fusion = "none"
        if plan.rerank != "none" and n:
            request = check_request(RankRequest(plan.history, tuple(titles), plan.wording))
            bounded = ranker.bounded(request)
            kept, given = len(bounded.history), len(request.history)
            if kept < given:
                notes.append(
                    f"history over data.max_prompt_tokens={ranker.data_cfg.max_prompt_tokens} "
                    f"tokens: the LLM read its newest {kept} of {given} titles"
                )
            pairs = rerank_pairs(n, plan.rerank, plan.pivots)
            first = second = torch.empty(0)
            if pairs:
                ((first, second),) = ranker.answers(
                    [bounded], [pairs], progress, max_group_tokens=RERANK_GROUP_TOKENS
                )
            llm = llm_scores(n, plan.rerank, plan.pivots, first, second)
            if use_hybrid and self.hybrid is not None:
                fused = self._hybrid(plan, titles, llm).tolist()
                fusion = self.hybrid_kind
            else:
                fused = reciprocal_rank_fusion(range(1, n + 1), ranks(llm))
                fusion = "rrf"
        elif self.hybrid is not None and use_hybrid and plan.history:
            notes.append("the hybrid needs the LLM's scores (rerank none): the retriever's order")
        order = sorted(range(n), key=lambda i: -fused[i]) if fused is not None else range(n)
        recommended = [
            {
                "rank": r,
                "title": titles[i],
                "item_id": items[i].item_id,
                "retriever_rank": i + 1,
                "retriever_score": round(plan.retrieved.scores[i], 6),
                "llm_score": None if llm is None else round(llm[i], 6),
                "fused_score": None if fused is None else round(fused[i], 6),
            }
            for r, i in enumerate(list(order)[: plan.k], 1)
        ]
        return {
            "recommended": recommended,
            "retriever": plan.retriever,
            "rerank": plan.rerank,
            "pivots": plan.pivots if plan.rerank == "pivot" else None,
            "candidates": n,
            "prompts": plan.prompts,
            "fusion": fusion,
            "history_matched": plan.matched,
            "history_titles": len(plan.history),
            "catalogue_titles": len(self.catalogue),
            "notes": notes,
        }

    def _hybrid(self, plan: Plan, titles: list[str], llm: list[float]) -> np.ndarray:
        """The hybrid's fused score of each candidate: its components' item scores."""
        assert self.hybrid is not None
        scores = component_scores(
            self.hybrid.components, self.scorers, plan.history, plan.user_id, titles, llm
        )
        return self.hybrid.item_scores(scores)


def component_scores(
    components: Sequence[str],
    scorers: Mapping[str, Scorer],
    history: Sequence[str],
    user_id: str | None,
    titles: Sequence[str],
    llm: Sequence[float],
) -> dict[str, Sequence[float]]:
    """Each hybrid component's item score of every title, as the fusion reads them: the LLM's
    its score (llm_scores), popularity log(1 + count) (its scale in the fit:
    hybrid.popularity_margin), every other classic scorer its score for the history."""
    record = query_record(history, user_id)
    scores: dict[str, Sequence[float]] = {}
    for name in components:
        if name == LLM:
            scores[name] = llm
        elif name == "popularity":
            scores[name] = np.log1p(scorers[name].score(record, list(titles))).tolist()
        else:
            scores[name] = scorers[name].score(record, list(titles))
    return scores


def _hybrid_files(
    stage: Path | None, use_hybrid: bool, notes: list[str], say: Callable[[str], None]
) -> list[tuple[Path, str]]:
    """The stage's fitted hybrids to try, in order: its list hybrid (when installed for the
    stage's adapters as they are now; otherwise said in `notes`), then its pair hybrid."""
    if stage is None or not use_hybrid:
        return []
    from dmporec.list_hybrid import check_installed

    files = []
    if (stage / LIST_HYBRID_FILE).is_file():
        stale = check_installed(stage)
        if stale is None:
            files.append((stage / LIST_HYBRID_FILE, "list-hybrid"))
        else:
            notes.append(stale)
            say(f"recommend: {stale}")
    if (stage / HYBRID_FILE).is_file():
        files.append((stage / HYBRID_FILE, "hybrid"))
    return files


def load_recommender(
    spec: str,
    norm: TitleNormalization,
    *,
    catalogue_file: str | Path | None = None,
    retriever: str | None = None,
    use_hybrid: bool = True,
    seed: int | None = None,
    say: Callable[[str], None] = say_stderr,
) -> Recommender:
    """The Recommender of --model `spec` (no model loaded): its catalogue (`catalogue_file`, else
    the run's RUN/catalogue.jsonl, built on first use, else an export's catalogue.jsonl), the
    retriever (None: bpr-mf, or popularity from the catalogue's counts where no training records
    are at hand) and popularity fitted on the run's training records (BPR-MF and ALS read from
    RUN/retrievers/ when fitted there before on the same records and settings), and the stage's
    hybrid with its components fitted (unless `use_hybrid` is off): its list hybrid where one is
    installed for its adapters as they are now, else its pair hybrid. A hybrid with a component
    that cannot be fitted here is not used (the next one is tried, then reciprocal rank), said
    in every answer's notes."""
    from dmporec.ranker import find_stage, run_config

    path = Path(spec).expanduser()
    stage = find_stage(path) if path.is_dir() else None
    cfg = run_config(stage) if stage is not None else None
    records: list[Record] = training_records(cfg) if cfg is not None else []
    seed = seed if seed is not None else (cfg.eval.seed if cfg is not None else 0)
    if catalogue_file is not None:
        catalogue = read_catalogue(catalogue_file, norm)
    elif stage is not None and cfg is not None:
        catalogue = run_catalogue(stage.parent, records, norm, say)
    elif found := [
        p / CATALOGUE
        for p in ([stage.parent] if stage is not None else [path] if path.is_dir() else [])
        if (p / CATALOGUE).is_file()
    ]:
        catalogue = read_catalogue(found[0], norm)
    else:
        raise ConfigError(
            f"--model {spec}: no catalogue to recommend from (a run dir builds RUN/{CATALOGUE} "
            f"from its training data, an export holds {CATALOGUE}); give --catalogue FILE "
            '(JSON lines: {"title": ..., "item_id": ...})'
        )
    if retriever is None and not records:
        retriever = "popularity"
        say(
            f"recommend: retriever popularity (the catalogue's counts): {DEFAULT_RETRIEVER}, "
            "the default, is fitted on a run's training data, which --model does not point to"
        )
    retriever = retriever or DEFAULT_RETRIEVER
    # A run's BPR-MF and ALS fits are kept beside its catalogue (dmporec.retriever_cache).
    cache = stage.parent / retriever_cache.DIRECTORY if stage is not None and records else None
    if records and retriever not in retriever_cache.CACHED:
        say(f"recommend: fitting {retriever} on the run's {len(records):,} training users")

    def fit(name: str) -> Scorer:
        labelled = training_labels(cfg.data) if name == LikeRate.name and cfg and records else []
        return fit_scorer(
            name,
            records,
            catalogue,
            seed,
            cache=cache,
            say=lambda t: say(f"recommend: {t}"),
            labelled=labelled,
        )

    scorers = {retriever: fit(retriever)}
    if "popularity" not in scorers:
        scorers["popularity"] = fit("popularity")
    hybrid, notes, kind = None, [], "hybrid"
    for path, what in _hybrid_files(stage, use_hybrid, notes, say):
        fitted = Hybrid.load(path)
        missing = []
        for name in fitted.components:
            if name == LLM or name in scorers:
                continue
            try:
                scorers[name] = fit(name)
            except ConfigError as e:
                missing.append(f"{name} ({e})")
        if not missing:
            hybrid, kind = fitted, what
            break
        notes.append(f"the run's hybrid ({path}) needs {'; '.join(missing)}: not used")
        say(f"recommend: {notes[-1]}")
    if use_hybrid and hybrid is None and notes:
        notes.append("no fitted hybrid can be used: fused by reciprocal rank instead")
        say(f"recommend: {notes[-1]}")
    return Recommender(catalogue, norm, retriever, scorers, hybrid, tuple(notes), kind)
