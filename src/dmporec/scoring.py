"""Summed log-probabilities of answers given their prompts, for groups of answers sharing a prompt.

A `Group` is one user's prompt tree: a shared prefix (chat template, role line, history), then
branches (one per candidate pair: the line naming the two candidates and the template's
assistant header), each with its answers (chosen, rejected). `score_groups` returns the summed
log-prob of every answer, shape [B, M] with M = answers per group in branch order.

Two layouts compute the same numbers:
- "naive": one row per answer holding prefix + context + answer, as the peers do
  (LLaMA-Factory, TRL): the prefix is encoded once per answer.
- "shared": one packed row per group: prefix, then each branch's context and answers, with a
  block attention mask (each token sees its ancestors and the earlier tokens of its own
  segment) and per-branch position ids, so every token is encoded once and gradients flow
  through the shared prefix as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

Method = Literal["naive", "shared"]
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

    def tokens(self, method: Method) -> int:
        """Tokens a forward pass processes for this group under `method`."""
        if method == "shared":
            return len(self.prefix) + sum(
                len(b.context) + sum(map(len, b.answers)) for b in self.branches
            )
        return sum(
            len(self.prefix) + len(b.context) + len(a) for b in self.branches for a in b.answers
        )


@dataclass
class AnswerLogProbs:
    """logps[b, m]: summed log-prob of answer m of group b (0 where mask is False)."""

    logps: torch.Tensor  # [B, M] float32
    n_tokens: torch.Tensor  # [B, M] long
    mask: torch.Tensor  # [B, M] bool


@dataclass
class _Row:
    """One packed sequence: tokens, positions, segment ids and the answer targets it holds."""

    ids: list[int]
    pos: list[int]
    seg: list[int]
    parents: list[int]  # parent segment of each segment (-1 for a root)
    targets: list[tuple[int, int, int]]  # (predicting position, target token, answer slot)


def _add_segment(
    row: _Row, tokens: Tokens, parent: int, start_pos: int, last_pos: int | None, slot: int | None
) -> tuple[int, int, int | None]:
    """Append a segment; returns (segment id, next position id, index of its last token).

    `last_pos` is the row index of the last token this segment continues from; when `slot` is
    set, each of the segment's tokens is a target predicted from the token before it.
    """
    seg_id = len(row.parents)
    row.parents.append(parent)
    for j, tok in enumerate(tokens):
        if slot is not None:
            pred = last_pos if j == 0 else len(row.ids) - 1
            if pred is None:
                raise ValueError("an answer needs at least one prompt token before it")
            row.targets.append((pred, tok, slot))
        row.ids.append(tok)
        row.pos.append(start_pos + j)
        row.seg.append(seg_id)
    end = len(row.ids) - 1 if tokens else last_pos
    return seg_id, start_pos + len(tokens), end


def _layout(groups: Sequence[Group], method: Method, width: int) -> list[_Row]:
    """Rows for `method`; answer m of group g gets slot g * width + m."""
    rows: list[_Row] = []
    for g, group in enumerate(groups):
        slot = 0
        if method == "shared":
            row = _Row([], [], [], [], [])
            root, pos0, last0 = _add_segment(row, group.prefix, -1, 0, None, None)
            for branch in group.branches:
                ctx, pos1, last1 = _add_segment(row, branch.context, root, pos0, last0, None)
                for answer in branch.answers:
                    _add_segment(row, answer, ctx, pos1, last1, g * width + slot)
                    slot += 1
            rows.append(row)
        else:
            for branch in group.branches:
                for answer in branch.answers:
                    row = _Row([], [], [], [], [])
                    _, pos, last = _add_segment(
                        row, group.prefix + branch.context, -1, 0, None, None
                    )
                    _add_segment(row, answer, 0, pos, last, g * width + slot)
                    rows.append(row)
                    slot += 1
    return rows


def _block_mask(rows: list[_Row], length: int, device: torch.device) -> torch.Tensor:
    """[R, 1, L, L] bool: query q sees key k iff k <= q and k's segment is q's or an ancestor."""
    masks = []
    for row in rows:
        n_seg = len(row.parents)
        anc = torch.eye(n_seg, dtype=torch.bool)
        for s, p in enumerate(row.parents):  # parents precede children in the layout
            if p >= 0:
                anc[s] |= anc[p]
        seg = torch.tensor(row.seg, dtype=torch.long)
        n = len(row.ids)
        m = torch.zeros(length, length, dtype=torch.bool)
        m[:n, :n] = anc[seg][:, seg] & torch.ones(n, n, dtype=torch.bool).tril()
        idx = torch.arange(n, length)
        m[idx, idx] = True  # padding attends to itself, so no softmax row is empty
        masks.append(m)
    return torch.stack(masks)[:, None].to(device)


def _forward_rows(
    model: torch.nn.Module, rows: list[_Row], method: Method, n_slots: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed target log-probs and token counts per slot for one micro-batch of rows."""
    device = next(model.parameters()).device
    length = max(len(r.ids) for r in rows)
    pad = 0
    ids = torch.tensor([r.ids + [pad] * (length - len(r.ids)) for r in rows], device=device)
    pos = torch.tensor([r.pos + [0] * (length - len(r.pos)) for r in rows], device=device)
    if method == "shared":
        attn = _block_mask(rows, length, device)
        impl = getattr(extract_model_from_parallel(model).config, "_attn_implementation", "sdpa")
        if impl == "eager":
            dtype = next(model.parameters()).dtype
            attn = torch.zeros(attn.shape, dtype=dtype, device=device).masked_fill(
                ~attn, torch.finfo(dtype).min
            )
    else:
        attn = torch.tensor(
            [[1] * len(r.ids) + [0] * (length - len(r.ids)) for r in rows], device=device
        )
    out = model(
        input_ids=ids,
        attention_mask=attn,
        position_ids=pos,
        output_hidden_states=True,
        logits_to_keep=1,
        use_cache=False,
    )
    hidden = out.hidden_states[-1]
    row_idx, pred_idx, tgt, slots = [], [], [], []
    for r, row in enumerate(rows):
        for pred, tok, slot in row.targets:
            row_idx.append(r)
            pred_idx.append(pred)
            tgt.append(tok)
            slots.append(slot)
    logits = _head(model)(
        hidden[torch.tensor(row_idx, device=device), torch.tensor(pred_idx, device=device)]
    )
    logits = _softcap(model, logits.float())
    token_logp = -F.cross_entropy(logits, torch.tensor(tgt, device=device), reduction="none")
    slot_t = torch.tensor(slots, device=device)
    sums = torch.zeros(n_slots, device=device, dtype=torch.float32).index_add(0, slot_t, token_logp)
    counts = torch.zeros(n_slots, device=device, dtype=torch.long).index_add(
        0, slot_t, torch.ones_like(slot_t)
    )
    return sums, counts


def _head(model: torch.nn.Module) -> torch.nn.Module:
    return extract_model_from_parallel(model).get_output_embeddings()


def _softcap(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    cap = getattr(extract_model_from_parallel(model).config, "final_logit_softcapping", None)
    return logits if not cap else torch.tanh(logits / cap) * cap


def score_groups(
    model: torch.nn.Module,
    groups: Sequence[Group],
    *,
    method: Method = "shared",
    max_batch_tokens: int = 8192,
) -> AnswerLogProbs:
    """Summed log-prob of every answer given its prompt; [B, M] with M = max answers per group.

    Differentiable: call it under `torch.no_grad()` for scoring, without for training.
    `max_batch_tokens` bounds rows x padded length per forward pass (memory, not results).
    """
    if not groups:
        raise ValueError("score_groups needs at least one group")
    if method not in ("naive", "shared"):
        raise ValueError(f"method must be 'naive' or 'shared', got {method!r}")
    n_groups, width = len(groups), max(g.n_answers for g in groups)
    rows = _layout(groups, method, width)
    sums_all, counts_all = [], []
    start = 0
    while start < len(rows):
        # Greedy micro-batches: add rows while rows x longest row stays within the budget.
        end, longest = start, 0
        while end < len(rows):
            longest_next = max(longest, len(rows[end].ids))
            if end > start and longest_next * (end - start + 1) > max_batch_tokens:
                break
            longest, end = longest_next, end + 1
        sums, counts = _forward_rows(model, rows[start:end], method, n_groups * width)
        sums_all.append(sums)
        counts_all.append(counts)
        start = end
    return _to_matrix(groups, width, torch.stack(sums_all).sum(0), torch.stack(counts_all).sum(0))


def _to_matrix(
    groups: Sequence[Group], width: int, sums: torch.Tensor, counts: torch.Tensor
) -> AnswerLogProbs:
    mask = torch.zeros(len(groups), width, dtype=torch.bool)
    for g, group in enumerate(groups):
        mask[g, : group.n_answers] = True
    return AnswerLogProbs(
        sums.view(len(groups), width), counts.view(len(groups), width), mask.to(sums.device)
    )
