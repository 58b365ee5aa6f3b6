"""The reference model's log-probs for DMPO (the policy with its new adapter disabled), computed
once before training at evaluation's batch size and cached on disk by what they depend on."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from dmporec.config import DMPOConfig
from dmporec.distributed import gather_chunks, my_chunks, process_state
from dmporec.model import ModelConfig, cache_root
from dmporec.scoring import Group, Layout, length_order, score_groups


@torch.no_grad()
def reference_logps(
    model: torch.nn.Module,
    groups: list[Group],
    width: int,
    *,
    layout: Layout,
    batch_size: int,
    max_batch_tokens: int,
) -> torch.Tensor:
    """[N, width] summed log-probs of every answer under the reference (adapter disabled)."""
    out = torch.zeros(len(groups), width)
    model.eval()
    order = length_order(groups)  # chunks of similar lengths pad little
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    local: dict[int, torch.Tensor] = {}
    with model.disable_adapter():
        for c in tqdm(
            my_chunks(len(chunks)),  # shared over the processes (distributed.py)
            desc="reference log-probs",
            unit="batch",
            disable=not process_state().is_main_process,
        ):
            scores = score_groups(
                model,
                [groups[i] for i in chunks[c]],
                layout=layout,
                max_batch_tokens=max_batch_tokens,
            )
            local[c] = scores.logps.float().cpu()
    for c, logps in gather_chunks(local).items():
        out[chunks[c], : logps.shape[1]] = logps
    return out


def reference_cache_key(
    model_cfg: ModelConfig, adapters: list[Path], groups: list[Group], width: int
) -> str:
    """Hash of what the reference log-probs depend on: base model, merged adapters, token ids."""
    h = hashlib.sha256(json.dumps([model_cfg.name, model_cfg.dtype, width]).encode())
    for adapter in adapters:
        h.update((adapter / "adapter_model.safetensors").read_bytes())
    for group in groups:
        h.update(repr(group).encode())
    return h.hexdigest()[:32]


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
    path = (
        cache_root()
        / "reference"
        / f"{reference_cache_key(model_cfg, adapters, groups, width)}.safetensors"
    )
    if path.is_file():
        print(f"dmpo: reference log-probs from cache {path}")
        return load_file(path)["logps"]
    logps = reference_logps(
        model,
        groups,
        width,
        layout=tc.layout,
        batch_size=batch_size,
        max_batch_tokens=tc.max_batch_tokens,
    )
    if process_state().is_main_process:  # every process holds the same numbers
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"logps": logps.contiguous()}, tmp)
        os.replace(tmp, path)
    return logps
