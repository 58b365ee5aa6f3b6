"""The attention masks of the shared layout: a token sees the earlier tokens of its own segment
and of its ancestor segments (trie.py), as dense boolean or additive masks (SDPA, eager) or a
FlexAttention BlockMask, with a sliding window measured in position ids where the model has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dmporec.scoring.trie import Row


def ancestry(rows: list[Row], length: int) -> tuple[torch.Tensor, torch.Tensor]:
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
class MaskView:
    """Which row positions a pass's mask covers: the queries are the tokens after the cached
    prefix (the stem for "shared", each row's first segment for "cached") and the keys are the
    cache (with holes where a shorter prefix was padded) followed by those tokens."""

    q: torch.Tensor  # [R, Q] row position of each query
    k: torch.Tensor  # [R, K] row position of each key
    k_ok: torch.Tensor  # [R, K] False for the padding holes of the cache


def block_mask(rows: list[Row], length: int, view: MaskView) -> torch.Tensor:
    """[R, 1, Q, K] bool: query q sees key k iff k <= q and k's segment is q's or an ancestor
    (padding sees the padding before it, so no softmax row is empty)."""
    seg, anc = ancestry(rows, length)
    sq, sk = seg.gather(1, view.q), seg.gather(1, view.k)
    seen = anc[torch.arange(len(rows))[:, None, None], sq[:, :, None], sk[:, None, :]]
    seen &= view.k[:, None, :] <= view.q[:, :, None]
    return (seen & view.k_ok[:, None, :])[:, None]


def _flex_block_mask(
    rows: list[Row], length: int, pos: torch.Tensor, window: int | None, view: MaskView
) -> Any:
    """The same mask as a FlexAttention BlockMask (blocks no query sees are skipped); with
    `window`, keys `window` or more positions behind the query are hidden too."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg, anc = (t.to(pos.device) for t in ancestry(rows, length))
    # The queries' and keys' row positions, segments and position ids, looked up once here.
    vq, vk, ok = (t.to(pos.device) for t in (view.q, view.k, view.k_ok))
    sq, sk, pq, pk = seg.gather(1, vq), seg.gather(1, vk), pos.gather(1, vq), pos.gather(1, vk)

    def sees(b: Any, h: Any, q: Any, k: Any) -> Any:
        seen = (vk[b, k] <= vq[b, q]) & anc[b, sq[b, q], sk[b, k]] & ok[b, k]
        return seen if window is None else seen & (pq[b, q] - pk[b, k] < window)

    n_q, n_k = view.q.shape[1], view.k.shape[1]
    return create_block_mask(sees, len(rows), None, n_q, n_k, device=pos.device)


def sliding_window(config: Any) -> tuple[int | None, bool]:
    """(window, per layer type): the attention window the model's config asks for, if any, and
    whether only its "sliding_attention" layers use it (Gemma 3) or every layer (Mistral)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window:
        return None, False
    if layer_types is not None:
        return (window, True) if "sliding_attention" in layer_types else (None, False)
    return (window, False) if getattr(config, "use_sliding_window", True) else (None, False)


def shared_mask(
    config: Any, rows: list[Row], pos: torch.Tensor, dtype: torch.dtype, view: MaskView
) -> Any:
    """The block mask in the form the attention implementation takes. Windowed layers measure
    distance in position ids (a token's depth in the trie, its distance in the naive row);
    `pos` [R, L] holds every row position's id."""
    impl = getattr(config, "_attn_implementation", "sdpa")
    window, per_layer_type = sliding_window(config)
    length = pos.shape[1]
    if impl == "flex_attention":
        full = _flex_block_mask(rows, length, pos, None if per_layer_type else window, view)
        if not per_layer_type:
            return full
        return {
            "full_attention": full,
            "sliding_attention": _flex_block_mask(rows, length, pos, window, view),
        }
    full = block_mask(rows, length, view).to(pos.device)
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
