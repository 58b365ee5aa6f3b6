"""The LoRA training loop both stages share: Accelerate, accumulation, cosine schedule, resume.

A stage supplies the examples, a collate function that makes a batch of them, and its step,
`step_fn(model, batch) -> (loss, logs)` (stages/sft.py's sft_step, stages/dmpo.py's dmpo_step);
the loop does the rest: seeded order per epoch, gradient accumulation and clipping, checkpoints
it can resume from (adapter + optimizer + scheduler + position; safetensors for weights),
metrics as JSON lines and a progress bar. Every parameter that requires a gradient trains: the
adapter's, and any the stage left trainable outside it (model.item_tokens' projection, kept in
a checkpoint as OTHERS; the stage saves it with its result).
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from dmporec.config import ConfigError, TrainConfig, TrainingDiverged
from dmporec.distributed import warn_if_unsharded
from dmporec.files import append_jsonl, atomic_write_text
from dmporec.hf_compat import enable_checkpointing

StepFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]
Collate = Callable[[list[Any]], Any]
ValidateFn = Callable[[torch.nn.Module], dict[str, float]]


class PeakMemory:
    """Peak resident memory (CPU, sampled) and peak CUDA memory while the block runs, in MiB."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak_rss_mib, self.peak_gpu_mib = interval, 0.0, 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        proc = psutil.Process()
        while True:
            self.peak_rss_mib = max(self.peak_rss_mib, proc.memory_info().rss / 2**20)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if torch.cuda.is_available():
            self.peak_gpu_mib = torch.cuda.max_memory_allocated() / 2**20


OTHERS = "trainable.safetensors"  # in a checkpoint: the trained weights outside the adapter


def _outside_adapter(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The trainable parameters that are not LoRA's (item_tokens' projection), by name: a
    checkpoint keeps them beside the adapter; the stage saves them itself when it ends."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}


def _save_checkpoint(
    ckpt: Path,
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    position: dict[str, float],
) -> None:
    """Adapter (safetensors), optimizer and scheduler state, and where the loop stands."""
    if not accelerator.is_main_process:
        return
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.unwrap_model(model).save_pretrained(tmp / "adapter")
    others = _outside_adapter(accelerator.unwrap_model(model))
    if others:
        save_file({k: v.detach().cpu().contiguous() for k, v in others.items()}, tmp / OTHERS)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    atomic_write_text(tmp / "position.json", json.dumps(position))
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.rename(ckpt)


def _finish_swap(ckpt: Path) -> None:
    """A run killed after writing the new checkpoint under .tmp (position.json is written last,
    so it is complete) and before renaming it into place (_save_checkpoint) leaves the old one
    whole, partly removed or gone: the new one takes its place."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    if (tmp / "position.json").is_file():
        shutil.rmtree(ckpt, ignore_errors=True)
        tmp.rename(ckpt)


def _load_checkpoint(
    ckpt: Path, accelerator: Accelerator, model: torch.nn.Module, optimizer: Any, scheduler: Any
) -> dict[str, int]:
    peft_model = accelerator.unwrap_model(model)
    # Loaded on the CPU and copied to the parameters' device: "cpu:0", the device of a process
    # in a multi-process CPU run, is one neither safetensors nor torch.load accepts.
    weights = load_file(ckpt / "adapter" / "adapter_model.safetensors")
    set_peft_model_state_dict(peft_model, weights)
    others = _outside_adapter(peft_model)
    if others:
        saved = load_file(ckpt / OTHERS)
        with torch.no_grad():
            for name, param in others.items():
                param.copy_(saved[name])
    optimizer.load_state_dict(  # moves the state to the parameters' device
        torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu")
    )
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    return json.loads((ckpt / "position.json").read_text())


_TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_tracker(name: str) -> None:
    """ConfigError (one line) when the tracker's package is not installed."""
    import importlib.util

    package = _TRACKER_PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"report_to={name} needs its package: pip install {package}")


def flat_hparams(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as 'section.key' -> int, float, str or bool (what trackers accept)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def train_lora(
    model: PeftModel,
    examples: Sequence[Any],
    step_fn: StepFn,
    tc: TrainConfig,
    out_dir: Path,
    *,
    stage: str,
    collate: Collate = list,
    validate: ValidateFn | None = None,
    hparams: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train the model's LoRA adapter on `examples`; saves `out_dir/adapter`. Returns a summary.

    `collate` turns a list of examples into the batch `step_fn` takes (default: the list itself).

    With `validate` and `tc.eval_every_steps`, `validate(model)` (in eval mode, no gradients)
    runs every that many optimizer steps and after the last; its values join that step's row of
    metrics.jsonl. `tc.report_to` also sends every row to that tracker, with `hparams` (the
    run config) as its hyperparameters."""
    tracking = tc.report_to != "none"
    if tracking:
        check_tracker(tc.report_to)
    accelerator = Accelerator(
        gradient_accumulation_steps=tc.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with=tc.report_to if tracking else None,
        project_dir=out_dir / "tracking" if tracking else None,
    )
    warn_if_unsharded(accelerator, stage)
    if tracking:
        accelerator.init_trackers(f"dmporec-{stage}", config=flat_hparams(hparams or {}))
    try:
        return _fit(accelerator, model, examples, step_fn, collate, tc, out_dir, stage, validate)
    finally:
        # Also when the stage stops (diverged, interrupted, bad data): what was logged reaches
        # the tracker's files. Not end_training(), which would end the process group that the
        # stages after this one (and the barrier before saving) still need.
        for tracker in accelerator.trackers:
            tracker.finish()


def _fit(
    accelerator: Accelerator,
    model: PeftModel,
    examples: Sequence[Any],
    step_fn: StepFn,
    collate: Collate,
    tc: TrainConfig,
    out_dir: Path,
    stage: str,
    validate: ValidateFn | None,
) -> dict[str, float]:
    """train_lora's loop, with `accelerator` set up (and its tracker, if any, started): set up,
    resume, then a forward and backward pass per micro-batch (`_Training.train_on`) and, after
    each optimizer step, the end-of-step work (`_Training.end_of_step`: logs, validation,
    metrics row, checkpoint)."""
    run = _Training.prepare(accelerator, model, examples, collate, tc, out_dir, stage, validate)
    position = run.resume()
    clock = _Clock(before=position.get("elapsed_s", 0.0))
    run.model.train()
    step, last_logs = position["step"], {}
    micro_logs: list[dict[str, float]] = []  # the micro-batches of the current optimizer step
    with tqdm(
        total=run.total_steps,
        initial=step,
        desc=stage,
        unit="step",
        disable=not accelerator.is_local_main_process,
    ) as bar:
        for epoch in range(position["epoch"], tc.epochs):
            for batch_index, batch in run.batches(epoch, position):
                lr = run.scheduler.get_last_lr()[0]  # the rate this step uses
                where = f"step {step + 1} (epoch {epoch + 1}, batch {batch_index + 1})"
                micro_logs.append(run.train_on(batch, step_fn, where))
                if not accelerator.sync_gradients:
                    continue  # the optimizer steps once every tc.grad_accum micro-batches
                step += 1
                done = {"epoch": epoch, "batch": batch_index + 1, "step": step}
                last_logs = run.end_of_step(micro_logs, lr, done, clock)
                micro_logs.clear()
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in last_logs.items()})
            run.save_checkpoint(
                {"epoch": epoch + 1, "batch": 0, "step": step, "elapsed_s": clock()}
            )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(run.model).save_pretrained(out_dir / "adapter")
        shutil.rmtree(run.checkpoint, ignore_errors=True)  # finished: the adapter is the result
    return {"steps": step, **last_logs, "resumed_s": clock.before}


@dataclass
class _Clock:
    """Seconds of training, counting those of the invocations a resumed run continues."""

    before: float
    start: float = field(default_factory=time.perf_counter)

    def __call__(self) -> float:
        return round(self.before + time.perf_counter() - self.start, 2)


@dataclass
class _Training:
    """What train_lora's loop works on, as Accelerate prepared it, and its pieces of work."""

    accelerator: Accelerator
    model: PeftModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Any  # the prepared DataLoader
    params: list[torch.nn.Parameter]  # the adapter's, which the optimizer steps
    total_steps: int
    tc: TrainConfig
    stage: str
    out_dir: Path
    validate: ValidateFn | None

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / "checkpoint"

    @property
    def metrics(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    @classmethod
    def prepare(
        cls,
        accelerator: Accelerator,
        model: PeftModel,
        examples: Sequence[Any],
        collate: Collate,
        tc: TrainConfig,
        out_dir: Path,
        stage: str,
        validate: ValidateFn | None,
    ) -> _Training:
        """A loader shuffling the examples in a seeded order per epoch, AdamW on the adapter,
        a cosine schedule with warm-up."""
        set_seed(tc.seed)
        if tc.gradient_checkpointing:
            enable_checkpointing(model)
        loader = DataLoader(
            list(examples), batch_size=tc.batch_size, shuffle=True, collate_fn=collate
        )
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        total_steps = math.ceil(len(loader) / tc.grad_accum) * tc.epochs
        scheduler = accelerator.prepare(
            get_cosine_schedule_with_warmup(
                optimizer,
                int(tc.warmup_ratio * total_steps) * accelerator.num_processes,
                total_steps * accelerator.num_processes,
            )
        )
        return cls(
            accelerator=accelerator,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            loader=loader,
            params=params,
            total_steps=total_steps,
            tc=tc,
            stage=stage,
            out_dir=out_dir,
            validate=validate,
        )

    def resume(self) -> dict[str, Any]:
        """Where the loop starts: the checkpoint's position (its state loaded, metrics.jsonl cut
        to its steps), or the beginning (an old metrics.jsonl removed)."""
        acc, ckpt = self.accelerator, self.checkpoint
        if acc.is_main_process:
            _finish_swap(ckpt)
        acc.wait_for_everyone()
        if not (ckpt / "position.json").is_file():
            if self.metrics.exists() and acc.is_main_process:
                self.metrics.unlink()  # a fresh start: old curves would mislead
            return {"epoch": 0, "batch": 0, "step": 0}
        position = _load_checkpoint(ckpt, acc, self.model, self.optimizer, self.scheduler)
        if self.metrics.is_file() and acc.is_main_process:  # drop steps the checkpoint lacks
            kept = [
                line
                for line in self.metrics.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= position["step"]
            ]
            atomic_write_text(self.metrics, "".join(line + "\n" for line in kept))
        acc.print(
            f"{self.stage}: resuming from {ckpt} at epoch {position['epoch']}, "
            f"step {position['step']}"
        )
        return position

    def batches(self, epoch: int, position: dict[str, Any]) -> Iterator[tuple[int, Any]]:
        """(index, batch) in the epoch's seeded order, from where `position` left it."""
        self.loader.set_epoch(epoch)
        skip = position["batch"] if epoch == position["epoch"] else 0
        loader = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
        return enumerate(loader, start=skip)

    def train_on(self, batch: Any, step_fn: StepFn, where: str) -> dict[str, float]:
        """One micro-batch: the stage's step, backward, and (once the micro-batches of an
        optimizer step are all in; Accelerate skips them before) clipping and the optimizer
        step. Returns the step's logs and its loss."""
        acc, tc = self.accelerator, self.tc
        with acc.accumulate(self.model):
            loss, logs = step_fn(self.model, batch)
            if not torch.isfinite(loss.detach()).all():
                raise TrainingDiverged(
                    f"{self.stage}: the loss became {loss.item()} at {where}; the stage is not "
                    f"finished and its last checkpoint is kept. Lower {self.stage}.learning_rate "
                    f"({tc.learning_rate:g}) or check the data"
                )
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(self.params, tc.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        return {"loss": loss.item(), **logs}

    def end_of_step(
        self,
        micro_logs: list[dict[str, float]],
        lr: float,
        position: dict[str, Any],
        clock: _Clock,
    ) -> dict[str, float]:
        """After the optimizer step that ends at `position`: its logs (the mean over its
        micro-batches and the processes) with the validation metrics when due (every
        tc.eval_every_steps and at the end); on the main process, its row for the tracker and
        metrics.jsonl, and a checkpoint every tc.save_every_steps. Returns the logs."""
        acc, tc, step = self.accelerator, self.tc, position["step"]
        keys = list(micro_logs[0])
        means = torch.tensor(
            [sum(m[k] for m in micro_logs) / len(micro_logs) for k in keys], device=acc.device
        )
        logs = dict(zip(keys, acc.reduce(means, reduction="mean").tolist(), strict=True))
        due = tc.eval_every_steps and (step % tc.eval_every_steps == 0 or step == self.total_steps)
        if self.validate and due:
            self.model.eval()
            with torch.no_grad():
                logs.update(self.validate(acc.unwrap_model(self.model)))
            self.model.train()
        if not acc.is_main_process:
            return logs
        acc.log({"lr": lr, **logs}, step=step)  # no tracker: a no-op
        epoch = position["epoch"] + position["batch"] / len(self.loader)
        row = {"stage": self.stage, "step": step, "epoch": epoch, "lr": lr, **logs}
        append_jsonl(self.metrics, {**row, "elapsed_s": clock()})
        if tc.save_every_steps and step % tc.save_every_steps == 0:
            self.save_checkpoint({**position, "elapsed_s": clock()})
        return logs

    def save_checkpoint(self, position: dict[str, Any]) -> None:
        _save_checkpoint(
            self.checkpoint, self.accelerator, self.model, self.optimizer, self.scheduler, position
        )
