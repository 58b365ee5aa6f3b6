"""Rank N candidates for one user history with the pairwise model: round robin, both listing orders.

The model was trained on one question: "rank these two candidates". To rank a list we ask it
about every unordered pair {a, b}, once in each listing order: the packaged small model ranks
the first-listed candidate first 82-95% of the time, and asking both ways cancels the position. For one listing order (a listed first, b second):

    P(a before b) = sigmoid( logp(" <Title:a> ,  <Title:b> ") - logp(" <Title:b> ,  <Title:a> ") )

with logp the summed answer log-prob, and P(b before a) = 1 - P(a before b). A candidate's score
is the mean, over its N-1 opponents and both listing orders, of its probability of being ranked
first. So scores lie in [0, 1]; for N >= 2 they sum to N/2 (each of the N(N-1) ordered
prompts hands out exactly 1 between its two candidates, and scores divide by 2(N-1)); a
candidate that surely beats every opponent scores 1; a model with pure position bias gives
every candidate 0.5; and the candidates' input order does not matter (every pair is asked in
both orders anyway). A lone candidate scores 1.0 without a forward pass.

Cost: N(N-1) prompts and 2N(N-1) answers per request (3 candidates: 6 prompts; 20: 380).
With the shared layout all prompts of a request hang off the history as one scoring.Group
(prefix = chat header, role line, history; one Branch per (pair, order): the line naming the
two candidates, then its two answers), so the history is encoded once and each pair adds only
its ~30-token pair line and two answers. A packed row's attention is quadratic in its length,
so a request whose pair lines and answers come to more than `max_group_tokens` is split into
several groups that each repeat the history (history tokens x number of groups, instead of x
N(N-1) in the naive layout; the history itself does not count, or a history over the limit
would put each pair in a group of its own: 870 rows for 30 candidates). Where those repeats add
more than a call of its own costs (SOLO_TOKENS), the request is scored in score_groups calls of
its own (`scoring_calls`): every row of such a call starts with its history, which score_groups
encodes once as the call's stem for the groups to attend to. Beside another user's rows the
stem shrinks to the chat header they share (issue #37: a 500-title user beside a 4-title one
cost 10.6x the tokens of the two alone; four served reranks of 13-15 trees each took 24.0 s
together, 20.4 s one at a time). The other requests share calls.

A subset of the pairs goes through the same machinery (`pair_answers` with the pairs to ask):
the pivot rerank of dmporec.rerank asks only the pairs holding one of P pivots (`pivot_pairs`:
2P(N-1) - P(P-1) prompts) and reads them as log-prob margins (`margin_matrix`, `pivot_scores`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dmporec.collate import GroupEncoder, split_pairs
from dmporec.prompt_bound import PromptBound, longest_sequence
from dmporec.prompts import render_answer, render_instruction
from dmporec.records import DataError
from dmporec.scoring import Branch, Group, Layout, Tokens
from dmporec.scoring.forward import score_groups
from dmporec.wording import WORDINGS, Wording


@dataclass(frozen=True)
class RankRequest:
    """One ranking question: a user's history and the candidates to order (titles as the model
    reads them, i.e. already normalized)."""

    history: tuple[str, ...]
    candidates: tuple[str, ...]
    wording: Wording = WORDINGS["movies"]


def check_request(
    request: RankRequest,
    *,
    file: str | os.PathLike | None = None,
    record: int | str | None = None,
) -> RankRequest:
    """Raise DataError (naming the file and record if given, and the field) unless the request
    can be ranked: non-empty titles, at least one of each, distinct candidates."""

    def fail(message: str, name: str) -> DataError:
        return DataError(message, file=file, record=record, field=name)

    for name, titles in (("history", request.history), ("candidates", request.candidates)):
        if not titles:
            raise fail("needs at least one title", name)
        for i, title in enumerate(titles):
            if not isinstance(title, str) or not title.strip():
                raise fail(f"title {i} is empty", name)
    seen: dict[str, int] = {}
    for i, title in enumerate(request.candidates):
        if title in seen:
            raise fail(
                f"duplicate candidate {title!r} (positions {seen[title]} and {i})", "candidates"
            )
        seen[title] = i
    return request


def check_unseen(
    request: RankRequest,
    *,
    file: str | os.PathLike | None = None,
    record: int | str | None = None,
) -> RankRequest:
    """Raise DataError (field 'candidates') when a candidate is a title of the history (both as
    cleaned): the model never learned to rank a seen item (training removes a positive from its
    own history), and would rank it anyway. Give it the whole history, before any bound cuts it."""
    seen = {title: i for i, title in enumerate(request.history)}
    for title in request.candidates:
        if title in seen:
            raise DataError(
                f"candidate {title!r} is already in the history (history title {seen[title]}); "
                "rank only titles the user has not seen",
                file=file,
                record=record,
                field="candidates",
            )
    return request


class PairEncoder(GroupEncoder):
    """Tokenizes ranking requests into scoring Groups with GroupEncoder's cached tokenization:
    each text segment is tokenized on its own and the pieces are concatenated."""

    def branch(self, request: RankRequest, first: str, second: str) -> Branch:
        """The pair line with `first` listed first; answers (first ranked first, second first)."""
        pair = render_instruction(
            list(request.history), first, second, request.wording, tag=self.tag
        ).pair
        return Branch(
            context=self._encode(pair + self.chat.suffix),
            answers=(
                self._encode(render_answer(first, second) + self.chat.answer_end),
                self._encode(render_answer(second, first) + self.chat.answer_end),
            ),
        )

    def prefix(self, request: RankRequest) -> Tokens:
        # The shared part does not depend on the candidates; any pair renders it.
        shared = render_instruction(
            list(request.history), "", "", request.wording, tag=self.tag
        ).shared
        return self._encode(self.chat.prefix + shared)

    def bounded(
        self, request: RankRequest, bound: PromptBound, *, file: Any = None, record: Any = None
    ) -> RankRequest:
        """`request` with its history cut to what `bound` allows (DataError when refused): the
        longest of its prompts pairs the two candidates with the most tokens."""
        a, b = sorted(request.candidates, key=lambda t: len(self._encode(t)))[-2:] * (
            2 if len(request.candidates) == 1 else 1
        )

        def tokens(cut: RankRequest) -> int:
            return longest_sequence(Group(self.prefix(cut), (self.branch(cut, a, b),)))

        return bound.cut(request, tokens, file=file, record=record)

    def groups(
        self,
        request: RankRequest,
        max_group_tokens: int,
        pairs: Sequence[tuple[int, int]] | None = None,
    ) -> list[Group]:
        """Groups holding the request's ordered `pairs` (candidate indices, listed first and
        second; every ordered pair, `ordered_pairs`, by default) in that order, each with at
        most `max_group_tokens` tokens after the history (at least one pair)."""
        prefix = self.prefix(request)
        groups, branches, size = [], [], 0
        pairs = ordered_pairs(len(request.candidates)) if pairs is None else pairs
        for i, j in pairs:
            branch = self.branch(request, request.candidates[i], request.candidates[j])
            cost = len(branch.context) + sum(map(len, branch.answers))
            if branches and size + cost > max_group_tokens:
                groups.append(Group(prefix, tuple(branches)))
                branches, size = [], 0
            branches.append(branch)
            size += cost
        if branches:
            groups.append(Group(prefix, tuple(branches)))
        return groups


def ordered_pairs(n: int) -> list[tuple[int, int]]:
    """(listed first, listed second) for every unordered pair, in both orders: n(n-1) pairs."""
    return [order for i, j in itertools.combinations(range(n), 2) for order in ((i, j), (j, i))]


def pivot_pairs(n: int, pivots: int) -> list[tuple[int, int]]:
    """The ordered pairs that compare each of n candidates with each of the first `pivots`, in
    both listing orders, every unordered pair once: P(n-1) - P(P-1)/2 pairs, so 2P(n-1) - P(P-1)
    prompts (n = 20, P = 2: 74 instead of 380). With pivots >= n - 1 they are `ordered_pairs(n)`.

    >>> pivot_pairs(3, 1)
    [(0, 1), (1, 0), (0, 2), (2, 0)]
    """
    return [
        order for p in range(min(pivots, n)) for i in range(p + 1, n) for order in ((p, i), (i, p))
    ]


def margin_matrix(
    n: int,
    pairs: Sequence[tuple[int, int]],
    first_logps: torch.Tensor,
    second_logps: torch.Tensor,
) -> torch.Tensor:
    """[n, n] log-prob margins: m[a, b] = the evidence that a goes before b, summed over the
    listing orders asked (as evaluation scores a test pair in both orders, and the hybrid reads
    it): for each prompt listing (f, s), logp(answer f first) - logp(answer s first) is added to
    m[f, s] and taken from m[s, f]. Antisymmetric; zero where a pair was not asked.

    first_logps[p] / second_logps[p]: summed log-prob of the answer ranking the first-listed /
    second-listed candidate of pairs[p] first."""
    m = torch.zeros(n, n, dtype=torch.float64)
    if not pairs:
        return m
    index = torch.tensor(pairs)
    d = first_logps.double() - second_logps.double()
    m.index_put_((index[:, 0], index[:, 1]), d, accumulate=True)
    m.index_put_((index[:, 1], index[:, 0]), -d, accumulate=True)
    return m


def pivot_scores(margins: torch.Tensor, pivots: int) -> list[float]:
    """Each candidate's mean margin over the first `pivots` candidates (its own margin against
    itself counts 0): differences of these scores read as pair margins. `pivots` = n is the mean
    over every candidate (all pairs asked)."""
    return margins[:, : max(1, pivots)].mean(1).tolist()


def candidate_scores_from_pairs(
    n: int, first_logps: torch.Tensor, second_logps: torch.Tensor
) -> list[float]:
    """Candidate scores from the answers of the `ordered_pairs(n)` prompts.

    first_logps[p] / second_logps[p]: summed log-prob of the answer ranking the first-listed /
    second-listed candidate of prompt p first. Returns each candidate's mean probability of being
    ranked first over its opponents and both listing orders.
    """
    if n == 1:
        return [1.0]
    p_first = torch.sigmoid(first_logps.double() - second_logps.double())
    pairs = torch.tensor(ordered_pairs(n))
    wins = torch.zeros(n, dtype=torch.float64)
    wins.index_add_(0, pairs[:, 0], p_first).index_add_(0, pairs[:, 1], 1 - p_first)
    return (wins / (2 * (n - 1))).tolist()


# A request whose history, repeated in each of its groups, adds more tokens than this is scored
# in calls of its own: what those cost, a stem pass and one more forward pass, at the 64 tokens a
# pass that scoring.trie's micro-batches count (SmolLM2 on 2 CPU cores: ~25 ms a pass, ~1.2 ms
# a token). A threshold of max_batch_tokens (8192) instead: 4 users x 12 candidates (6 trees of
# 2048 tokens each) 48.1 s, 43.3 s with this one.
SOLO_TOKENS = 2 * 64

# Pair lines and answers in one packed prompt tree (`max_group_tokens`) unless a caller says.
GROUP_TOKENS = 2048

# With a progress callback, a request scored alone is cut into calls of at least this many
# times its history's tokens (and max_batch_tokens), so the history that each call encodes
# again adds at most a quarter to the work.
_CALL_HISTORY_FACTOR = 4


def goes_alone(groups: Sequence[Group]) -> bool:
    """Whether a request of these groups is scored in calls of its own: its history, repeated
    in each of them, would add more than SOLO_TOKENS tokens beside other requests."""
    return len(groups) > 1 and (len(groups) - 1) * len(groups[0].prefix) > SOLO_TOKENS


def scoring_calls(
    groups_of: Sequence[Sequence[Group]], max_batch_tokens: int, *, cut: bool = False
) -> list[list[tuple[int, Group]]]:
    """How rank_candidates splits its work into score_groups calls: each call a list of
    (request index, group), each request's groups in order. A request whose history, repeated
    in each of its groups, would add more than SOLO_TOKENS tokens goes alone (see the module
    docstring); the others share the first call. With `cut`, calls are cut where they
    have at least max_batch_tokens tokens (after the history, and at least _CALL_HISTORY_FACTOR
    x the history, for a request alone), so a progress bar can move between them."""

    solo = {i for i, groups in enumerate(groups_of) if goes_alone(groups)}
    shared = [(i, g) for i, groups in enumerate(groups_of) if i not in solo for g in groups]
    calls = ([shared] if shared else []) + [[(i, g) for g in groups_of[i]] for i in sorted(solo)]
    if not cut:
        return calls

    def tokens(group: Group) -> int:  # before the trie shares what the branches have in common
        return len(group.prefix) + sum(
            len(b.context) + sum(map(len, b.answers)) for b in group.branches
        )

    pieces = []
    for call in calls:
        history = len(call[0][1].prefix) if call[0][0] in solo else 0
        budget = max(max_batch_tokens, _CALL_HISTORY_FACTOR * history)
        piece: list[tuple[int, Group]] = []
        size = 0
        for i, group in call:
            piece.append((i, group))
            size += tokens(group) - history
            if size >= budget:
                pieces.append(piece)
                piece, size = [], 0
        if piece:
            pieces.append(piece)
    return pieces


@torch.no_grad()
def pair_answers(
    model: torch.nn.Module,
    encoder: PairEncoder,
    requests: Sequence[RankRequest],
    pairs_of: Sequence[Sequence[tuple[int, int]]],
    *,
    layout: Layout = "shared",
    max_batch_tokens: int = 8192,
    max_group_tokens: int = GROUP_TOKENS,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(first_logps, second_logps) of every request's ordered `pairs_of[r]`, [P] each in pair
    order: the summed log-prob of the answer ranking the first-listed / second-listed candidate
    first. Requests share forward passes unless one has a long history over many groups
    (`scoring_calls`). `layout` and `max_batch_tokens` are passed to scoring.score_groups;
    `max_group_tokens` bounds one packed prompt tree. With `progress`, the work is cut into
    calls of about max_batch_tokens tokens (or more) and `progress(n)` hears after each of the
    prompts it scored."""
    for request in requests:
        check_request(request)
    groups_of = [
        encoder.groups(r, max_group_tokens, pairs) if pairs else []
        for r, pairs in zip(requests, pairs_of, strict=True)
    ]
    answers: list[list[torch.Tensor]] = [[] for _ in requests]
    for call in scoring_calls(groups_of, max_batch_tokens, cut=progress is not None):
        groups = [group for _, group in call]
        logps = score_groups(model, groups, layout=layout, max_batch_tokens=max_batch_tokens)
        for g, (i, _) in enumerate(call):
            answers[i].append(logps.logps[g, logps.mask[g]].float().cpu())
        if progress is not None:
            progress(sum(len(group.branches) for group in groups))
    # Answers are (first-listed first, second-listed first) per branch, in pair order.
    return [split_pairs(torch.cat(rows)) if rows else (torch.empty(0),) * 2 for rows in answers]


@torch.no_grad()
def rank_candidates(
    model: torch.nn.Module,
    encoder: PairEncoder,
    requests: Sequence[RankRequest],
    *,
    layout: Layout = "shared",
    max_batch_tokens: int = 8192,
    max_group_tokens: int = GROUP_TOKENS,
    progress: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Scores of every request's candidates (aligned with `request.candidates`); requests share
    forward passes (the server batches concurrent requests this way) unless one has a long
    history over many groups (`scoring_calls`).

    See the module docstring for the rule and its cost; `pair_answers` for the arguments
    (`progress(n)` hears of N(N-1) prompts per request of N).
    """
    pairs_of = [ordered_pairs(len(r.candidates)) for r in requests]
    answers = pair_answers(
        model,
        encoder,
        requests,
        pairs_of,
        layout=layout,
        max_batch_tokens=max_batch_tokens,
        max_group_tokens=max_group_tokens,
        progress=progress,
    )
    return [
        [1.0] if len(r.candidates) == 1 else candidate_scores_from_pairs(len(r.candidates), *a)
        for r, a in zip(requests, answers, strict=True)
    ]


def top_k(
    candidates: Sequence[str], scores: Sequence[float], k: int | None = None
) -> list[tuple[int, float]]:
    """(candidate index, score) best first; ties keep the input order; the first k if given."""
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])
    return [(i, scores[i]) for i in order[: k or None]]
