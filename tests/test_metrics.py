import math

import numpy as np
import pytest

from dmporec.metrics import (
    bootstrap_ci,
    coin_flip_auc,
    first_listed_rate,
    grouped_auc,
    hit_ratio_at_k,
    listwise_report,
    mcnemar_exact,
    mrr,
    ndcg_at_k,
    pair_correct,
    paired_test,
    paired_user_test,
    pairwise_accuracy,
    pairwise_report,
    rank_of_positive,
    stable_auc,
    ties_with_positive,
    user_hits,
    user_ndcg,
)

CHOSEN = np.array([-1.0, -2.0, -3.0, -4.0])
REJECTED = np.array([-2.0, -1.0, -5.0, -4.0])  # wins, loses, wins, tie


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_accuracy(CHOSEN, REJECTED) == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert math.isnan(pairwise_accuracy([], []))


def test_stable_auc_hand_computed():
    # 16 (chosen, rejected) comparisons, rejected = {-2, -1, -5, -4}: chosen -1 beats 3, ties 1 -> 3.5;
    # -2 beats 2, ties 1 -> 2.5; -3 beats 2 -> 2; -4 beats 1, ties 1 -> 1.5. Total 9.5 / 16.
    assert stable_auc(CHOSEN, REJECTED) == pytest.approx(9.5 / 16)


def test_coin_flip_auc_is_seeded_and_perfect_when_separable():
    c, r = np.zeros(50), -np.ones(50)
    assert coin_flip_auc(c, r, seed=3) == 1.0
    x, y = np.random.default_rng(0).normal(size=(2, 200))
    assert coin_flip_auc(x, y, seed=1) == coin_flip_auc(x, y, seed=1)
    assert math.isnan(coin_flip_auc([1.0], [0.0]))


def test_first_listed_rate():
    # model prefers positive in pairs 0 and 2; positive listed first in pairs 0 and 1
    assert first_listed_rate(CHOSEN, REJECTED, [True, True, False, False]) == pytest.approx(0.5)
    always_first = first_listed_rate(np.array([1.0, -1.0]), np.array([0.0, 0.0]), [True, False])
    assert always_first == 1.0


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(0)
    c, r = rng.normal(0.5, 1, 400), rng.normal(0, 1, 400)
    lo, hi = bootstrap_ci(pairwise_accuracy, c, r, n_boot=300)
    assert lo < pairwise_accuracy(c, r) < hi and hi - lo < 0.15


def test_report_has_everything():
    rep = pairwise_report(CHOSEN, REJECTED, [True, False, True, False], n_boot=50)
    for key in (
        "accuracy",
        "auc",
        "auc_stable",
        "accuracy_ci_low",
        "first_listed_rate",
        "accuracy_positive_listed_first",
        "accuracy_positive_listed_second",
    ):
        assert key in rep
    assert rep["pairs"] == 4


def test_report_auc_uses_fixed_coins_and_matches_coin_flip_auc():
    rng = np.random.default_rng(2)
    c, r = rng.normal(0.3, 1, 300), rng.normal(0, 1, 300)
    rep = pairwise_report(c, r, seed=5, n_boot=200)
    assert rep["auc"] == coin_flip_auc(c, r, seed=5)
    assert rep["auc_ci_low"] <= rep["auc"] <= rep["auc_ci_high"]
    assert rep["accuracy_ci_low"] <= rep["accuracy"] <= rep["accuracy_ci_high"]


# ---------------------------------------------------------------- per user, paired


def test_grouped_auc_weighs_users_equally():
    # user a: win, loss, tie -> 1.5 / 3 = 0.5; user b: win -> 1. Mean over users 0.75, while the
    # pooled accuracy is (1 + 0 + 0.5 + 1) / 4 = 0.625.
    users = ["a", "a", "a", "b"]
    chosen, rejected = [2.0, 0.0, 1.0, 5.0], [1.0, 1.0, 1.0, 4.0]
    assert grouped_auc(users, chosen, rejected) == pytest.approx(0.75)
    assert pairwise_accuracy(chosen, rejected) == pytest.approx(0.625)


def test_grouped_auc_edge_cases():
    assert math.isnan(grouped_auc([], [], []))
    # one pair per user: the same as accuracy; a NaN score loses its pair
    assert grouped_auc([1, 2, 3, 4], CHOSEN, REJECTED) == pairwise_accuracy(CHOSEN, REJECTED)
    assert grouped_auc(["u", "v"], [np.nan, 1.0], [0.0, 0.0]) == 0.5


def test_mcnemar_exact_hand_computed():
    # 9 vs 1 discordant: 2 * P[Bin(10, 1/2) <= 1] = 2 * (1 + 10) / 1024
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(1, 9) == mcnemar_exact(9, 1)
    assert mcnemar_exact(3, 3) == 1.0  # 2 * 42/64 > 1, capped
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_test_hand_computed():
    a = pair_correct([2.0, 2.0, 2.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0])  # 1, 1, 1, 0, 0.5
    b = np.array([0.0, 0.0, 1.0, 0.0, 0.0])
    res = paired_test(a, b, n_boot=200)
    assert res["a_better"] == 3 and res["b_better"] == 0  # the tie beats a wrong answer
    assert res["p_value"] == pytest.approx(2 / 8)
    assert res["accuracy_a"] == pytest.approx(3.5 / 5) and res["accuracy_b"] == pytest.approx(0.2)
    assert res["difference"] == pytest.approx(0.5)
    # per-pair differences are all >= 0, so every resample's mean is too
    assert 0 <= res["difference_ci_low"] <= 0.5 <= res["difference_ci_high"] <= 1
    assert paired_test(a, b, n_boot=200) == res  # seeded


def test_paired_test_edge_cases():
    same = paired_test([1, 0, 1], [1, 0, 1], n_boot=50)
    assert same["p_value"] == 1.0 and same["difference"] == 0.0
    empty = paired_test([], [], n_boot=50)
    assert math.isnan(empty["difference"]) and math.isnan(empty["difference_ci_low"])
    with pytest.raises(ValueError):
        paired_test([1, 0], [1])


# ---------------------------------------------------------------- listwise


def test_rank_of_positive_ties():
    scores = [0.9, 0.5, 0.5, 0.1, 0.5]  # positive at 1: one higher, two tied
    assert rank_of_positive(scores, 1) == 3.0  # 1 + 1 + 2/2
    assert rank_of_positive(scores, 1, tie="optimistic") == 2
    assert rank_of_positive(scores, 1, tie="pessimistic") == 4
    assert ties_with_positive(scores, 1) == 2
    assert rank_of_positive(scores, 0) == 1 and rank_of_positive(scores, 3) == 5
    with pytest.raises(ValueError):
        rank_of_positive([0.1, np.nan], 0)
    with pytest.raises(ValueError):
        rank_of_positive(scores, 1, tie="random")  # type: ignore[arg-type]


def test_listwise_metrics_hand_computed():
    ranks = [1, 3, 11]
    assert hit_ratio_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert hit_ratio_at_k(ranks, 5) == pytest.approx(2 / 3)
    # NDCG@5: (1/log2(2) + 1/log2(4) + 0) / 3 = (1 + 0.5) / 3; rank 11 misses @10 too
    assert ndcg_at_k(ranks, 5) == pytest.approx(0.5)
    assert ndcg_at_k(ranks, 10) == pytest.approx(0.5)
    assert mrr(ranks) == pytest.approx((1 + 1 / 3 + 1 / 11) / 3)


def test_listwise_metrics_average_over_tie_breaks():
    # expected rank 2.5 with one tie: the positive lands at 2 or 3, each with probability 1/2
    assert hit_ratio_at_k([2.5], 1, ties=[1]) == 0.0
    assert hit_ratio_at_k([2.5], 2, ties=[1]) == pytest.approx(0.5)
    assert hit_ratio_at_k([2.5], 3, ties=[1]) == 1.0
    assert mrr([2.5], ties=[1]) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert ndcg_at_k([2.5], 2, ties=[1]) == pytest.approx(1 / math.log2(3) / 2)
    # all 20 candidates tied: a random pick, HR@1 = 1/20 (plugging in rank 10.5 would give 0)
    assert hit_ratio_at_k([10.5], 1, ties=[19]) == pytest.approx(1 / 20)
    assert mrr([10.5], ties=[19]) == pytest.approx(sum(1 / r for r in range(1, 21)) / 20)
    # zero ties is the same as no ties; ties must come with expected ranks
    assert mrr([1, 3], ties=[0, 0]) == mrr([1, 3])
    with pytest.raises(ValueError):
        mrr([2.0], ties=[1])


def test_listwise_metrics_edge_cases():
    assert math.isnan(hit_ratio_at_k([], 5)) and math.isnan(mrr([], ties=[]))
    assert math.isnan(ndcg_at_k([1.0, np.nan], 5))
    assert math.isnan(mrr([np.nan], ties=[0]))


def test_listwise_report():
    rng = np.random.default_rng(0)
    ranks = rng.integers(1, 21, 200).astype(float)
    rep = listwise_report(ranks, np.zeros(200), n_boot=100)
    assert rep["users"] == 200 and rep["hr@1"] == hit_ratio_at_k(ranks, 1)
    for key in ("hr@1", "hr@5", "ndcg@5", "ndcg@10", "mrr", "mean_rank"):
        assert rep[f"{key}_ci_low"] <= rep[key] <= rep[f"{key}_ci_high"]
    assert listwise_report(ranks, n_boot=100) == pytest.approx(rep)  # ties=None: as given


def test_paired_auc_test_pairs_the_coins_and_resamples_users():
    """A model that separates every pair against one at chance: the AUCs are the unpaired ones
    (the same coins for both), the difference is clearly positive; a model against itself
    differs by exactly 0 with p = 1. The rank-sum AUC equals sklearn's, ties included."""
    from sklearn.metrics import roc_auc_score

    from dmporec.metrics import _auc, coin_flip_auc, paired_auc_test, stable_auc

    rng = np.random.default_rng(0)
    n = 200
    users = np.repeat(np.arange(n // 2), 2)  # two pairs per user, resampled together
    good_c, good_r = 1 + rng.random(n), rng.random(n)
    flat_c, flat_r = rng.random(n), rng.random(n)
    t = paired_auc_test(users, good_c, good_r, flat_c, flat_r, n_boot=200, seed=3)
    assert t["auc_a"] == coin_flip_auc(good_c, good_r, seed=3) == 1.0
    assert t["auc_b"] == coin_flip_auc(flat_c, flat_r, seed=3)
    assert t["auc_stable_b"] == stable_auc(flat_c, flat_r)
    assert t["auc_difference"] > 0.3 and t["auc_difference_ci_low"] > 0.2
    assert t["auc_p_value"] == pytest.approx(2 / 201) and t["pairs"] == n
    same = paired_auc_test(users, flat_c, flat_r, flat_c, flat_r, n_boot=50)
    assert same["auc_difference"] == 0 and same["auc_p_value"] == 1.0
    labels, scores = rng.random(60) < 0.4, rng.integers(0, 4, 60).astype(float)
    assert _auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    with pytest.raises(ValueError, match="same length"):
        paired_auc_test(users[:-1], good_c, good_r, flat_c, flat_r)


def test_gain_difference_test_compares_gains_over_each_base():
    """A trained model that separates every pair over a base at chance, against one that learnt
    nothing (it is its base): A's gain is the larger, clearly; the same two gains against each
    other differ by exactly 0 (p = 1); with one shared base the difference of gains is the
    difference of the two trained models (paired_auc_test's, up to rounding)."""
    from dmporec.metrics import gain_difference_test, pair_correct, paired_auc_test, paired_test

    rng = np.random.default_rng(1)
    n = 300
    users = np.repeat(np.arange(n // 3), 3)
    good = (1 + rng.random(n), rng.random(n))
    base_a = (rng.random(n), rng.random(n))
    flat = (rng.random(n), rng.random(n))
    t = gain_difference_test(
        users, {"a": good, "a_base": base_a, "b": flat, "b_base": flat}, n_boot=200, seed=2
    )
    assert t["accuracy_a"] == 1.0 and t["gain_b"] == 0 and t["auc_gain_b"] == 0
    assert t["gain_a"] == pytest.approx(1 - pair_correct(*base_a).mean())
    assert t["gain_difference"] == pytest.approx(t["gain_a"] - t["gain_b"])
    assert t["gain_difference_ci_low"] > 0.3 and t["gain_p_value"] < 0.02
    assert t["auc_gain_difference"] > 0.3 and t["auc_gain_p_value"] < 0.02
    same = gain_difference_test(
        users, {"a": good, "a_base": base_a, "b": good, "b_base": base_a}, n_boot=50
    )
    assert same["gain_difference"] == 0 and same["gain_p_value"] == 1.0
    one_base = gain_difference_test(
        users, {"a": good, "a_base": flat, "b": base_a, "b_base": flat}, n_boot=200, seed=2
    )
    direct = paired_auc_test(users, *good, *base_a, n_boot=200, seed=2)
    assert one_base["auc_gain_difference"] == pytest.approx(direct["auc_difference"])
    for end in ("ci_low", "ci_high"):
        assert one_base[f"auc_gain_difference_{end}"] == pytest.approx(
            direct[f"auc_difference_{end}"]
        )
    acc = paired_test(pair_correct(*good), pair_correct(*base_a))
    assert one_base["gain_difference"] == pytest.approx(acc["difference"])
    # A model that kept only its per-pair correctness (an older row): accuracy alone, the same.
    kept = {"a": good, "a_base": base_a, "b": flat}
    older = gain_difference_test(users, kept, {"b_base": pair_correct(*flat)}, n_boot=200, seed=2)
    assert {k: older[k] for k in older if "auc" not in k} == {k: t[k] for k in t if "auc" not in k}
    assert not any("auc" in k for k in older)
    with pytest.raises(ValueError, match="a_base"):
        gain_difference_test(users, {"a": good, "b": flat, "b_base": flat})
    with pytest.raises(ValueError, match="same length"):
        gain_difference_test(users[:-1], {"a": good, "a_base": base_a, "b": flat, "b_base": flat})


def test_per_user_hits_and_ndcg_are_the_terms_of_the_means():
    ranks, ties = [1.0, 3.0, 11.0, 2.5], [0, 0, 0, 1]
    # NDCG@10 by hand: 1/log2(2), 1/log2(4), rank 11 misses, ranks 2 or 3 half each
    expected = [1.0, 0.5, 0.0, (1 / math.log2(3) + 0.5) / 2]
    assert user_ndcg(ranks, 10, ties) == pytest.approx(expected)
    assert user_hits(ranks, 2, ties) == pytest.approx([1, 0, 0, 0.5])
    assert user_ndcg(ranks, 10, ties).mean() == pytest.approx(ndcg_at_k(ranks, 10, ties))
    assert user_hits(ranks, 2, ties).mean() == pytest.approx(hit_ratio_at_k(ranks, 2, ties))
    assert user_ndcg([1, 3], 10) == pytest.approx([1.0, 0.5])  # no ties: ranks as given
    assert user_ndcg([], 10).shape == (0,)
    with pytest.raises(ValueError, match="NaN"):
        user_hits([1.0, np.nan], 10)


def test_paired_user_test_hand_computed():
    """A beats B on users 0-3 by 0.5 each, they tie on user 4 (both 0: left out), B wins on
    user 5 by 0.25: Wilcoxon over the 5 non-zero differences, ranks 2.5 (x4, A) and 1 (B):
    W = min(10, 1) = 1, exact two-sided p = 2 * P[W <= 1] = 2 * 2/32 = 0.125."""
    a = np.array([1.0, 1.0, 0.5, 0.5, 0.0, 0.0])
    b = np.array([0.5, 0.5, 0.0, 0.0, 0.0, 0.25])
    t = paired_user_test(a, b, n_boot=200)
    assert t["users"] == 6 and (t["a_better"], t["b_better"]) == (4, 1)
    assert t["mean_a"] == pytest.approx(0.5) and t["mean_b"] == pytest.approx(1.25 / 6)
    assert t["difference"] == pytest.approx((4 * 0.5 - 0.25) / 6)
    assert t["difference_ci_low"] <= t["difference"] <= t["difference_ci_high"]
    assert t["p_value"] == pytest.approx(0.125)
    same = paired_user_test(a, a, n_boot=50)
    assert same["p_value"] == 1.0 and same["difference"] == 0.0
    assert same["difference_ci_low"] == same["difference_ci_high"] == 0.0
    assert paired_user_test(a, b, n_boot=200) == t  # seeded
    empty = paired_user_test([], [], n_boot=10)
    assert empty["users"] == 0 and math.isnan(empty["difference"]) and empty["p_value"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        paired_user_test(a, b[:3])
