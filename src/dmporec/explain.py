"""Why a recommended item: the history titles whose removal lowers its score most, from the model's
own scores (leave-one-out over the history, one batched scoring call); on request, generated text.

The item's score is its Ranker score against its opponents (the other candidates of the ranking,
or the items listed below it): the mean, over each opponent and both listing orders, of the
probability that the model ranks it first (ranking.py's rule, asked only of the 2(N-1) ordered
pairs that hold the item; with the other candidates as opponents it is exactly the score `recommend`
and /v1/rank show). A history title's drop is that score with the whole history minus the score
with the title left out: a positive drop means the title raised the item's score. The whole
history and each history less one title go to the scorer as requests of one `Ranker.answers`
call, which packs them into shared forward passes.

Cost: (L + 1) x 2(N-1) prompts for L titles left out and N-1 opponents (3 opponents, 10 titles:
66). L is at most `EXPLAIN_TITLES`, the newest titles of a longer history (the others stay in
every prompt; the answer says how many were left out).

A generated explanation (`explain_instruction`, `Ranker.generate_explanation`) is opt-in: the
adapters were trained on ranking answers only, so the demo's trained SmolLM2 run answers in
their format ('<Title:Stellar Mothership> ,  <Title:Stellar Mothership>'), and the untrained
SmolLM2 writes fluent text not drawn from its scores ("because of its unique blend of
action, adventure, and romance" for a history of space, war and romance titles).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from dmporec.prompts import Tag, history_text, title_tag
from dmporec.wording import WORDINGS, Wording

if TYPE_CHECKING:
    from dmporec.ranker import Ranker
    from dmporec.ranking import RankRequest

# A short answer is all the explanation needs; it also bounds a request's generation time.
EXPLAIN_MAX_NEW_TOKENS = 64
# History titles left out one at a time (the newest): (10 + 1) x 2(N-1) prompts.
EXPLAIN_TITLES = 10
# A top-K list's first item is explained against the items just below it, this many.
EXPLAIN_VERSUS = 3
# Titles the "because you watched ..." sentence names (those with a positive drop).
EXPLAIN_NAMED = 3


@dataclass(frozen=True)
class Reason:
    position: int  # its index in the history the model read, oldest first
    title: str  # as the model read it
    drop: float  # the item's score with the whole history minus without this title


@dataclass(frozen=True)
class Explanation:
    """The reasons for one item: history titles by drop, largest first, and what they cost."""

    title: str
    versus: tuple[str, ...]  # the opponents its score is taken against
    score: float  # with the whole history
    reasons: tuple[Reason, ...]
    history_titles: int  # in the history the model read (after data.max_prompt_tokens)
    left_out: int  # the newest this many were each left out
    prompts: int
    seconds: float

    def because(self, wording: Wording = WORDINGS["movies"], named: int = EXPLAIN_NAMED) -> str:
        """'because you watched A, B (score drop 0.0412, 0.0108)': the titles whose removal lowers
        the score, most first; or why there is none."""
        up = [r for r in self.reasons if r.drop > 0][:named]
        if not self.reasons:
            return "no reasons: a history of one title has nothing to leave out"
        if not up:
            return f"no history title it was tried without raises its score against {self._them()}"
        titles = ", ".join(r.title for r in up)
        drops = ", ".join(f"{r.drop:.4f}" for r in up)
        return f"because you {wording.past} {titles} (score drop {drops})"

    def cost(self) -> str:
        """What the reasons cost and what they cover."""
        text = (
            f"{self.prompts} prompts, {self.seconds:.1f} s: its score against {self._them()} "
            f"with the whole history and without each of {self.left_out} titles"
        )
        if self.left_out < self.history_titles:
            text += f" (the newest {self.left_out} of {self.history_titles})"
        return text

    def describe(self, wording: Wording = WORDINGS["movies"]) -> str:
        """Two lines for a terminal: why the item, then the cost."""
        return f"why {self.title}: {self.because(wording)}\n  ({self.cost()})"

    def _them(self) -> str:
        n = len(self.versus)
        return self.versus[0] if n == 1 else f"{n} others"

    def to_json(self, wording: Wording = WORDINGS["movies"]) -> dict[str, Any]:
        return {
            "title": self.title,
            "because": self.because(wording),
            "versus": list(self.versus),
            "score": round(self.score, 6),
            "reasons": [
                {"title": r.title, "position": r.position, "drop": round(r.drop, 6)}
                for r in self.reasons
            ],
            "history_titles": self.history_titles,
            "left_out": self.left_out,
            "prompts": self.prompts,
            "seconds": round(self.seconds, 3),
        }


def item_pairs(n: int, item: int) -> list[tuple[int, int]]:
    """The ordered pairs (listed first, listed second) holding `item`, against each of the other
    n - 1 candidates in both listing orders: 2(n-1) pairs.

    >>> item_pairs(3, 1)
    [(1, 0), (0, 1), (1, 2), (2, 1)]
    """
    return [order for o in range(n) if o != item for order in ((item, o), (o, item))]


def item_score(
    pairs: Sequence[tuple[int, int]], item: int, first: torch.Tensor, second: torch.Tensor
) -> float:
    """`item`'s mean probability of being ranked first over `pairs` (each holding it):
    sigmoid(first - second) where it is listed first, 1 - that where it is listed second, as
    ranking.candidate_scores_from_pairs counts it. first[p] / second[p]: the summed log-prob of the answer ranking
    the first-listed / second-listed candidate of pairs[p] first."""
    p_first = torch.sigmoid(first.double() - second.double())
    listed_first = torch.tensor([a == item for a, _ in pairs])
    return torch.where(listed_first, p_first, 1 - p_first).mean().item()


def leave_one_out(
    ranker: Ranker,
    request: RankRequest,
    item: int,
    max_titles: int = EXPLAIN_TITLES,
    progress: Callable[[int], None] | None = None,
) -> Explanation:
    """Why `request.candidates[item]`: its score against the other candidates with the whole
    history and with each of the newest `max_titles` history titles left out, all scored in one
    `ranker.answers` call (see the module docstring for the score and the cost). `request` is
    as ranked (cleaned, bounded); a history of one title has no reasons (an empty history is no
    prompt). ValueError without an opponent: a lone candidate has no score to explain."""
    n, history = len(request.candidates), request.history
    if n < 2:
        raise ValueError("an item needs at least one opponent to have a score to explain")
    if max_titles < 1:
        raise ValueError(f"max_titles must be at least 1, got {max_titles}")
    left_out = titles_left_out(len(history), max_titles)
    positions = range(len(history) - left_out, len(history))
    variants = [request] + [
        replace(request, history=history[:p] + history[p + 1 :]) for p in positions
    ]
    pairs = item_pairs(n, item)
    start = time.perf_counter()
    answers = ranker.answers(variants, [pairs] * len(variants), progress)
    seconds = time.perf_counter() - start
    scores = [item_score(pairs, item, first, second) for first, second in answers]
    reasons = [
        Reason(p, history[p], scores[0] - s) for p, s in zip(positions, scores[1:], strict=True)
    ]
    # Largest drop first; a tie puts the newer title first.
    reasons.sort(key=lambda r: (-r.drop, -r.position))
    return Explanation(
        title=request.candidates[item],
        versus=tuple(c for i, c in enumerate(request.candidates) if i != item),
        score=scores[0],
        reasons=tuple(reasons),
        history_titles=len(history),
        left_out=left_out,
        prompts=len(variants) * len(pairs),
        seconds=seconds,
    )


def titles_left_out(history_titles: int, max_titles: int = EXPLAIN_TITLES) -> int:
    """How many history titles `leave_one_out` leaves out one at a time: the newest `max_titles`,
    none of a history of one title (an empty history is no prompt)."""
    return min(max_titles, history_titles) if history_titles > 1 else 0


def explain_prompts(
    n_candidates: int, history_titles: int, max_titles: int = EXPLAIN_TITLES
) -> int:
    """Prompts `leave_one_out` costs for an item among n candidates: (L + 1) x 2(n-1) for the L
    titles left out."""
    return (titles_left_out(history_titles, max_titles) + 1) * 2 * (n_candidates - 1)


def titles_within(n_candidates: int, max_prompts: int) -> int:
    """The most titles to leave out for an item among n candidates so that `leave_one_out` costs
    at most `max_prompts` prompts ((L + 1) x 2(n-1)), and at most EXPLAIN_TITLES; at least 1.

    >>> titles_within(20, 380), titles_within(4, 380)
    (9, 10)
    """
    return max(1, min(EXPLAIN_TITLES, max_prompts // (2 * max(1, n_candidates - 1)) - 1))


def explain_instruction(
    history: Sequence[str],
    title: str,
    wording: Wording = WORDINGS["movies"],
    *,
    tag: Tag = title_tag,
) -> str:
    """The question behind a generated explanation, in the paper's wording up to the history;
    `tag` writes the titles (prompts.render_instruction's).

    >>> explain_instruction(["Heat"], "Up")
    "You are an assistant working on movie recommendations. Here is the user's history of movies they have watched:  <Title:Heat> . In one or two sentences, explain why the user would enjoy watching the movie  <Title:Up> ."
    """
    return (
        history_text(list(history), wording, tag=tag)
        + f". In one or two sentences, explain why the user would enjoy {wording.gerund} the "
        + f"{wording.role} "
        + tag(title)
        + "."
    )
