"""A scoring pass over many users that survives a stop: the users go in chunks of similar lengths,
shared over the processes, and with a `partial` path stem each process keeps the chunks it has
scored in `<partial>.<rank>.safetensors` (rewritten whole after each chunk: temp file, then
rename). A rerun with the same stem scores only the chunks no such file holds, whatever number
of processes wrote them. The reference pass (reference.py, ~50 min for 1000 users on a CPU) and
the scoring of test pairs (evaluation.py, ~28 min) both run through it.

The chunks are fixed by the groups and the batch size, and the numbers by the model: a caller
puts all three in the stem (`pass_key`), so a stem never holds another pass's numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from dmporec.distributed import gather_chunks, main_print, my_chunks, process_state
from dmporec.item_tokens import FILES as ITEM_TOKEN_FILES
from dmporec.model import ModelConfig
from dmporec.scoring import Group, Layout, length_order
from dmporec.scoring.forward import score_groups


def pass_key(
    model_cfg: ModelConfig, adapters: Sequence[Path], groups: Sequence[Group], *extra: object
) -> str:
    """Hash of what a pass's numbers depend on: base model, merged adapters (their weights, read),
    the groups' token ids, and `extra` (the batch size, which fixes the chunks, and the like)."""
    h = hashlib.sha256(json.dumps([model_cfg.name, model_cfg.dtype, *extra]).encode())
    for adapter in adapters:
        h.update((Path(adapter) / "adapter_model.safetensors").read_bytes())
        # The stage's item-token table and projection (model.item_tokens), when it has them.
        items = Path(adapter).parent / ITEM_TOKEN_FILES[0]
        if items.is_file():
            h.update(items.read_bytes())
    for group in groups:
        h.update(repr(group).encode())
    return h.hexdigest()[:32]


@torch.no_grad()
def score_in_chunks(
    model: torch.nn.Module,
    groups: Sequence[Group],
    *,
    layout: Layout,
    batch_size: int,
    max_batch_tokens: int,
    partial: Path | None = None,
    desc: str,
    weights: Sequence[int] | None = None,
    unit: str = "user",
) -> tuple[list[list[int]], dict[int, torch.Tensor]]:
    """(chunks: the group indices of each chunk, {chunk: [users, width] summed answer log-probs})
    for every chunk, scored by whichever process owns it or read back from `partial`'s files.
    The progress bar counts `weights[i]` per group i (default 1)."""
    order = length_order(groups)  # chunks of similar lengths pad little
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    known = read_partial(partial, len(chunks), desc) if partial is not None else {}
    state = process_state()
    todo = [c for c in my_chunks(len(chunks)) if c not in known]
    weight = [1] * len(groups) if weights is None else weights
    local: dict[int, torch.Tensor] = {}
    with tqdm(
        total=sum(weight[i] for c in todo for i in chunks[c]),
        desc=desc,
        unit=unit,
        disable=not state.is_main_process,
    ) as bar:
        for c in todo:
            scores = score_groups(
                model,
                [groups[i] for i in chunks[c]],
                layout=layout,
                max_batch_tokens=max_batch_tokens,
            )
            local[c] = scores.logps.float().cpu()
            if partial is not None:
                write_partial(partial, state.process_index, local)
            bar.update(sum(weight[i] for i in chunks[c]))
    return chunks, {**known, **gather_chunks(local)}


def partial_files(partial: Path) -> list[Path]:
    return sorted(partial.parent.glob(f"{partial.name}.*.safetensors"))


def read_partial(partial: Path, n_chunks: int, desc: str) -> dict[int, torch.Tensor]:
    """{chunk: log-probs} from every process's partial file (any number of processes wrote them)."""
    known: dict[int, torch.Tensor] = {}
    for path in partial_files(partial):
        for name, logps in load_file(path).items():
            c = int(name.removeprefix("chunk_"))
            if c < n_chunks:
                known[c] = logps
    if known:
        main_print(f"{desc}: {len(known)} of {n_chunks} batches kept from {partial}")
    return known


def write_partial(partial: Path, rank: int, local: dict[int, torch.Tensor]) -> None:
    """This process's scored chunks so far, replacing its file whole (temp file, then rename)."""
    path = partial.parent / f"{partial.name}.{rank}.safetensors"
    save_whole(path, {f"chunk_{c}": t.contiguous() for c, t in local.items()})


def save_whole(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write `tensors` to `path` through a temp file and a rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp)
    os.replace(tmp, path)
