"""The reference model's log-probs for DMPO (the policy with its new adapter disabled), computed
once before training at evaluation's batch size and cached on disk by what they depend on."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from dmporec.config import DMPOConfig
from dmporec.distributed import process_state
from dmporec.model import ModelConfig, cache_root
from dmporec.passes import partial_files, pass_key, save_whole, score_in_chunks
from dmporec.scoring import Group, Layout


@torch.no_grad()
def reference_logps(
    model: torch.nn.Module,
    groups: list[Group],
    width: int,
    *,
    layout: Layout,
    batch_size: int,
    max_batch_tokens: int,
    partial: Path | None = None,
) -> torch.Tensor:
    """[N, width] summed log-probs of every answer under the reference (adapter disabled).

    With `partial` (a path stem), a stopped pass (an hour for 1000 users on a CPU) resumes from
    the batches it had scored instead of starting over (passes.py); the chunks are fixed by the
    groups and `batch_size`, which the caller puts in `partial`."""
    out = torch.zeros(len(groups), width)
    model.eval()
    with model.disable_adapter():
        chunks, scored = score_in_chunks(
            model,
            groups,
            layout=layout,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            partial=partial,
            desc="reference log-probs",
        )
    for c, logps in scored.items():
        out[chunks[c], : logps.shape[1]] = logps
    return out


def reference_cache_key(
    model_cfg: ModelConfig, adapters: list[Path], groups: list[Group], width: int
) -> str:
    """Hash of what the reference log-probs depend on: base model, merged adapters, token ids."""
    return pass_key(model_cfg, adapters, groups, width)


def cached_reference_logps(
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    adapters: list[Path],
    groups: list[Group],
    width: int,
    tc: DMPOConfig,
    batch_size: int,
) -> torch.Tensor:
    """Reference log-probs from the on-disk cache, or computed once and stored there, `batch_size`
    users per call (no gradients: evaluation's batch size, not training's micro-batch)."""
    key = reference_cache_key(model_cfg, adapters, groups, width)
    path = cache_root() / "reference" / f"{key}.safetensors"
    if path.is_file():
        print(f"dmpo: reference log-probs from cache {path}")
        return load_file(path)["logps"]
    # What a stopped pass scored (its chunks depend on the batch size too).
    partial = path.parent / f"{key}.b{batch_size}.partial"
    logps = reference_logps(
        model,
        groups,
        width,
        layout=tc.layout,
        batch_size=batch_size,
        max_batch_tokens=tc.max_batch_tokens,
        partial=partial,
    )
    state = process_state()
    state.wait_for_everyone()  # every process has read the partial files before they go
    if state.is_main_process:  # every process holds the same numbers
        save_whole(path, {"logps": logps.contiguous()})
        for done in partial_files(partial):
            done.unlink()
    return logps
