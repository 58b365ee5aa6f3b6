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
from dmporec.distributed import gather_chunks, main_print, my_chunks, process_state
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
    partial: Path | None = None,
) -> torch.Tensor:
    """[N, width] summed log-probs of every answer under the reference (adapter disabled).

    With `partial` (a path stem), each process keeps the chunks it has scored in
    `<partial>.<rank>.safetensors` as it goes, and a rerun scores only the chunks that no such
    file holds: a stopped pass (an hour for 1000 users on a CPU) resumes instead of starting over.
    The chunks are fixed by the groups and `batch_size`, which the caller puts in `partial`."""
    out = torch.zeros(len(groups), width)
    model.eval()
    order = length_order(groups)  # chunks of similar lengths pad little
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    known = _read_partial(partial, len(chunks)) if partial is not None else {}
    local: dict[int, torch.Tensor] = {}
    state = process_state()
    todo = [c for c in my_chunks(len(chunks)) if c not in known]  # shared over the processes
    with model.disable_adapter():
        for c in tqdm(
            todo,
            desc="reference log-probs",
            unit="batch",
            disable=not state.is_main_process,
        ):
            scores = score_groups(
                model,
                [groups[i] for i in chunks[c]],
                layout=layout,
                max_batch_tokens=max_batch_tokens,
            )
            local[c] = scores.logps.float().cpu()
            if partial is not None:
                _write_partial(partial, state.process_index, local)
    for c, logps in {**known, **gather_chunks(local)}.items():
        out[chunks[c], : logps.shape[1]] = logps
    return out


def _partial_files(partial: Path) -> list[Path]:
    return sorted(partial.parent.glob(f"{partial.name}.*.safetensors"))


def _read_partial(partial: Path, n_chunks: int) -> dict[int, torch.Tensor]:
    """{chunk: log-probs} from every process's partial file (any number of processes wrote them)."""
    known: dict[int, torch.Tensor] = {}
    for path in _partial_files(partial):
        for name, logps in load_file(path).items():
            c = int(name.removeprefix("chunk_"))
            if c < n_chunks:
                known[c] = logps
    if known:
        main_print(
            f"dmpo: reference log-probs: {len(known)} of {n_chunks} batches kept from {partial}"
        )
    return known


def _write_partial(partial: Path, rank: int, local: dict[int, torch.Tensor]) -> None:
    """This process's scored chunks so far, replacing its file whole (temp file, then rename)."""
    path = partial.parent / f"{partial.name}.{rank}.safetensors"
    _save_whole(path, {f"chunk_{c}": t.contiguous() for c, t in local.items()})


def _save_whole(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write `tensors` to `path` through a temp file and a rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp)
    os.replace(tmp, path)


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
        _save_whole(path, {"logps": logps.contiguous()})
        for done in _partial_files(partial):
            done.unlink()
    return logps
