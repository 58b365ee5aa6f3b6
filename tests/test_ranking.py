"""Ranking N candidates with the pairwise model: layouts agree, scores are debiased and sum to N/2."""

import math

import pytest
import torch

from dmporec.prompts import ChatFormat, render_answer, render_instruction
from dmporec.ranking import (
    SOLO_TOKENS,
    PairEncoder,
    RankRequest,
    candidate_scores_from_pairs,
    ordered_pairs,
    rank_candidates,
    top_k,
)
from dmporec.records import DataError
from dmporec.wording import WORDINGS

HISTORY = ("Haunted Manor", "Cursed Crypt II", "Galactic Starship")
CANDIDATES = ("Wicked Asylum", "Sweet Kiss", "Quantum Nebula", "Crazy Roommates")


@pytest.fixture(scope="module")
def enc(tiny):
    tok = tiny[1]
    return PairEncoder(tok, ChatFormat.from_tokenizer(tok))


def test_candidate_scores_from_pairs_by_hand():
    """Two candidates, orders (0, 1) and (1, 0). Listed first wins with p = sigmoid(d):
    order (0, 1): d = 1 -> P(0 first) = s(1); order (1, 0): d = 0 -> P(1 first) = 1/2.
    score 0 = (s(1) + 1/2) / 2, score 1 = (1 - s(1) + 1/2) / 2; they sum to 1 = N/2."""
    s1 = 1 / (1 + math.exp(-1))
    scores = candidate_scores_from_pairs(2, torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0]))
    assert scores == pytest.approx([(s1 + 0.5) / 2, (1 - s1 + 0.5) / 2])
    assert ordered_pairs(3) == [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]


def test_a_pure_position_bias_gives_equal_scores():
    """A model that always ranks the first-listed candidate first says nothing about the items."""
    n = 4
    m = len(ordered_pairs(n))
    assert candidate_scores_from_pairs(n, torch.zeros(m), torch.full((m,), -5.0)) == pytest.approx(
        [0.5] * n
    )


def test_groups_render_the_training_prompt(enc):
    """Prefix + pair line + answer tokens are the same text the training prompts are made of."""
    req = RankRequest(HISTORY, CANDIDATES[:2])
    (group,) = enc.groups(req, max_group_tokens=10_000)
    assert len(group.branches) == 2
    instr = render_instruction(list(HISTORY), CANDIDATES[1], CANDIDATES[0])
    text = enc.tokenizer.decode(list(group.prefix + group.branches[1].context))
    assert text == enc.chat.prefix + instr.text + enc.chat.suffix
    answer = enc.tokenizer.decode(list(group.branches[1].answers[0]))
    assert answer == render_answer(CANDIDATES[1], CANDIDATES[0]) + enc.chat.answer_end


def test_shared_equals_naive_and_scores_sum_to_half_n(tiny, enc):
    model = tiny[0]
    reqs = [
        RankRequest(HISTORY, CANDIDATES),
        RankRequest(HISTORY[:1], CANDIDATES[:3], WORDINGS["games"]),
        RankRequest(HISTORY, CANDIDATES[:1]),
    ]
    shared = rank_candidates(model, enc, reqs, layout="shared")
    naive = rank_candidates(model, enc, reqs, layout="naive")
    for s, n, req in zip(shared, naive, reqs, strict=True):
        assert len(s) == len(req.candidates)
        assert s == pytest.approx(n, abs=1e-4)
        if len(s) > 1:
            assert sum(s) == pytest.approx(len(req.candidates) / 2, abs=1e-9)
        assert all(0 <= x <= 1 for x in s)
    assert shared[2] == [1.0]


def test_splitting_a_request_into_several_groups_changes_nothing(tiny, enc):
    req = RankRequest(HISTORY, CANDIDATES)
    whole = rank_candidates(tiny[0], enc, [req])[0]
    assert len(enc.groups(req, max_group_tokens=1)) == len(ordered_pairs(len(CANDIDATES)))
    split = rank_candidates(tiny[0], enc, [req], max_group_tokens=1)[0]
    assert split == pytest.approx(whole, abs=1e-4)


def test_candidate_order_does_not_change_scores(tiny, enc):
    base = dict(
        zip(
            CANDIDATES,
            rank_candidates(tiny[0], enc, [RankRequest(HISTORY, CANDIDATES)])[0],
            strict=True,
        )
    )
    permuted = (CANDIDATES[2], CANDIDATES[0], CANDIDATES[3], CANDIDATES[1])
    scores = rank_candidates(tiny[0], enc, [RankRequest(HISTORY, permuted)])[0]
    for title, score in zip(permuted, scores, strict=True):
        assert score == pytest.approx(base[title], abs=1e-4)


def test_bad_requests_are_refused(tiny, enc):
    with pytest.raises(
        DataError,
        match=r"field 'candidates': duplicate candidate 'Sweet Kiss' \(positions 0 and 2\)",
    ):
        rank_candidates(tiny[0], enc, [RankRequest(HISTORY, ("Sweet Kiss", "Up", "Sweet Kiss"))])
    with pytest.raises(DataError, match="field 'history': needs at least one title"):
        rank_candidates(tiny[0], enc, [RankRequest((), CANDIDATES)])
    with pytest.raises(DataError, match="field 'candidates': title 1 is empty"):
        rank_candidates(tiny[0], enc, [RankRequest(HISTORY, ("Up", " "))])


def test_top_k_keeps_input_order_on_ties():
    assert top_k(["a", "b", "c"], [0.2, 0.5, 0.5]) == [(1, 0.5), (2, 0.5), (0, 0.2)]
    assert top_k(["a", "b", "c"], [0.2, 0.5, 0.5], 1) == [(1, 0.5)]


def test_a_request_over_several_trees_batched_with_another_costs_what_it_costs_alone(tiny, enc):
    """Beside another user a request's rows lose their shared stem (the history), so a request
    whose history, repeated in each of its prompt trees, adds more than SOLO_TOKENS is scored in
    calls of its own (as `dmporec serve` batches reranks of 13-15 trees each: they took 1.2x
    longer together than one at a time). Cost: tokens through the forward passes."""
    many = RankRequest(tuple(f"Long Movie Title Number {i}" for i in range(12)), CANDIDATES)
    other = RankRequest(HISTORY[:1], CANDIDATES[:3])
    trees = len(enc.groups(many, max_group_tokens=200))
    history = len(enc.prefix(many))
    assert SOLO_TOKENS < (trees - 1) * history < 8192  # under the rule before, it shared a call
    tokens: list[int] = []
    hook = tiny[0].register_forward_pre_hook(
        lambda _m, _a, kw: tokens.append(kw["input_ids"].numel()), with_kwargs=True
    )
    cost, scores = {}, {}
    try:
        for name, requests in (("many", [many]), ("other", [other]), ("both", [many, other])):
            tokens.clear()
            scores[name] = rank_candidates(tiny[0], enc, requests, max_group_tokens=200)
            cost[name] = sum(tokens)
    finally:
        hook.remove()
    assert cost["both"] <= 1.05 * (cost["many"] + cost["other"]), cost
    assert scores["both"][0] == pytest.approx(scores["many"][0], abs=1e-4)
    assert scores["both"][1] == pytest.approx(scores["other"][0], abs=1e-4)
