"""The token trie of a group of prompts, and how its rows are packed (pure Python, no torch).

A `Group` is one user's prompt tree: a prefix, then branches (one per candidate pair), each with
its answers. The "shared" layout encodes the group as its trie of tokens, in segments (maximal
runs of tokens without a fork) laid out depth first in one row; a token's position id is its
depth in the trie, so it has the position it has in the naive row of every answer it lies on.

Worked example: prefix [1 2 3], branch 0 = context [4 5] with answers [6 7] and [8 7], branch 1
= context [9] with answer [6]. The sequences are 1 2 3 4 5 6 7 / 1 2 3 4 5 8 7 / 1 2 3 9 6.

    segment 0: 1 2 3         (positions 0 1 2)   parent -1
    ├─ segment 1: 4 5        (positions 3 4)     parent 0
    │  ├─ segment 2: 6 7     (positions 5 6)     parent 1   answer slots 0, 0
    │  └─ segment 3: 8 7     (positions 5 6)     parent 1   answer slots 1, 1
    └─ segment 4: 9 6        (positions 3 4)     parent 0   6 is answer slot 2

    row ids   1 2 3 4 5 6 7 8 7 9 6
    row pos   0 1 2 3 4 5 6 5 6 3 4
    row seg   0 0 0 1 1 2 2 3 3 4 4

Token 8 (row index 7) is predicted from token 5 (row index 4, the end of its parent segment),
not from the 7 just before it in the row: the block mask (masks.py) lets it see segments 0, 1
and its own only. The "naive" layout is one row per answer (prefix + context + answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Layout = Literal["naive", "shared", "cached"]
LAYOUTS: tuple[Layout, ...] = ("naive", "shared", "cached")
# What a forward pass costs beyond its tokens, in tokens: micro-batches are split only where
# that saves more padding (a few tokens' time on a CPU; ~100 tokens of an 8B model on a GPU).
_FORWARD_COST = 64
Tokens = tuple[int, ...]


@dataclass(frozen=True)
class Branch:
    context: Tokens
    answers: tuple[Tokens, ...]


@dataclass(frozen=True)
class Group:
    prefix: Tokens
    branches: tuple[Branch, ...]

    @property
    def n_answers(self) -> int:
        return sum(len(b.answers) for b in self.branches)

    def tokens(self, layout: Layout) -> int:
        """Tokens a forward pass processes for this group under `layout`."""
        if layout != "naive":
            return sum(len(tokens) for tokens, _, _ in segments(self))
        return sum(
            len(self.prefix) + len(b.context) + len(a) for b in self.branches for a in b.answers
        )


@dataclass
class Row:
    """One packed sequence: tokens, positions, segment ids and the answer targets it holds."""

    ids: list[int]
    pos: list[int]
    seg: list[int]
    parents: list[int]  # parent segment of each segment (-1 for a root)
    targets: list[tuple[int, int, int]]  # (predicting position, target token, answer slot)
    first: int = 0  # tokens in the row's first segment (the prefix "cached" encodes first)


class _Node:
    """A token of the trie: its children and the answer slots it is a target token of."""

    __slots__ = ("children", "slots")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.slots: list[int] = []


def segments(group: Group) -> list[tuple[list[int], list[list[int]], int]]:
    """The group's token trie as segments in depth-first order: (tokens, target slots of each
    token, parent segment index or -1); a segment is a maximal run of tokens without a fork."""
    root = _Node()
    slot = 0
    for branch in group.branches:
        prompt = group.prefix + branch.context
        for answer in branch.answers:
            node = root
            for j, tok in enumerate(prompt + answer):
                node = node.children.setdefault(tok, _Node())
                if j >= len(prompt):
                    node.slots.append(slot)
            slot += 1
    segments: list[tuple[list[int], list[list[int]], int]] = []
    stack = [(tok, child, -1) for tok, child in reversed(root.children.items())]
    while stack:
        tok, node, parent = stack.pop()
        tokens, slots = [tok], [node.slots]
        while len(node.children) == 1:
            ((tok, node),) = node.children.items()
            tokens.append(tok)
            slots.append(node.slots)
        segments.append((tokens, slots, parent))
        seg = len(segments) - 1
        stack.extend((t, c, seg) for t, c in reversed(node.children.items()))
    return segments


def pack_rows(groups: Sequence[Group], layout: Layout, width: int) -> list[Row]:
    """Rows for `layout`; answer m of group g gets slot g * width + m."""
    rows: list[Row] = []
    for g, group in enumerate(groups):
        if layout != "naive":
            row = Row([], [], [], [], [])
            ends: list[int] = []  # row index of each segment's last token
            for seg_id, (tokens, slots, parent) in enumerate(segments(group)):
                row.parents.append(parent)
                start = row.pos[ends[parent]] + 1 if parent >= 0 else 0
                for j, (tok, tok_slots) in enumerate(zip(tokens, slots, strict=True)):
                    pred = len(row.ids) - 1 if j else (ends[parent] if parent >= 0 else None)
                    if tok_slots and pred is None:
                        raise ValueError("an answer needs at least one prompt token before it")
                    row.targets.extend((pred, tok, g * width + s) for s in tok_slots)
                    row.ids.append(tok)
                    row.pos.append(start + j)
                    row.seg.append(seg_id)
                ends.append(len(row.ids) - 1)
            row.first = ends[0] + 1 if ends else 0
            rows.append(row)
        else:
            slot = 0
            for branch in group.branches:
                prompt = group.prefix + branch.context
                for answer in branch.answers:
                    if answer and not prompt:
                        raise ValueError("an answer needs at least one prompt token before it")
                    n = len(prompt)
                    rows.append(
                        Row(
                            list(prompt + answer),
                            list(range(n + len(answer))),
                            [0] * (n + len(answer)),
                            [-1],
                            [(n - 1 + j, tok, g * width + slot) for j, tok in enumerate(answer)],
                        )
                    )
                    slot += 1
    return rows


def length_order(groups: Sequence[Group]) -> list[int]:
    """Indices of `groups`, shortest first: callers that score a long list in chunks (for a
    progress bar) chunk in this order so each chunk pads little, then put results back."""
    return sorted(range(len(groups)), key=lambda i: groups[i].tokens("naive"))


def micro_batches(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Split rows sorted longest first into runs [start, end) of at most `budget` padded tokens
    (rows x the run's longest row; a longer row goes alone) that minimize the padded tokens
    plus _FORWARD_COST per run: a mixed-length batch is split where its padding costs more
    than another forward pass."""
    best = [0] + [float("inf")] * len(lengths)  # best[i]: cost of the first i rows
    start_of = [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        for start in range(end - 1, -1, -1):
            padded = lengths[start] * (end - start)  # the run's longest row is its first
            if start < end - 1 and padded > budget:
                break
            cost = best[start] + padded + _FORWARD_COST
            if cost < best[end]:
                best[end], start_of[end] = cost, start
    runs, end = [], len(lengths)
    while end > 0:
        runs.append((start_of[end], end))
        end = start_of[end]
    return runs[::-1]
