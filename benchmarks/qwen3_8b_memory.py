"""Qwen3-8B's memory, measured without a GPU: the real 8B widths at 1 and 2 layers, extrapolated.

    .venv/bin/python benchmarks/qwen3_8b_memory.py [--config ../shared/models/qwen3/config-Qwen3-8B.json]
        [--ks 1,3,5] [--batches 1,2,4] [--out benchmarks/results/qwen3_8b_memory.json]

What it counts: every tensor the step creates, alive at the same time (parameters, LoRA weights,
gradients, AdamW state, activations kept for backward, logits, masks, temporaries), tracked op by
op by a dispatch mode and freed when torch frees the storage: the peak of that sum is what
`torch.cuda.max_memory_allocated` reports for the same ops (the caching allocator's slack and the
CUDA context, ~0.5-1 GB, come on top: the table keeps 10% and 1 GiB free for them).

How: the model is built and run on PyTorch's "meta" device, where every op gives its output its
real shape and dtype (bf16 here) without computing it, so a Qwen3-8B-wide layer costs seconds,
not the minutes a bf16 matmul takes on this CPU (DMPO's loss, whose checks read values, is
replaced by a sum over the same log-probs: same backward). Each setting runs at 1, 2 and 36
layers: a layer's cost is the difference of 1 and 2, and 2 + 34 x that (the extrapolation) is
kept beside the direct 36-layer count, which the table and the fit use. First (unless --no-check) one setting is counted in a real fp32 CPU run
at 1 layer and on meta, which must agree (to 1e-5), so the meta count is shown to be what a real
run allocates (the attention stand-in below is the same in both).

One user = one authors' DPO record (MovieLens-1M, or --dataset rec_Amazon_Movie) (their real prompts, Qwen3's real tokenizer and
chat template, thinking off), the 8B configs' settings: LoRA r=8 on all linear layers, the shared
layout, micro-batches of `batch_size` users, max_batch_tokens 16384. Attention is counted as FlexAttention (the CUDA path) holds it: output and log-sum-exp kept for
backward, grouped-query heads without copies, no [T, T] scores; the block mask is counted as the
dense boolean SDPA takes (FlexAttention's BlockMask is smaller: a slight overestimate).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import weakref
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
QWEN3 = SHARED / "models" / "qwen3"
sys.path.insert(0, str(ROOT / "src"))

from dmporec.collate import GroupEncoder, split_pairs  # noqa: E402
from dmporec.files import atomic_write_text  # noqa: E402
from dmporec.hf_compat import enable_checkpointing  # noqa: E402
from dmporec.model import ModelConfig, add_lora  # noqa: E402
from dmporec.prompts import ChatFormat  # noqa: E402
from dmporec.random_model import random_config  # noqa: E402
from dmporec.scoring import score_groups  # noqa: E402

GIB = 2**30
GPUS_GB = (24, 48, 80, 141)  # the cards' memory in GB (10^9 bytes), as sold
RESERVE = 0.10  # of the card, for the caching allocator's slack
CONTEXT_GIB = 1.0  # CUDA context and kernels


class _FlashLike(torch.autograd.Function):
    """Attention as FlexAttention (and every flash kernel) holds it: the output and a float32
    log-sum-exp per query are saved for backward, no [T, T] tensor; backward makes dq, dk, dv.
    Values are not computed (memory only)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _flash_like(
    q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    return _FlashLike.apply(q, k, v)


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage alive, op by op, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        n = storage.nbytes()
        self._seen[storage] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, n)

    def _free(self, n: int) -> None:
        self.live -= n

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


def _records(name: str, n: int) -> list:
    from dmporec.alpaca import read_alpaca

    records = read_alpaca(SHARED / "data" / "dmpo" / name)
    return (records * (n // len(records) + 1))[:n]


def _model(config, device: str, dtype: torch.dtype, checkpointing: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model = add_lora(model, ModelConfig(lora_target_modules="all-linear"))
    if checkpointing:
        enable_checkpointing(model)
    return model


def _counted(device: str):
    """The context every measurement runs in: tensors on `device`, attention counted as
    FlexAttention holds it (no GQA copies of the keys and values, no [T, T] tensor)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.device(device))
    stack.enter_context(mock.patch.dict(os.environ, {"TRANSFORMERS_SDPA_FORCE_GQA": "1"}))
    stack.enter_context(mock.patch.object(F, "scaled_dot_product_attention", _flash_like))
    return stack


def measure(
    config,
    enc,
    *,
    dataset: str,
    k: int,
    batch: int,
    checkpointing: bool,
    device: str = "meta",
    dtype: torch.dtype = torch.bfloat16,
    max_batch_tokens: int = 16384,
) -> dict:
    """Peak bytes alive during one DMPO training micro-batch of `batch` users (forward, backward,
    the LoRA AdamW step), and the bytes of the weights it starts from."""
    groups = [enc.group(r, k=k) for r in _records(f"{dataset}_dpo_ranking_{k}.json", batch)]
    counter = LiveBytes()
    with _counted(device), counter:
        model = _model(config, device, dtype, checkpointing)
        weights = counter.live
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        model.train()
        scores = score_groups(model, groups, layout="shared", max_batch_tokens=max_batch_tokens)
        chosen, rejected = split_pairs(scores.logps)
        # DMPO's loss is a few scalars per user and its checks read values, which a meta tensor
        # lacks: any loss reaching every answer's log-prob makes the same backward.
        (chosen.sum() - rejected.sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    tokens = sum(g.tokens("shared") for g in groups)
    return {"weights": weights, "peak": counter.peak, "tokens": tokens}


def measure_scoring(
    config,
    enc,
    *,
    name: str,
    k: int | None,
    orders: str,
    batch: int,
    max_batch_tokens: int,
    device: str = "meta",
    dtype: torch.dtype = torch.bfloat16,
) -> dict:
    """Peak bytes of one no-grad scoring call over `batch` users (the reference pass, evaluation)."""
    groups = [enc.group(r, k=k, orders=orders) for r in _records(name, batch)]
    counter = LiveBytes()
    with _counted(device), counter:
        model = _model(config, device, dtype, checkpointing=False)
        weights = counter.live
        model.eval()
        with torch.no_grad():
            score_groups(model, groups, layout="shared", max_batch_tokens=max_batch_tokens)
    return {
        "weights": weights,
        "peak": counter.peak,
        "tokens": sum(g.tokens("shared") for g in groups),
    }


def extrapolate(one: dict, two: dict, layers: int) -> dict:
    """36 layers from 1 and 2: weights and the step's own bytes each grow by their per-layer
    difference."""
    w = two["weights"] + (layers - 2) * (two["weights"] - one["weights"])
    step_one, step_two = one["peak"] - one["weights"], two["peak"] - two["weights"]
    step = step_two + (layers - 2) * (step_two - step_one)
    return {"weights": w, "per_layer": step_two - step_one, "peak": w + step}


def fits(peak: int) -> list[int]:
    """The card sizes (GB) whose memory, less 10% and 1 GiB, holds `peak` bytes."""
    return [g for g in GPUS_GB if peak <= g * 1e9 * (1 - RESERVE) - CONTEXT_GIB * GIB]


def _row(phase: str, k: int | None, users: int, ckpt: bool, counts: list[dict], depth: int) -> dict:
    """A table row from the counts at 1, 2 and `depth` layers: the direct count, and the
    extrapolation from 1 and 2 beside it."""
    one, two, full = counts
    ext = extrapolate(one, two, depth)
    return {
        "phase": phase, "k": k, "micro_batch": users, "checkpointing": ckpt,
        "tokens": one["tokens"], "per_layer_gib": ext["per_layer"] / GIB,
        "weights_gib": full["weights"] / GIB, "peak_gib": full["peak"] / GIB,
        "extrapolated_peak_gib": ext["peak"] / GIB, "fits_gb": fits(full["peak"]),
    }  # fmt: skip


def check(config_path: str, enc, dataset: str) -> dict:
    """One setting counted for real (fp32 CPU, 1 layer) and on meta: equal to 1e-5 (at Qwen3-8B's
    widths they were equal to the byte; at small widths a CPU kernel's scratch differs by <1 KB)."""
    config = random_config(config_path, layers=1, full_width=True)
    real, meta = (
        measure(config, enc, dataset=dataset, k=3, batch=1, checkpointing=True, device=device,
                dtype=torch.float32)
        for device in ("cpu", "meta")
    )  # fmt: skip
    diff = abs(real["peak"] - meta["peak"])
    return {
        "real_cpu_fp32": real,
        "meta_fp32": meta,
        "diff_bytes": diff,
        "ok": diff <= 1e-5 * real["peak"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(QWEN3 / "config-Qwen3-8B.json"))
    parser.add_argument("--tokenizer", default=str(QWEN3))
    parser.add_argument(
        "--dataset",
        default="rec_data_ml_1m",
        help="rec_data_ml_1m or rec_Amazon_Movie (prompt lengths)",
    )
    parser.add_argument("--ks", default="1,3,5")
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument(
        "--eval-batch", type=int, default=32, help="the 8B configs' eval.batch_size"
    )
    parser.add_argument("--no-check", action="store_true", help="skip the real fp32 CPU count")
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "qwen3_8b_memory.json")
    )
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    enc = GroupEncoder(
        tokenizer, ChatFormat.from_tokenizer(tokenizer, template_kwargs={"enable_thinking": False})
    )
    depth = json.loads(Path(args.config).read_text())["num_hidden_layers"]
    configs = {n: random_config(args.config, layers=n, full_width=True) for n in (1, 2, depth)}
    result: dict = {
        "dataset": args.dataset,
        "config": args.config,
        "layers": depth,
        "dtype": "bfloat16",
        "rows": [],
    }
    if not args.no_check:
        result["check"] = check(args.config, enc, args.dataset)
    ks = args.ks.split(",")
    settings = [
        (ckpt, int(k), int(b))
        for ckpt in (True, False)
        for k in ks
        for b in args.batches.split(",")
    ]
    for ckpt, k, b in tqdm(settings, desc="settings"):
        counts = [
            measure(configs[n], enc, dataset=args.dataset, k=k, batch=b, checkpointing=ckpt)
            for n in (1, 2, depth)
        ]
        result["rows"].append(_row("dmpo step", k, b, ckpt, counts, depth))
    scored = [
        ("reference pass", f"{args.dataset}_dpo_ranking_{k}.json", int(k), "listed", 16384)
        for k in ks
    ]
    scored.insert(1, ("evaluation", f"{args.dataset}_eval_ranking.json", None, "both", 32768))
    for phase, name, k, orders, max_batch_tokens in scored:
        counts = [
            measure_scoring(configs[n], enc, name=name, k=k, orders=orders,
                            batch=args.eval_batch, max_batch_tokens=max_batch_tokens)
            for n in (1, 2, depth)
        ]  # fmt: skip
        result["rows"].append(_row(phase, k, args.eval_batch, False, counts, depth))
    result["wall_s"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    if "check" in result:
        c = result["check"]
        print(
            f"check (1 layer, fp32, k=3, 1 user): real CPU peak {c['real_cpu_fp32']['peak']} B, "
            f"meta {c['meta_fp32']['peak']} B: {c['diff_bytes']} B apart ({'ok' if c['ok'] else 'TOO FAR'})"
        )
    print(table(result))
    print(f"wrote {out} ({result['wall_s']} s)")
    return result


def table(result: dict) -> str:
    lines = [
        f"| phase | k | users per call | checkpointing | tokens | GiB per layer "
        f"| peak GiB, {result['layers']} layers | from 1 and 2 layers | fits (GB cards) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        fit = ", ".join(str(g) for g in r["fits_gb"]) or "none"
        lines.append(
            f"| {r['phase']} | {r['k'] if r['k'] is not None else '-'} | {r['micro_batch']} "
            f"| {'on' if r['checkpointing'] else 'off'} | {r['tokens']} "
            f"| {r['per_layer_gib']:.3f} | {r['peak_gib']:.1f} | {r['extrapolated_peak_gib']:.1f} "
            f"| {fit} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
