"""Candidate sets for listwise metrics: each user's positive among N-1 sampled negatives.

These are **sampled-negative** metrics, not full-catalog ranking: HR@k and NDCG@k over the
positive and 19 titles drawn uniformly from the catalog say how well a model separates the
positive from random items, which is much easier than (and ranks models differently from)
ranking it against every title (RecBole's caveat; Krichene & Rendle, "On Sampled Metrics for
Item Recommendation", KDD 2020). Uniformly drawn titles are mostly long-tail ones the user never
considered, so popularity alone scores well here; the pairwise metrics, whose negatives the user
rated low, are the harder test. Compare models only on the same candidate sets (same seed, same
catalog).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from dmporec.records import DataError, Record

CandidateSet = tuple[list[str], int]  # (candidate titles, index of the positive among them)


def rated_titles(record: Record) -> set[str]:
    """Every title the user rated: history, positive and negatives."""
    return {item.title for item in (*record.history, record.positive, *record.negatives)}


def default_catalog(records: Iterable[Record]) -> list[str]:
    """Every title in the records' histories, positives and negatives, sorted (deterministic)."""
    return sorted(set().union(*(rated_titles(r) for r in records)))


def sample_unrated(
    catalog: Sequence[str], exclude: set[str], n: int, rng: random.Random
) -> list[str]:
    """`n` distinct titles drawn uniformly from `catalog` (distinct titles), none in `exclude`."""
    available = len(catalog) - len(exclude.intersection(catalog))
    if available < n:
        raise DataError(
            f"the catalog has {available} titles the user did not rate; {n} are needed "
            "(lower n or pass a larger catalog)"
        )
    picked: list[str] = []
    seen = set(exclude)
    while len(picked) < n:  # rejection sampling: the user rated few of many titles
        title = catalog[rng.randrange(len(catalog))]
        if title not in seen:
            seen.add(title)
            picked.append(title)
    return picked


def unrated_candidates(
    record: Record, catalog: Sequence[str], sample: int | None = None, seed: int = 0
) -> CandidateSet:
    """The record's positive among catalog titles its user is not known to have rated, in
    catalog order, for top-K metrics over a catalogue (benchmarks/catalogue_eval.py).

    Known rated: the record's history and negatives (its positive aside). `sample` None gives
    every other catalog title (the full-catalogue protocol); `sample` = n gives n of them drawn
    uniformly without replacement from random.Random(f"{seed}:{user_id}") (the sampled
    protocol: SASRec's 1 positive + 100). A positive the catalog lacks is listed last. The
    catalog's order is kept, not shuffled: a retriever breaks its ties by it, as `recommend`
    does, and the metrics average over ties, so the positive's place gives nothing away.
    `catalog` holds distinct titles; DataError when fewer than `sample` are left to draw.
    """
    positive = record.positive.title
    rated = rated_titles(record)
    if sample is None:
        titles = [t for t in catalog if t not in rated or t == positive]
    else:
        rng = random.Random(f"{seed}:{record.user_id}")
        try:
            drawn = set(sample_unrated(catalog, rated, sample, rng))
        except DataError as e:
            raise DataError(str(e), record=record.user_id) from None
        titles = [t for t in catalog if t in drawn or t == positive]
    if positive not in titles:
        titles.append(positive)
    return titles, titles.index(positive)


def candidate_sets(
    records: Sequence[Record],
    n: int = 20,
    seed: int = 0,
    catalog: Iterable[str] | None = None,
) -> list[CandidateSet]:
    """For each record, N candidate titles (the positive and n-1 negatives) and the positive's index.

    The negatives are the first n-1 of `record.metadata["list_negatives"]` when the record has
    them (the builder's sampled titles; DataError when there are fewer than n-1), otherwise n-1
    distinct titles sampled uniformly from `catalog` (default: `default_catalog(records)`), never
    one the user rated (history, positive or negatives: the record's own rated-low negatives are
    left to the pairwise metrics). Each user draws from random.Random(f"{seed}:{user_id}"), which
    also places the positive at a uniform random position, so a set does not depend on the other
    records and the positive's position gives nothing away.
    """
    titles = None if catalog is None else sorted(set(catalog))
    out: list[CandidateSet] = []
    for record in records:
        rng = random.Random(f"{seed}:{record.user_id}")
        listed = record.metadata.get("list_negatives")
        if listed is not None:
            if len(listed) < n - 1:
                raise DataError(
                    f"has {len(listed)} list_negatives; {n - 1} are needed for n={n}",
                    record=record.user_id,
                    field="metadata.list_negatives",
                )
            negatives = list(listed[: n - 1])
        else:
            if titles is None:
                titles = default_catalog(records)
            negatives = sample_unrated(titles, rated_titles(record), n - 1, rng)
        position = rng.randrange(n)
        out.append(
            ([*negatives[:position], record.positive.title, *negatives[position:]], position)
        )
    return out
