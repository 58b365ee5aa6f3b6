"""Work split over the processes of `accelerate launch` / `torchrun`, results gathered in order.

Scoring (evaluation, validation, DMPO's reference pass) walks its users in fixed chunks; process
r of n scores chunks r, r + n, r + 2n, ... exactly as one process would score them (the same
users, padding and micro-batches), and every process then holds every chunk's result: the
numbers equal a one-process run's bit for bit, N processes score N times faster, and one process
writes the files.
"""

from __future__ import annotations

from typing import Any, TypeVar

from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env

T = TypeVar("T")


def process_state() -> PartialState:
    """The process state, set up the way Accelerator sets it up (ACCELERATE_USE_CPU honoured)
    whichever asks first: a PartialState made otherwise would leave a CPU torchrun undistributed."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def main_print(*args: Any) -> None:
    """print, on the main process only (one line per run, not one per process)."""
    process_state().print(*args)


def warn_if_unsharded(accelerator: Any, stage: str) -> None:
    """accelerate turns FSDP on only for GPUs and other accelerators: asked for on CPU processes,
    it silently trains them as DDP (whole model in each). Say so instead of leaving it silent."""
    from accelerate.utils import DistributedType

    if (
        parse_flag_from_env("ACCELERATE_USE_FSDP")
        and accelerator.distributed_type != DistributedType.FSDP
    ):
        main_print(
            f"{stage}: warning: FSDP was asked for, but accelerate shards only on GPUs and other "
            f"accelerators; these {accelerator.num_processes} {accelerator.device.type} processes "
            f"train as {accelerator.distributed_type.value} (the whole model in each)"
        )


def my_chunks(n_chunks: int) -> range:
    """The chunk indices this process scores."""
    state = process_state()
    return range(state.process_index, n_chunks, state.num_processes)


def gather_chunks(local: dict[int, Any]) -> dict[int, Any]:
    """Every process's {chunk index: result}, merged, on every process."""
    if process_state().num_processes == 1:
        return local
    merged: dict[int, Any] = {}
    for index, value in gather_object(list(local.items())):
        merged[index] = value
    return merged
