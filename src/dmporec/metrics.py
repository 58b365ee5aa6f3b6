"""Ranking metrics: pairwise, per-user, paired model comparison and listwise, with bootstrap CIs.

Pairwise: for each test pair, `chosen` is the model's score (summed log-prob) of the answer that
ranks the positive first and `rejected` the score of the reversed answer; a scorer of single
items (the baselines) gives chosen = score(positive), rejected = score(negative).
Listwise: each user's positive is ranked among N candidates (see dmporec.listwise); the metrics
take the positive's 1-based rank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from scipy.stats import binomtest, rankdata
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


# ---------------------------------------------------------------- per user, and two models compared


def pair_correct(chosen: Array, rejected: Array) -> Array:
    """[n] per-pair correctness: 1.0 where chosen > rejected, 0.5 on a tie, 0.0 otherwise (a NaN
    score compares as a loss). Its mean is `pairwise_accuracy`; it is the input of `paired_test`."""
    chosen, rejected = np.asarray(chosen, float), np.asarray(rejected, float)
    return (chosen > rejected) + 0.5 * (chosen == rejected)


def grouped_auc(users: Array, chosen: Array, rejected: Array) -> float:
    """Per-user AUC averaged over users (RecBole's GAUC, on pairwise data).

    A user's AUC is the share of their pairs ranked right, mean over the user's pairs of
    1[chosen > rejected] + 1/2 * 1[chosen == rejected]; the result is the plain mean of those
    per-user values, so each user weighs the same however many pairs they have (RecBole weights
    a user by their number of positives; with one positive per user, as in our records, the two
    agree). Users with no pairs do not appear and are ignored. A NaN score loses its pair, as in
    `pairwise_accuracy`. NaN for no pairs. With one pair per user it equals `pairwise_accuracy`.
    """
    right = pair_correct(chosen, rejected)
    if right.size == 0:
        return float("nan")
    _, group = np.unique(np.asarray(users), return_inverse=True)
    return float(np.mean(np.bincount(group, weights=right) / np.bincount(group)))


def mcnemar_exact(a_better: int, b_better: int) -> float:
    """Two-sided exact McNemar p-value on the discordant pairs: under H0 each favours A or B
    with probability 1/2, so p = min(1, 2 * P[Binomial(n, 1/2) <= min(a_better, b_better)]),
    n = a_better + b_better. 1.0 when no pair is discordant."""
    n = a_better + b_better
    if n == 0:
        return 1.0
    # For p = 1/2 the two-sided binomial test is exactly min(1, 2 * cdf(min)).
    return float(binomtest(min(a_better, b_better), n, 0.5).pvalue)


def paired_test(
    correct_a: Array, correct_b: Array, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Two models on the same pairs: exact McNemar test and paired bootstrap CI of the difference.

    `correct_a[i]`, `correct_b[i]` say how right each model was on pair i: 1 right, 0 wrong,
    0.5 tie (`pair_correct`). A pair is discordant when the two differ; `a_better` counts those
    where A's value is the higher (a tie against a wrong answer counts for the tie), and
    `p_value = mcnemar_exact(a_better, b_better)`. `difference` = accuracy A - accuracy B; its CI
    is the percentile bootstrap over pairs, each resample taking both models' values of a pair
    together (seeded), so it keeps the pairing. For no pairs: NaN accuracies, difference and CI,
    p = 1. Raises ValueError when the shapes differ.
    """
    a, b = np.asarray(correct_a, float), np.asarray(correct_b, float)
    if a.shape != b.shape:
        raise ValueError(f"correct_a has shape {a.shape}, correct_b {b.shape}")
    nan = float("nan")
    a_better, b_better = int(np.sum(a > b)), int(np.sum(a < b))
    low, high = bootstrap_ci(
        lambda x, y: float(np.mean(x - y)), a, b, n_boot=n_boot, seed=seed, level=level
    )
    return {
        "pairs": int(a.size),
        "accuracy_a": float(a.mean()) if a.size else nan,
        "accuracy_b": float(b.mean()) if b.size else nan,
        "difference": float(np.mean(a - b)) if a.size else nan,
        "difference_ci_low": low,
        "difference_ci_high": high,
        "a_better": a_better,
        "b_better": b_better,
        "p_value": mcnemar_exact(a_better, b_better),
    }


def _auc(labels: Array, scores: Array) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties count 1/2, as sklearn's roc_auc_score, which
    it equals; tested): the bootstrap's thousands of AUCs in a fraction of the time. NaN when
    `labels` has one class."""
    n1 = int(labels.sum())
    n0 = labels.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _user_bootstrap(
    users: Array,
    differences: Callable[[Array], tuple[float, ...]],
    names: tuple[str, ...],
    *,
    n_boot: int,
    seed: int,
    level: float,
) -> dict[str, float]:
    """Differences between models on the same pairs (`differences(idx)`: one value per name, for
    the pairs at `idx`), observed and under a bootstrap over users: each resample draws users
    with replacement and takes all of a drawn user's pairs (pairs of one user are not
    independent). Per name: `NAME_difference` (observed), `NAME_difference_ci_low` / `_ci_high`
    (percentile interval of the resamples) and `NAME_p_value`, two-sided against 0:
    2 * (min(resamples <= 0, >= 0) + 1) / (resamples + 1), capped at 1 (its floor is about
    2 / n_boot, never 0). NaN resamples (e.g. an AUC of one coin class) are dropped; with none
    left, or a NaN observed difference (a NaN input), the interval is NaN and p = 1."""
    observed = differences(np.arange(users.size))
    _, group = np.unique(users, return_inverse=True)
    members = [np.flatnonzero(group == g) for g in range(group.max() + 1)] if users.size else []
    rng = np.random.default_rng(seed)
    draws = np.array(
        [
            differences(
                np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
            )
            for _ in range(n_boot if members else 0)
        ]
    ).reshape(-1, len(names))
    alpha = (1 - level) / 2
    out: dict[str, float] = {}
    for j, name in enumerate(names):
        d = draws[:, j][~np.isnan(draws[:, j])]
        out[f"{name}_difference"] = float(observed[j])
        if d.size == 0 or np.isnan(observed[j]):  # no estimate: no interval either
            out[f"{name}_difference_ci_low"] = out[f"{name}_difference_ci_high"] = float("nan")
            out[f"{name}_p_value"] = 1.0
            continue
        out[f"{name}_difference_ci_low"] = float(np.quantile(d, alpha))
        out[f"{name}_difference_ci_high"] = float(np.quantile(d, 1 - alpha))
        tail = min(np.sum(d <= 0), np.sum(d >= 0))
        out[f"{name}_p_value"] = float(min(1.0, 2 * (tail + 1) / (d.size + 1)))
    return out


def _coin_auc(heads: Array, chosen: Array, rejected: Array, idx: Array) -> float:
    """The coin-flip AUC of the pairs at `idx`, with their coins (`heads`)."""
    h = heads[idx]
    return _auc(h, np.where(h, chosen[idx], rejected[idx]))


def paired_auc_test(
    users: Array,
    chosen_a: Array,
    rejected_a: Array,
    chosen_b: Array,
    rejected_b: Array,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Two models' AUCs on the same pairs: the difference A - B of the authors' coin-flip AUC
    and of the stable AUC, with a paired bootstrap over users (`_user_bootstrap`: interval and
    two-sided p of each difference, `auc_difference*`, `auc_stable_difference*`).

    Both models get the same coins (`coin_flips(n, seed)`, pair i's coin staying with pair i),
    so the coin-flip AUCs differ only by the scores. Each resample takes a drawn user's pairs
    with both models' scores. Raises ValueError when the lengths differ."""
    users = np.asarray(users)
    arrays = [np.asarray(x, float) for x in (chosen_a, rejected_a, chosen_b, rejected_b)]
    if any(a.shape != users.shape for a in arrays):
        raise ValueError("users and the four score arrays must have the same length")
    ca, ra, cb, rb = arrays
    heads = coin_flips(users.size, seed)

    def differences(idx: Array) -> tuple[float, float]:
        coin = _coin_auc(heads, ca, ra, idx) - _coin_auc(heads, cb, rb, idx)
        both = np.r_[np.ones(idx.size, bool), np.zeros(idx.size, bool)]
        stable = _auc(both, np.r_[ca[idx], ra[idx]]) - _auc(both, np.r_[cb[idx], rb[idx]])
        return coin, stable

    out: dict[str, float] = {"pairs": int(users.size)}
    out["auc_a"], out["auc_b"] = (
        coin_flip_auc(ca, ra, heads=heads),
        coin_flip_auc(cb, rb, heads=heads),
    )
    out["auc_stable_a"], out["auc_stable_b"] = stable_auc(ca, ra), stable_auc(cb, rb)
    names = ("auc", "auc_stable")
    out.update(_user_bootstrap(users, differences, names, n_boot=n_boot, seed=seed, level=level))
    return out


def gain_difference_test(
    users: Array,
    scores: dict[str, tuple[Array, Array]],
    correct: dict[str, Array] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Whether model A gains more over its base than model B over its own, on the same pairs:
    (A - A's base) - (B - B's base), of accuracy and of the coin-flip AUC, with a paired
    bootstrap over users (`_user_bootstrap`; each resample takes a drawn user's pairs with all
    four models' results). The models are "a", "a_base", "b" and "b_base": each in `scores`
    ((chosen, rejected) per pair) or, a model that kept only whether it was right on each pair
    (`pair_correct`: an older row), in `correct`; the AUC needs all four in `scores`.

    Keys: `pairs`, each model's `accuracy_*` (and `auc_*`), the gains `gain_a` / `gain_b` (and
    `auc_gain_a` / `auc_gain_b`), and `gain_difference` (and `auc_gain_difference`) with its
    `_ci_low` and `_ci_high`, and `gain_p_value` (`auc_gain_p_value`). Every model gets the
    same coins. ValueError when a model is missing or the lengths differ."""
    order = ("a", "a_base", "b", "b_base")
    correct = dict(correct or {})
    if sorted([*scores, *correct]) != sorted(order):
        given = ", ".join(sorted([*scores, *correct]))
        raise ValueError(f"needs each of {', '.join(order)} once (scores or correct); got {given}")
    users = np.asarray(users)
    pairs = {k: tuple(np.asarray(x, float) for x in v) for k, v in scores.items()}
    correct = {k: np.asarray(v, float) for k, v in correct.items()}
    correct |= {k: pair_correct(*v) for k, v in pairs.items()}
    arrays = [*correct.values(), *(x for v in pairs.values() for x in v)]
    if any(x.shape != users.shape for x in arrays):
        raise ValueError("users and every model's per-pair results must have the same length")
    heads = coin_flips(users.size, seed)
    with_auc = len(pairs) == len(order)
    names = ("gain", "auc_gain") if with_auc else ("gain",)

    def gains(idx: Array) -> tuple[float, ...]:
        if idx.size == 0:
            return (float("nan"),) * len(names)
        acc = {k: correct[k][idx].mean() for k in order}
        out = [float((acc["a"] - acc["a_base"]) - (acc["b"] - acc["b_base"]))]
        if with_auc:
            auc = {k: _coin_auc(heads, *pairs[k], idx) for k in order}
            out.append((auc["a"] - auc["a_base"]) - (auc["b"] - auc["b_base"]))
        return tuple(out)

    out: dict[str, float] = {"pairs": int(users.size)}
    every = np.arange(users.size)
    for k in order:
        out[f"accuracy_{k}"] = float(correct[k].mean()) if users.size else float("nan")
        if with_auc:
            out[f"auc_{k}"] = _coin_auc(heads, *pairs[k], every)
    for side in ("a", "b"):
        out[f"gain_{side}"] = out[f"accuracy_{side}"] - out[f"accuracy_{side}_base"]
        if with_auc:
            out[f"auc_gain_{side}"] = out[f"auc_{side}"] - out[f"auc_{side}_base"]
    out.update(_user_bootstrap(users, gains, names, n_boot=n_boot, seed=seed, level=level))
    return out


# ---------------------------------------------------------------- listwise

Tie = Literal["mean", "optimistic", "pessimistic"]


def rank_of_positive(scores: Array, positive_index: int, tie: Tie = "mean") -> float:
    """1-based rank of the positive among N candidate scores, higher score = better.

    With h candidates scoring higher than the positive and t others scoring the same:
    "mean" gives 1 + h + t/2, the expected rank when ties are broken uniformly at random;
    "optimistic" gives 1 + h and "pessimistic" 1 + h + t. Raises ValueError on a NaN score: a
    scorer that cannot score a candidate should say so rather than have it ranked silently.
    """
    scores = np.asarray(scores, float)
    if np.isnan(scores).any():
        raise ValueError("NaN in candidate scores")
    higher = int(np.sum(scores > scores[positive_index]))
    ties = ties_with_positive(scores, positive_index)
    offsets = {"mean": ties / 2, "optimistic": 0, "pessimistic": ties}
    if tie not in offsets:
        raise ValueError(f"tie must be one of {list(offsets)}, got {tie!r}")
    return 1 + higher + offsets[tie]


def ties_with_positive(scores: Array, positive_index: int) -> int:
    """How many other candidates score exactly the positive's score."""
    scores = np.asarray(scores, float)
    return int(np.sum(scores == scores[positive_index])) - 1


def _user_gains(gain: Callable[[Array], Array], ranks: Array, ties: Array | None) -> Array:
    """[users] gain(rank) of each user, or its expectation over the tied positions."""
    ranks = np.asarray(ranks, float)
    if ties is None or ranks.size == 0:
        return np.asarray(gain(ranks), float)
    ties = np.asarray(ties, float)
    first, last = ranks - ties / 2, ranks + ties / 2
    if (first < 1).any() or not np.allclose(first, np.round(first)):
        raise ValueError("with ties, ranks must be expected ranks: rank_of_positive(tie='mean')")
    first, last = np.round(first).astype(int), np.round(last).astype(int)
    cumulative = np.r_[0.0, np.cumsum(gain(np.arange(1, last.max() + 1, dtype=float)))]
    return (cumulative[last] - cumulative[first - 1]) / (ties + 1)


def _expected_gain(gain: Callable[[Array], Array], ranks: Array, ties: Array | None) -> float:
    """Mean over users of `_user_gains`; NaN for no users or a NaN rank."""
    ranks = np.asarray(ranks, float)
    if ranks.size == 0 or np.isnan(ranks).any():
        return float("nan")
    return float(np.mean(_user_gains(gain, ranks, ties)))


def user_hits(ranks: Array, k: int, ties: Array | None = None) -> Array:
    """[users] each user's term of `hit_ratio_at_k` (expected over tie-breaks when `ties` is
    given): what a paired test over users compares. NaN ranks raise ValueError."""
    return _user_gains(lambda r: (r <= k).astype(float), _finite(ranks), ties)


def user_ndcg(ranks: Array, k: int, ties: Array | None = None) -> Array:
    """[users] each user's term of `ndcg_at_k`, 1[rank <= k] / log2(rank + 1) (expected over
    tie-breaks when `ties` is given). NaN ranks raise ValueError."""
    return _user_gains(lambda r: (r <= k) / np.log2(r + 1), _finite(ranks), ties)


def _finite(ranks: Array) -> Array:
    ranks = np.asarray(ranks, float)
    if np.isnan(ranks).any():
        raise ValueError("NaN in ranks")
    return ranks


def hit_ratio_at_k(ranks: Array, k: int, ties: Array | None = None) -> float:
    """HR@k: mean over users of 1[rank <= k] (one positive per user, so also recall@k).

    `ranks[u]` is the 1-based rank of user u's positive among their candidates. Without `ties`
    the ranks are used as given. With `ties[u]`, the number of candidates scored equal to the
    positive, the ranks must be expected ranks (`rank_of_positive(tie="mean")`): the positive's
    rank is then taken as uniform over the ties+1 positions centred on ranks[u], and the metric
    is the expectation, i.e. the average over all random tie-breaks. (Plugging the expected rank
    into 1[rank <= k] instead would be biased: 20 tied candidates give rank 10.5, HR@1 = 0, while
    random tie-breaking gives 1/20.) NaN for no users; a NaN rank makes the result NaN.
    """
    return _expected_gain(lambda r: (r <= k).astype(float), ranks, ties)


def ndcg_at_k(ranks: Array, k: int, ties: Array | None = None) -> float:
    """NDCG@k with one relevant item: mean over users of 1[rank <= k] / log2(rank + 1) (the
    ideal DCG is 1/log2(2) = 1). `ranks`, `ties` and NaN as in `hit_ratio_at_k`."""
    return _expected_gain(lambda r: (r <= k) / np.log2(r + 1), ranks, ties)


def mrr(ranks: Array, ties: Array | None = None) -> float:
    """MRR: mean over users of 1 / rank. `ranks`, `ties` and NaN as in `hit_ratio_at_k`."""
    return _expected_gain(lambda r: 1.0 / r, ranks, ties)


def listwise_report(
    ranks: Array,
    ties: Array | None = None,
    *,
    hr_ks: tuple[int, ...] = (1, 5),
    ndcg_ks: tuple[int, ...] = (5, 10),
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, float]:
    """HR@k, NDCG@k, MRR and the mean rank, each with its 95% bootstrap CI (users resampled with
    their ties), as one flat dict (JSON-ready). `ranks` and `ties` as in `hit_ratio_at_k`."""
    arrays = [np.asarray(ranks, float)]
    if ties is not None:
        arrays.append(np.asarray(ties, float))

    def with_ties(fn: Callable[[Array, Array | None], float]) -> Callable[..., float]:
        # bootstrap_ci passes (ranks,) or (ranks, ties), resampled together
        return lambda *a: fn(a[0], a[1] if len(a) > 1 else None)

    metrics: dict[str, Callable[..., float]] = {}
    for k in hr_ks:
        metrics[f"hr@{k}"] = with_ties(lambda r, t, k=k: hit_ratio_at_k(r, k, t))
    for k in ndcg_ks:
        metrics[f"ndcg@{k}"] = with_ties(lambda r, t, k=k: ndcg_at_k(r, k, t))
    metrics["mrr"] = with_ties(mrr)
    metrics["mean_rank"] = with_ties(lambda r, t: float(np.mean(r)) if r.size else float("nan"))
    out: dict[str, float] = {"users": int(arrays[0].size)}
    for name, fn in metrics.items():
        out[name] = fn(*arrays)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = bootstrap_ci(
            fn, *arrays, n_boot=n_boot, seed=seed
        )
    return out


def paired_user_test(
    values_a: Array, values_b: Array, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Two rankers on the same users: one per-user metric (e.g. `user_ndcg`) compared.

    `difference` = mean(A) - mean(B); its CI is the percentile bootstrap over users, each
    resample taking both values of a user together (seeded). `p_value` is the two-sided
    Wilcoxon signed-rank test of the per-user differences (scipy; users where A and B are equal
    are dropped, 'wilcox', as in the sign test: two rankers that both miss a user's positive say
    nothing about which is better); 1.0 when no user differs. `a_better` / `b_better` count the
    users where A's / B's value is the higher. NaN means and CI for no users. ValueError when the
    shapes differ."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(values_a, float), np.asarray(values_b, float)
    if a.shape != b.shape:
        raise ValueError(f"values_a has shape {a.shape}, values_b {b.shape}")
    nan = float("nan")
    d = a - b
    low, high = bootstrap_ci(lambda x: float(np.mean(x)), d, n_boot=n_boot, seed=seed, level=level)
    p = float(wilcoxon(d, zero_method="wilcox").pvalue) if np.any(d != 0) else 1.0
    return {
        "users": int(a.size),
        "mean_a": float(a.mean()) if a.size else nan,
        "mean_b": float(b.mean()) if b.size else nan,
        "difference": float(d.mean()) if a.size else nan,
        "difference_ci_low": low,
        "difference_ci_high": high,
        "a_better": int(np.sum(d > 0)),
        "b_better": int(np.sum(d < 0)),
        "p_value": p,
    }
