"""Pairwise ranking metrics on (chosen, rejected) scores, with bootstrap confidence intervals.

For each test pair, `chosen` is the model's score (summed log-prob) of the answer that ranks the
positive first and `rejected` the score of the reversed answer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

Array = np.ndarray


def pairwise_accuracy(chosen: Array, rejected: Array) -> float:
    """mean over pairs of 1[chosen > rejected], ties counting 1/2. NaN for no pairs."""
    chosen, rejected = np.asarray(chosen, float), np.asarray(rejected, float)
    if chosen.size == 0:
        return float("nan")
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def coin_flips(n: int, seed: int = 0) -> Array:
    """[n] bool: the per-pair coin of the authors' AUC (True = score the chosen ordering)."""
    return np.random.default_rng(seed).random(n) < 0.5


def coin_flip_auc(
    chosen: Array, rejected: Array, seed: int = 0, heads: Array | None = None
) -> float:
    """The authors' AUC: per pair a fair coin picks label 1 with score `chosen` or label 0 with
    score `rejected`; then sklearn's roc_auc_score over the pairs. Seeded for comparability;
    it varies with the seed (`heads` passes the coins in). NaN when the coins give one class."""
    chosen, rejected = np.asarray(chosen, float), np.asarray(rejected, float)
    heads = coin_flips(chosen.size, seed) if heads is None else np.asarray(heads, bool)
    if heads.all() or not heads.any():
        return float("nan")
    return float(roc_auc_score(heads.astype(int), np.where(heads, chosen, rejected)))


def stable_auc(chosen: Array, rejected: Array) -> float:
    """AUC with every chosen score labelled 1 and every rejected score labelled 0 (2n points):
    the coin-flip AUC without the coin. Ties count 1/2 (sklearn). NaN for no pairs."""
    chosen, rejected = np.asarray(chosen, float), np.asarray(rejected, float)
    if chosen.size == 0:
        return float("nan")
    labels = np.r_[np.ones(chosen.size), np.zeros(rejected.size)]
    return float(roc_auc_score(labels, np.r_[chosen, rejected]))


def first_listed_rate(chosen: Array, rejected: Array, positive_first: Array) -> float:
    """Share of pairs where the model ranks the first-listed candidate first (position bias).

    0.5 is unbiased; a model that always keeps the listed order scores 1.0."""
    prefers_positive = np.asarray(chosen, float) > np.asarray(rejected, float)
    positive_first = np.asarray(positive_first, bool)
    if positive_first.size == 0:
        return float("nan")
    return float(np.mean(prefers_positive == positive_first))


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: Array,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of `metric(*arrays)`, resampling pairs with replacement.

    Resamples where the metric is NaN are dropped; (nan, nan) when none is left."""
    arrays = tuple(np.asarray(a) for a in arrays)
    n = arrays[0].shape[0]
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.array(
        [
            metric(*(a[idx] for a in arrays))
            for idx in (rng.integers(0, n, n) for _ in range(n_boot))
        ]
    )
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def pairwise_report(
    chosen: Array,
    rejected: Array,
    positive_first: Array | None = None,
    *,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, float]:
    """Every pairwise metric with its 95% CI, as one flat dict (JSON-ready).

    The bootstrap resamples pairs together with their coin, so the coin-flip AUC's interval
    reflects the test pairs, not fresh coins."""
    chosen, rejected = np.asarray(chosen, float), np.asarray(rejected, float)
    heads = coin_flips(chosen.size, seed)
    metrics: dict[str, Callable[[Array, Array, Array], float]] = {
        "accuracy": lambda c, r, h: pairwise_accuracy(c, r),
        "auc": lambda c, r, h: coin_flip_auc(c, r, heads=h),
        "auc_stable": lambda c, r, h: stable_auc(c, r),
    }
    out: dict[str, float] = {"pairs": int(chosen.size)}
    for name, fn in metrics.items():
        out[name] = fn(chosen, rejected, heads)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = bootstrap_ci(
            fn, chosen, rejected, heads, n_boot=n_boot, seed=seed
        )
    if positive_first is not None:
        pf = np.asarray(positive_first, bool)
        out["first_listed_rate"] = first_listed_rate(chosen, rejected, pf)
        out["accuracy_positive_listed_first"] = pairwise_accuracy(chosen[pf], rejected[pf])
        out["accuracy_positive_listed_second"] = pairwise_accuracy(chosen[~pf], rejected[~pf])
    return out
