"""The forward passes: hidden states of packed rows (naive, or the stem then the trie under its
block mask), the answer tokens' log-probs, and `score_groups`, which ties them together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

from dmporec.hf_compat import checkpointing_active, decoder_body, output_cache, with_cache
from dmporec.scoring.masks import MaskView, shared_mask
from dmporec.scoring.trie import LAYOUTS, Group, Layout, Row, micro_batches, pack_rows

_LOGIT_ELEMENTS = 1 << 24  # logits computed at once (64 MiB in fp32)


@dataclass
class AnswerLogProbs:
    """logps[b, m]: summed log-prob of answer m of group b (0 where mask is False)."""

    logps: torch.Tensor  # [B, M] float32
    n_tokens: torch.Tensor  # [B, M] long
    mask: torch.Tensor  # [B, M] bool
    encoded: int = 0  # tokens the forward passes encoded, padding excluded (for benchmarks)


def _padded(seqs: list[list[int]], length: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([s + [0] * (length - len(s)) for s in seqs], device=device)


def _encode(model: torch.nn.Module, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """Last-layer hidden states of one forward pass, and its output (for the KV cache).

    The whole model runs (its wrappers' hooks too: DDP, FSDP, autocast), computing logits for one
    position per row; the hidden states come from a hook on its decoder body's output, so no
    other layer's output is kept. `output_hidden_states` would hold all of them until the call returns
    (without gradients nothing else keeps them: for Qwen3-8B at 32k tokens in bf16, 36 layers x
    32768 x 4096 x 2 bytes = 9.7 GB)."""
    body = decoder_body(model)
    if body is None:  # a model that names no decoder body: every layer's output, the last kept
        out = model(**kwargs, output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[-1], out
    seen: list[torch.Tensor] = []
    hook = body.register_forward_hook(lambda _module, _args, out: seen.append(out[0]))
    try:
        out = model(**kwargs, logits_to_keep=1)
    finally:
        hook.remove()
    return seen[-1], out


@dataclass
class _Stem:
    """The leading tokens every row of a call starts with, encoded once: their
    last-layer hidden states [1, n, H] and each layer's keys and values [1, heads, n, d]."""

    n: int
    hidden: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]]

    @staticmethod
    def encode(model: torch.nn.Module, rows: list[Row]) -> _Stem | None:
        """The stem of `rows` (the longest prefix their first segments have in common)."""
        from transformers import DynamicCache

        n = min(r.first for r in rows)
        for row in rows[1:]:
            n = next((i for i in range(n) if row.ids[i] != rows[0].ids[i]), n)
        if n == 0:
            return None
        device = next(model.parameters()).device
        hidden, out = _encode(
            model,
            input_ids=torch.tensor([rows[0].ids[:n]], device=device),
            position_ids=torch.arange(n, device=device)[None],
            **with_cache(DynamicCache()),  # no config: full-length layers, as the mask's keys are
        )
        kv = [(layer.keys, layer.values) for layer in output_cache(out).layers]
        return _Stem(n, hidden, kv)

    def cache(self, n_rows: int) -> Any:
        """A KV cache holding the stem for each of `n_rows` rows."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(self.kv):
            cache.update(k.expand(n_rows, -1, -1, -1), v.expand(n_rows, -1, -1, -1), i)
        return cache


def _hidden_states(
    model: torch.nn.Module, rows: list[Row], layout: Layout, stem: _Stem | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer hidden states of the rows' tokens, [R, L, H], and the column of each row
    position in it, [R, L] (the identity but for "cached", whose passes are concatenated)."""
    device = next(model.parameters()).device
    length = max(len(r.ids) for r in rows)
    if layout == "naive":
        hidden, _ = _encode(
            model,
            input_ids=_padded([r.ids for r in rows], length, device),
            attention_mask=_padded([[1] * len(r.ids) for r in rows], length, device),
            position_ids=_padded([r.pos for r in rows], length, device),
            use_cache=False,
        )
        return hidden, torch.arange(length, device=device).expand(len(rows), -1)
    # The stem's keys and values, copied to every row. "cached": pass 1 encodes the rest of each
    # row's first segment with plain causal attention (right padding needs no mask: no real
    # token looks ahead), adding its keys and values to the cache. "shared" has no pass 1.
    from transformers import DynamicCache

    config = extract_model_from_parallel(model).config
    dtype = next(model.parameters()).dtype
    n_stem = stem.n if stem is not None else 0
    cache = stem.cache(len(rows)) if stem is not None else DynamicCache()
    hidden = [stem.hidden.expand(len(rows), -1, -1)] if stem is not None else []
    cut = [r.first if layout == "cached" else n_stem for r in rows]
    n_pre, n_rest = max(cut), max(len(r.ids) - c for r, c in zip(rows, cut, strict=True))
    if n_pre > n_stem:
        first, _ = _encode(
            model,
            input_ids=_padded(
                [r.ids[n_stem:c] for r, c in zip(rows, cut, strict=True)], n_pre - n_stem, device
            ),
            position_ids=torch.arange(n_stem, n_pre, device=device).expand(len(rows), -1),
            **with_cache(cache),
        )
        hidden.append(first)
    cut_t = torch.tensor(cut)[:, None]
    where = torch.arange(length).expand(len(rows), -1)
    where = torch.where(where < cut_t, where, where - cut_t + n_pre).to(device)
    if n_rest > 0:
        # Pass 2: the rest of each row, its queries against the cache and itself under the
        # block mask (for "shared", all of the row after the stem).
        span = n_pre + n_rest  # row positions the mask needs: every cut + n_rest
        pos_all = _padded([r.pos for r in rows], span, device)
        k_pre, rest = torch.arange(n_pre).expand(len(rows), -1), cut_t + torch.arange(n_rest)
        view = MaskView(
            q=rest,
            k=torch.cat([k_pre, rest], 1),
            k_ok=torch.cat([k_pre < cut_t, torch.ones(len(rows), n_rest, dtype=torch.bool)], 1),
        )
        second, _ = _encode(
            model,
            input_ids=_padded([r.ids[c:] for r, c in zip(rows, cut, strict=True)], n_rest, device),
            attention_mask=shared_mask(config, rows, pos_all, dtype, view),
            position_ids=pos_all.gather(1, view.q.to(device)),
            **with_cache(cache),
        )
        hidden.append(second)
    return torch.cat(hidden, 1), where


def _forward_rows(
    model: torch.nn.Module, rows: list[Row], layout: Layout, n_slots: int, stem: _Stem | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed target log-probs and token counts per slot for one micro-batch of rows."""
    hidden, where = _hidden_states(model, rows, layout, stem)
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


def score_groups(
    model: torch.nn.Module,
    groups: Sequence[Group],
    *,
    layout: Layout = "shared",
    max_batch_tokens: int = 8192,
) -> AnswerLogProbs:
    """Summed log-prob of every answer given its prompt; [B, M] with M = max answers per group.

    Differentiable: call it under `torch.no_grad()` for scoring, without for training.
    `max_batch_tokens` bounds rows x padded length per forward pass (memory, not results).
    """
    if not groups:
        raise ValueError("score_groups needs at least one group")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'naive', 'shared' or 'cached', got {layout!r}")
    n_groups, width = len(groups), max(g.n_answers for g in groups)
    # Longest first: rows of similar length share a micro-batch (little padding), and the
    # largest one comes first, so a batch too big for memory fails at once.
    rows = sorted(pack_rows(groups, layout, width), key=lambda r: len(r.ids), reverse=True)
    checkpointing = checkpointing_active(model)
    if checkpointing and layout == "cached":
        raise ValueError(
            "layout 'cached' needs a KV cache, which gradient checkpointing drops in training: "
            "use 'shared'"
        )
    # Gradient checkpointing replays each layer without its KV cache: no stem then.
    stem = _Stem.encode(model, rows) if layout != "naive" and not checkpointing else None
    n_stem = stem.n if stem is not None else 0
    encoded = n_stem + sum(len(r.ids) - n_stem for r in rows)
    sums_all, counts_all = [], []
    for start, end in micro_batches([len(r.ids) for r in rows], max_batch_tokens):
        sums, counts = _forward_rows(model, rows[start:end], layout, n_groups * width, stem)
        sums_all.append(sums)
        counts_all.append(counts)
    sums, counts = torch.stack(sums_all).sum(0), torch.stack(counts_all).sum(0)
    mask = torch.zeros(len(groups), width, dtype=torch.bool)
    for g, group in enumerate(groups):
        mask[g, : group.n_answers] = True
    return AnswerLogProbs(
        sums.view(n_groups, width), counts.view(n_groups, width), mask.to(sums.device), encoded
    )
