"""Summed log-probabilities of answers given their prompts, for groups of answers sharing a prompt.

A `Group` is one user's prompt tree: a shared prefix (chat template, role line, history), then
branches (one per candidate pair: the line naming the two candidates and the template's
assistant header), each with its answers (chosen, rejected). `score_groups` returns the summed
log-prob of every answer, shape [B, M] with M = answers per group in branch order.

Three layouts compute the same numbers:
- "naive": one row per answer holding prefix + context + answer, as the peers do
  (LLaMA-Factory, TRL): the prefix is encoded once per answer.
- "shared": one packed row per group holding the token trie of its sequences (prefix +
  context + answer): every distinct prompt prefix is encoded once, so the prefix is shared by
  all branches, and the leading tokens that branches' contexts or a branch's answers have in
  common (" . Rank the likelihood ...  <Title:", " <Title:") are shared too. A block attention
  mask (each token sees its ancestors and the earlier tokens of its own segment) and position
  ids equal to each token's depth give every answer token exactly the context it has in the
  naive row; gradients flow through every shared token as usual. An answer token shared by
  several answers is scored once and added to each of them. The stem, the leading tokens all
  rows of a call start with (chat template, system prompt, the instruction's first words), is
  encoded once per call and its keys and values copied into each row's KV cache; the rows
  hold the trie after it (the stem's gradient is the sum over the rows that share it). Under
  gradient checkpointing, whose replay drops the KV cache, each row encodes the stem itself.
- "cached": "shared" with the rest of each row's first segment (the user's history) encoded
  in a pass of its own with plain causal attention into the KV cache (no mask: the attention
  kernels skip the masked half); the rest of the trie (pair lines, answers) then attends to
  that cache under the block mask. The same tokens as "shared", one more forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

Method = Literal["naive", "shared", "cached"]
_LOGIT_ELEMENTS = 1 << 24  # logits computed at once (64 MiB in fp32)
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

    def tokens(self, method: Method) -> int:
        """Tokens a forward pass processes for this group under `method`."""
        if method != "naive":
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
    encoded: int = 0  # tokens the forward passes encoded, padding excluded (for benchmarks)


@dataclass
class _Row:
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
        if method != "naive":
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


@dataclass
class _View:
    """Which row positions a pass's mask covers: the queries are the tokens after the cached
    prefix (the stem for "shared", each row's first segment for "cached") and the keys are the
    cache (with holes where a shorter prefix was padded) followed by those tokens."""

    q: torch.Tensor  # [R, Q] row position of each query
    k: torch.Tensor  # [R, K] row position of each key
    k_ok: torch.Tensor  # [R, K] False for the padding holes of the cache


def _block_mask(rows: list[_Row], length: int, view: _View) -> torch.Tensor:
    """[R, 1, Q, K] bool: query q sees key k iff k <= q and k's segment is q's or an ancestor
    (padding sees the padding before it, so no softmax row is empty)."""
    seg, anc = _ancestry(rows, length)
    sq, sk = seg.gather(1, view.q), seg.gather(1, view.k)
    seen = anc[torch.arange(len(rows))[:, None, None], sq[:, :, None], sk[:, None, :]]
    seen &= view.k[:, None, :] <= view.q[:, :, None]
    return (seen & view.k_ok[:, None, :])[:, None]


def _flex_block_mask(
    rows: list[_Row], length: int, pos: torch.Tensor, window: int | None, view: _View
) -> Any:
    """The same mask as a FlexAttention BlockMask (blocks no query sees are skipped); with
    `window`, keys `window` or more positions behind the query are hidden too."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg, anc = (t.to(pos.device) for t in _ancestry(rows, length))
    # The queries' and keys' row positions, segments and position ids, looked up once here.
    vq, vk, ok = (t.to(pos.device) for t in (view.q, view.k, view.k_ok))
    sq, sk, pq, pk = seg.gather(1, vq), seg.gather(1, vk), pos.gather(1, vq), pos.gather(1, vk)

    def sees(b: Any, h: Any, q: Any, k: Any) -> Any:
        seen = (vk[b, k] <= vq[b, q]) & anc[b, sq[b, q], sk[b, k]] & ok[b, k]
        return seen if window is None else seen & (pq[b, q] - pk[b, k] < window)

    n_q, n_k = view.q.shape[1], view.k.shape[1]
    return create_block_mask(sees, len(rows), None, n_q, n_k, device=pos.device)


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
    config: Any, rows: list[_Row], pos: torch.Tensor, dtype: torch.dtype, view: _View
) -> Any:
    """The block mask in the form the attention implementation takes. Windowed layers measure
    distance in position ids (a token's depth in the trie, its distance in the naive row);
    `pos` [R, L] holds every row position's id."""
    impl = getattr(config, "_attn_implementation", "sdpa")
    window, per_layer_type = _sliding_window(config)
    length = pos.shape[1]
    if impl == "flex_attention":
        full = _flex_block_mask(rows, length, pos, None if per_layer_type else window, view)
        if not per_layer_type:
            return full
        return {
            "full_attention": full,
            "sliding_attention": _flex_block_mask(rows, length, pos, window, view),
        }
    full = _block_mask(rows, length, view).to(pos.device)
    if window is not None:
        pq, pk = pos.gather(1, view.q.to(pos.device)), pos.gather(1, view.k.to(pos.device))
        near = (pq[:, None, :, None] - pk[:, None, None, :]) < window
    masks = (
        {"full_attention": full, "sliding_attention": full & near}
        if per_layer_type
        else {"full_attention": full if window is None else full & near}
    )
    if impl == "eager":
        masks = {
            k: torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(
                ~m, torch.finfo(dtype).min
            )
            for k, m in masks.items()
        }
    return masks if per_layer_type else masks["full_attention"]


def _padded(seqs: list[list[int]], length: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([s + [0] * (length - len(s)) for s in seqs], device=device)


_KW: dict[str, Any] = {"output_hidden_states": True, "logits_to_keep": 1}


@dataclass
class _Stem:
    """The leading tokens every row of a call starts with, encoded once: their
    last-layer hidden states [1, n, H] and each layer's keys and values [1, heads, n, d]."""

    n: int
    hidden: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]]

    @staticmethod
    def encode(model: torch.nn.Module, rows: list[_Row]) -> _Stem | None:
        """The stem of `rows` (the longest prefix their first segments have in common)."""
        from transformers import DynamicCache

        n = min(r.first for r in rows)
        for row in rows[1:]:
            n = next((i for i in range(n) if row.ids[i] != rows[0].ids[i]), n)
        if n == 0:
            return None
        device = next(model.parameters()).device
        out = model(
            input_ids=torch.tensor([rows[0].ids[:n]], device=device),
            position_ids=torch.arange(n, device=device)[None],
            past_key_values=DynamicCache(),  # no config: full-length layers, as the mask's keys are
            use_cache=True,
            **_KW,
        )
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return _Stem(n, out.hidden_states[-1], kv)

    def cache(self, n_rows: int) -> Any:
        """A KV cache holding the stem for each of `n_rows` rows."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(self.kv):
            cache.update(k.expand(n_rows, -1, -1, -1), v.expand(n_rows, -1, -1, -1), i)
        return cache


def _hidden_states(
    model: torch.nn.Module, rows: list[_Row], method: Method, stem: _Stem | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer hidden states of the rows' tokens, [R, L, H], and the column of each row
    position in it, [R, L] (the identity but for "cached", whose passes are concatenated)."""
    device = next(model.parameters()).device
    length = max(len(r.ids) for r in rows)
    if method == "naive":
        out = model(
            input_ids=_padded([r.ids for r in rows], length, device),
            attention_mask=_padded([[1] * len(r.ids) for r in rows], length, device),
            position_ids=_padded([r.pos for r in rows], length, device),
            use_cache=False,
            **_KW,
        )
        return out.hidden_states[-1], torch.arange(length, device=device).expand(len(rows), -1)
    # The stem's keys and values, copied to every row. "cached": pass 1 encodes the rest of each
    # row's first segment with plain causal attention (right padding needs no mask: no real
    # token looks ahead), adding its keys and values to the cache. "shared" has no pass 1.
    from transformers import DynamicCache

    config = extract_model_from_parallel(model).config
    dtype = next(model.parameters()).dtype
    n_stem = stem.n if stem is not None else 0
    cache = stem.cache(len(rows)) if stem is not None else DynamicCache()
    hidden = [stem.hidden.expand(len(rows), -1, -1)] if stem is not None else []
    cut = [r.first if method == "cached" else n_stem for r in rows]
    n_pre, n_rest = max(cut), max(len(r.ids) - c for r, c in zip(rows, cut, strict=True))
    if n_pre > n_stem:
        first = model(
            input_ids=_padded(
                [r.ids[n_stem:c] for r, c in zip(rows, cut, strict=True)], n_pre - n_stem, device
            ),
            position_ids=torch.arange(n_stem, n_pre, device=device).expand(len(rows), -1),
            past_key_values=cache,
            use_cache=True,
            **_KW,
        )
        hidden.append(first.hidden_states[-1])
    cut_t = torch.tensor(cut)[:, None]
    where = torch.arange(length).expand(len(rows), -1)
    where = torch.where(where < cut_t, where, where - cut_t + n_pre).to(device)
    if n_rest > 0:
        # Pass 2: the rest of each row, its queries against the cache and itself under the
        # block mask (for "shared", all of the row after the stem).
        span = n_pre + n_rest  # row positions the mask needs: every cut + n_rest
        pos_all = _padded([r.pos for r in rows], span, device)
        k_pre, rest = torch.arange(n_pre).expand(len(rows), -1), cut_t + torch.arange(n_rest)
        view = _View(
            q=rest,
            k=torch.cat([k_pre, rest], 1),
            k_ok=torch.cat([k_pre < cut_t, torch.ones(len(rows), n_rest, dtype=torch.bool)], 1),
        )
        second = model(
            input_ids=_padded([r.ids[c:] for r, c in zip(rows, cut, strict=True)], n_rest, device),
            attention_mask=_shared_mask(config, rows, pos_all, dtype, view),
            position_ids=pos_all.gather(1, view.q.to(device)),
            past_key_values=cache,
            use_cache=True,
            **_KW,
        )
        hidden.append(second.hidden_states[-1])
    return torch.cat(hidden, 1), where


def _forward_rows(
    model: torch.nn.Module, rows: list[_Row], method: Method, n_slots: int, stem: _Stem | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed target log-probs and token counts per slot for one micro-batch of rows."""
    hidden, where = _hidden_states(model, rows, method, stem)
    device = hidden.device
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
    head, states = _head(model), hidden[row_idx, where[row_idx, pred_idx]]
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


def _micro_batches(lengths: list[int], budget: int) -> list[tuple[int, int]]:
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
    if method not in ("naive", "shared", "cached"):
        raise ValueError(f"method must be 'naive', 'shared' or 'cached', got {method!r}")
    n_groups, width = len(groups), max(g.n_answers for g in groups)
    # Longest first: rows of similar length share a micro-batch (little padding), and the
    # largest one comes first, so a batch too big for memory fails at once.
    rows = sorted(_layout(groups, method, width), key=lambda r: len(r.ids), reverse=True)
    checkpointing = model.training and any(
        getattr(m, "gradient_checkpointing", False) for m in model.modules()
    )
    if checkpointing and method == "cached":
        raise ValueError(
            "method 'cached' needs a KV cache, which gradient checkpointing drops in training: "
            "use 'shared'"
        )
    # Gradient checkpointing replays each layer without its KV cache: no stem then.
    stem = _Stem.encode(model, rows) if method != "naive" and not checkpointing else None
    n_stem = stem.n if stem is not None else 0
    encoded = n_stem + sum(len(r.ids) - n_stem for r in rows)
    sums_all, counts_all = [], []
    for start, end in _micro_batches([len(r.ids) for r in rows], max_batch_tokens):
        sums, counts = _forward_rows(model, rows[start:end], method, n_groups * width, stem)
        sums_all.append(sums)
        counts_all.append(counts)
    sums, counts = torch.stack(sums_all).sum(0), torch.stack(counts_all).sum(0)
    mask = torch.zeros(len(groups), width, dtype=torch.bool)
    for g, group in enumerate(groups):
        mask[g, : group.n_answers] = True
    return AnswerLogProbs(
        sums.view(n_groups, width), counts.view(n_groups, width), mask.to(sums.device), encoded
    )
