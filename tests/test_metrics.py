import math

import numpy as np
import pytest

from dmporec.metrics import (
    bootstrap_ci,
    coin_flip_auc,
    first_listed_rate,
    pairwise_accuracy,
    pairwise_report,
    stable_auc,
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
