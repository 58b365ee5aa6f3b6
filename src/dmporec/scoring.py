"""Summed log-probabilities of answers given their prompts, for groups of answers sharing a prompt.

A `Group` is one user's prompt tree: a shared prefix (chat template, role line, history), then
branches (one per candidate pair: the line naming the two candidates and the template's
assistant header), each with its answers (chosen, rejected). `score_groups` returns the summed
log-prob of every answer, shape [B, M] with M = answers per group in branch order.

Two layouts compute the same numbers:
- "naive": one row per answer holding prefix + context + answer, as the peers do
  (LLaMA-Factory, TRL): the prefix is encoded once per answer.
- "shared": one packed row per group holding the token trie of its sequences (prefix +
  context + answer): every distinct prompt prefix is encoded once, so the prefix is shared by
  all branches, and the leading tokens that branches' contexts or a branch's answers have in
  common (" . Rank the likelihood ...  <Title:", " <Title:") are shared too. A block attention
  mask (each token sees its ancestors and the earlier tokens of its own segment) and position
  ids equal to each token's depth give every answer token exactly the context it has in the
  naive row; gradients flow through every shared token as usual. An answer token shared by
  several answers is scored once and added to each of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

Method = Literal["naive", "shared"]
_LOGIT_ELEMENTS = 1 << 24  # logits computed at once (64 MiB in fp32)
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
            return sum(len(tokens) for tokens, _, _ in _segments(self))
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


class _Node:
    """A token of the trie: its children and the answer slots it is a target token of."""

    __slots__ = ("children", "slots")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.slots: list[int] = []


def _segments(group: Group) -> list[tuple[list[int], list[list[int]], int]]:
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


def _layout(groups: Sequence[Group], method: Method, width: int) -> list[_Row]:
    """Rows for `method`; answer m of group g gets slot g * width + m."""
    rows: list[_Row] = []
    for g, group in enumerate(groups):
        if method == "shared":
            row = _Row([], [], [], [], [])
            ends: list[int] = []  # row index of each segment's last token
            for seg_id, (tokens, slots, parent) in enumerate(_segments(group)):
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
                        _Row(
                            list(prompt + answer),
                            list(range(n + len(answer))),
                            [0] * (n + len(answer)),
                            [-1],
                            [(n - 1 + j, tok, g * width + slot) for j, tok in enumerate(answer)],
                        )
                    )
                    slot += 1
    return rows


def _ancestry(rows: list[_Row], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """seg [R, L] (padding gets a segment of its own) and anc [R, S, S]: anc[r, a, b] is True
    iff segment b is a or one of its ancestors in row r."""
    n_seg = max(len(r.parents) for r in rows) + 1
    seg = torch.full((len(rows), length), n_seg - 1, dtype=torch.long)
    anc = torch.eye(n_seg, dtype=torch.bool).repeat(len(rows), 1, 1)
    for r, row in enumerate(rows):
        seg[r, : len(row.seg)] = torch.tensor(row.seg, dtype=torch.long)
        for s, p in enumerate(row.parents):  # parents precede children in the layout
            if p >= 0:
                anc[r, s] |= anc[r, p]
    return seg, anc


def _block_mask(rows: list[_Row], length: int, device: torch.device) -> torch.Tensor:
    """[R, 1, L, L] bool: query q sees key k iff k <= q and k's segment is q's or an ancestor
    (padding sees the padding before it, so no softmax row is empty)."""
    seg, anc = _ancestry(rows, length)
    seen = anc[torch.arange(len(rows))[:, None, None], seg[:, :, None], seg[:, None, :]]
    return (seen & torch.ones(length, length, dtype=torch.bool).tril())[:, None].to(device)


def _flex_block_mask(rows: list[_Row], length: int, pos: torch.Tensor, window: int | None) -> Any:
    """The same mask as a FlexAttention BlockMask (blocks no query sees are skipped); with
    `window`, keys `window` or more positions behind the query are hidden too."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg, anc = (t.to(pos.device) for t in _ancestry(rows, length))

    def sees(b: Any, h: Any, q: Any, k: Any) -> Any:
        seen = (k <= q) & anc[b, seg[b, q], seg[b, k]]
        return seen if window is None else seen & (pos[b, q] - pos[b, k] < window)

    return create_block_mask(sees, len(rows), None, length, length, device=pos.device)


def _sliding_window(config: Any) -> tuple[int | None, bool]:
    """(window, per layer type): the attention window the model's config asks for, if any, and
    whether only its "sliding_attention" layers use it (Gemma 3) or every layer (Mistral)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window:
        return None, False
    if layer_types is not None:
        return (window, True) if "sliding_attention" in layer_types else (None, False)
    return (window, False) if getattr(config, "use_sliding_window", True) else (None, False)


def _shared_mask(
    config: Any, rows: list[_Row], length: int, pos: torch.Tensor, dtype: torch.dtype
) -> Any:
    """The block mask in the form the attention implementation takes. Windowed layers measure
    distance in position ids (a token's depth in the trie, its distance in the naive row)."""
    impl = getattr(config, "_attn_implementation", "sdpa")
    window, per_layer_type = _sliding_window(config)
    if impl == "flex_attention":
        full = _flex_block_mask(rows, length, pos, None if per_layer_type else window)
        if not per_layer_type:
            return full
        return {
            "full_attention": full,
            "sliding_attention": _flex_block_mask(rows, length, pos, window),
        }
    full = _block_mask(rows, length, pos.device)
    near = None if window is None else (pos[:, None, :, None] - pos[:, None, None, :]) < window
    masks = (
        {"full_attention": full, "sliding_attention": full & near}
        if per_layer_type
        else {"full_attention": full if near is None else full & near}
    )
    if impl == "eager":
        masks = {
            k: torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(
                ~m, torch.finfo(dtype).min
            )
            for k, m in masks.items()
        }
    return masks if per_layer_type else masks["full_attention"]


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
        config = extract_model_from_parallel(model).config
        attn = _shared_mask(config, rows, length, pos, next(model.parameters()).dtype)
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
    unique: dict[tuple[int, int, int], int] = {}  # (row, position, token) -> scored target
    which, slots = [], []
    for r, row in enumerate(rows):
        for pred, tok, slot in row.targets:
            which.append(unique.setdefault((r, pred, tok), len(unique)))
            slots.append(slot)
    sums = torch.zeros(n_slots, device=device, dtype=torch.float32)
    counts = torch.zeros(n_slots, device=device, dtype=torch.long)
    if not unique:  # only empty answers
        return sums + hidden.sum() * 0, counts  # still attached to the graph
    row_idx, pred_idx, tgt = (torch.tensor(c, device=device) for c in zip(*unique, strict=True))
    head, states = _head(model), hidden[row_idx, pred_idx]
    # Logits of a bounded number of targets at a time: [targets, vocab] in fp32 is 1.7 GB for
    # 1,600 targets of Gemma's 262k vocabulary.
    step = max(1, _LOGIT_ELEMENTS // head.weight.shape[0])
    token_logp = torch.cat(
        [
            -F.cross_entropy(
                _softcap(model, head(states[i : i + step]).float()),
                tgt[i : i + step],
                reduction="none",
            )
            for i in range(0, len(tgt), step)
        ]
    )[torch.tensor(which, device=device)]
    slot_t = torch.tensor(slots, device=device)
    return sums.index_add(0, slot_t, token_logp), counts.index_add(
        0, slot_t, torch.ones_like(slot_t)
    )


def _head(model: torch.nn.Module) -> torch.nn.Module:
    return extract_model_from_parallel(model).get_output_embeddings()


def _softcap(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    cap = getattr(extract_model_from_parallel(model).config, "final_logit_softcapping", None)
    return logits if not cap else torch.tanh(logits / cap) * cap


def length_order(groups: Sequence[Group]) -> list[int]:
    """Indices of `groups`, shortest first: callers that score a long list in chunks (for a
    progress bar) chunk in this order so each chunk pads little, then put results back."""
    return sorted(range(len(groups)), key=lambda i: groups[i].tokens("naive"))


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
    # Longest first: rows of similar length share a micro-batch (little padding), and the
    # largest one comes first, so a batch too big for memory fails at once.
    rows = sorted(_layout(groups, method, width), key=lambda r: len(r.ids), reverse=True)
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
