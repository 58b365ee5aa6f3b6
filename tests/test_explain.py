"""Grounded explanations (dmporec.explain): the history titles whose removal lowers an item's score
most, by hand on a stub model of known preferences and against one-at-a-time scoring on the tiny
model."""

import math

import pytest
import torch

from dmporec.explain import (
    EXPLAIN_TITLES,
    explain_prompts,
    item_pairs,
    item_score,
    leave_one_out,
)
from dmporec.ranker import Ranker
from dmporec.ranking import RankRequest


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_item_score_by_hand():
    """Item 0 against item 1, asked both ways. Listed first, (first, second) = (-1, -2): P(0
    first) = sigmoid(1). Listed second, (-2, -1): P(1 first) = sigmoid(-1), so P(0 first) =
    1 - sigmoid(-1) = sigmoid(1). Mean: sigmoid(1) = 0.7311."""
    pairs = item_pairs(2, 0)
    assert pairs == [(0, 1), (1, 0)]
    score = item_score(pairs, 0, torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]))
    assert score == pytest.approx(sigmoid(1.0))
    assert item_pairs(3, 2) == [(2, 0), (0, 2), (2, 1), (1, 2)]


class HistoryStub:
    """A ranker whose utility for a candidate is the sum of what each history title lends it
    (`lends[(history title, candidate)]`); the answer ranking a first beats the one ranking b
    first by u(a) - u(b) + 0.7 when a is listed first (a position bias). Records its calls."""

    def __init__(self, lends: dict[tuple[str, str], float]) -> None:
        self.lends, self.calls = lends, []

    def utility(self, history, title) -> float:
        return sum(self.lends.get((h, title), 0.0) for h in history)

    def answers(self, requests, pairs_of, progress=None, **_):
        self.calls.append(len(requests))
        out = []
        for request, pairs in zip(requests, pairs_of, strict=True):
            u = [self.utility(request.history, c) for c in request.candidates]
            d = torch.tensor([u[a] - u[b] + 0.7 for a, b in pairs])
            out.append((-3 + d / 2, -3 - d / 2))
            if progress:
                progress(len(pairs))
        return out


def stub_score(x: float) -> float:
    """The stub's score of an item x utility ahead of its one opponent: listed first it wins
    with sigmoid(x + 0.7), listed second with 1 - sigmoid(-x + 0.7) = sigmoid(x - 0.7)."""
    return (sigmoid(x + 0.7) + sigmoid(x - 0.7)) / 2


def test_the_titles_that_lend_the_item_most_come_first_with_their_drops():
    # Heat lends Casino 2, Up lends it 0.5; Jaws lends the opponent, Babe, 1.
    stub = HistoryStub({("Heat", "Casino"): 2.0, ("Up", "Casino"): 0.5, ("Jaws", "Babe"): 1.0})
    request = RankRequest(("Up", "Heat", "Jaws"), ("Babe", "Casino"))
    heard: list[int] = []
    why = leave_one_out(stub, request, 1, progress=heard.append)
    whole = stub_score(2.5 - 1.0)
    assert why.title == "Casino" and why.versus == ("Babe",)
    assert why.score == pytest.approx(whole)
    assert [(r.title, r.position) for r in why.reasons] == [("Heat", 1), ("Up", 0), ("Jaws", 2)]
    drops = [whole - stub_score(0.5 - 1.0), whole - stub_score(2.0 - 1.0), whole - stub_score(2.5)]
    assert [r.drop for r in why.reasons] == pytest.approx(drops)
    assert drops[2] < 0  # leaving Jaws out takes the opponent's support away: the item gains
    # One call to the scorer for the whole history and the three histories less one title.
    assert stub.calls == [4] and why.prompts == 4 * 2 == sum(heard) == explain_prompts(2, 3)
    assert why.history_titles == why.left_out == 3
    assert why.because() == (
        f"because you watched Heat, Up (score drop {drops[0]:.4f}, {drops[1]:.4f})"
    )
    assert why.cost().startswith("8 prompts, ") and "against Babe" in why.cost()
    assert "newest" not in why.cost()  # every title was left out
    doc = why.to_json()
    assert [r["title"] for r in doc["reasons"]] == ["Heat", "Up", "Jaws"]
    assert doc["because"] == why.because() and doc["prompts"] == 8


def test_a_long_history_is_explained_over_its_newest_titles():
    history = tuple(f"Film {i}" for i in range(EXPLAIN_TITLES + 4))
    stub = HistoryStub({(history[0], "A"): 3.0, (history[-1], "A"): 1.0})
    why = leave_one_out(stub, RankRequest(history, ("A", "B", "C")), 0)
    assert why.left_out == EXPLAIN_TITLES and why.history_titles == EXPLAIN_TITLES + 4
    assert sorted(r.position for r in why.reasons) == list(range(4, EXPLAIN_TITLES + 4))
    # The oldest title lends the most but is not left out; the newest is the one reason.
    assert why.reasons[0].title == history[-1] and why.reasons[0].drop > 0
    assert all(r.drop == pytest.approx(0) for r in why.reasons[1:])
    assert (
        why.because() == f"because you watched {history[-1]} (score drop {why.reasons[0].drop:.4f})"
    )
    assert why.prompts == (EXPLAIN_TITLES + 1) * 2 * 2 and stub.calls == [EXPLAIN_TITLES + 1]
    assert (
        f"without each of {EXPLAIN_TITLES} titles (the newest {EXPLAIN_TITLES} of 14)" in why.cost()
    )
    assert "against 2 others" in why.cost()


def test_edges_a_one_title_history_no_raising_title_and_a_lone_candidate():
    stub = HistoryStub({})
    one = leave_one_out(stub, RankRequest(("Up",), ("A", "B")), 0)
    assert one.reasons == () and one.left_out == 0 and one.prompts == 2
    assert one.because() == "no reasons: a history of one title has nothing to leave out"
    flat = leave_one_out(stub, RankRequest(("Up", "Heat"), ("A", "B")), 0)
    assert flat.because() == "no history title it was tried without raises its score against B"
    with pytest.raises(ValueError, match="at least one opponent"):
        leave_one_out(stub, RankRequest(("Up",), ("A",)), 0)


def test_batched_drops_equal_scoring_one_history_at_a_time_on_the_tiny_model(tiny, tiny_cfg):
    """The grounding: the explanation's score is the item's Ranker score (all pairs of the
    candidates, one request at a time), and each drop is that score minus the score of the same
    request without the title, each computed alone."""
    ranker = Ranker.create(*tiny, tiny_cfg, "tiny")
    request = ranker.request(
        ["Haunted Manor", "Cursed Crypt II", "Galactic Starship", "Sweet Kiss"],
        ["Wicked Asylum", "Quantum Nebula", "Crazy Roommates"],
    )
    forwards: list[int] = []
    hook = tiny[0].register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        why = leave_one_out(ranker, request, 1)
        batched = len(forwards)
        ranker.answers([request], [item_pairs(3, 1)])
    finally:
        hook.remove()
    # The 5 histories and their 20 prompts take the forward passes of one history's 4.
    assert batched == len(forwards) - batched, forwards
    assert why.prompts == 5 * 4 and why.left_out == 4 and len(why.reasons) == 4
    alone = ranker.rank([request])[0][1]
    assert why.score == pytest.approx(alone, abs=1e-5)
    for reason in why.reasons:
        history = request.history[: reason.position] + request.history[reason.position + 1 :]
        without = ranker.rank([RankRequest(history, request.candidates)])[0][1]
        assert reason.drop == pytest.approx(alone - without, abs=1e-5)
        assert reason.title == request.history[reason.position]
    drops = [r.drop for r in why.reasons]
    assert drops == sorted(drops, reverse=True) and any(abs(d) > 1e-4 for d in drops)
