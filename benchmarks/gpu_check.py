"""The GPU check: one command, one process, one JSON. Run it whenever a CUDA GPU is at hand.

    .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--layers 36] [--users 4]
        [--out benchmarks/results/gpu_check.json]

1. Equality: a random-weight model of the config's architecture at small widths (fp32) scores
   the same groups with the naive, shared and cached layouts, under SDPA and FlexAttention (the
   BlockMask path; transformers compiles flex_attention with torch.compile as training does):
   every answer's log-prob within 1e-4 of naive, and (SDPA, and FlexAttention on CUDA) the LoRA
   gradients of a DMPO loss within 1e-4 relative.
2. Timing at the real shape: a random-weight model with the real config (Qwen3-8B by default,
   bf16 on CUDA; --layers cuts the depth, --small keeps small widths) and LoRA r=8 on all linear
   layers: one DMPO k=3 training step (forward + backward, gradient checkpointing on, as the 8B
   configs train) and one evaluation call over --users users, naive vs shared, with wall time
   and peak memory (CUDA: max_memory_allocated; CPU: peak RSS).
Prompts: the authors' MovieLens-1M records when ../shared is beside the checkout, else the demo
data. On a CPU with `--device cpu --small --layers 1` it runs in seconds (the test suite does),
so the script never rots.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch._dynamo

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
QWEN3 = SHARED / "models" / "qwen3"
sys.path.insert(0, str(ROOT / "src"))

from dmporec.collate import GroupEncoder, split_pairs  # noqa: E402
from dmporec.hf_compat import enable_checkpointing  # noqa: E402
from dmporec.losses import dmpo_loss  # noqa: E402
from dmporec.model import ModelConfig, add_lora  # noqa: E402
from dmporec.prompts import ChatFormat  # noqa: E402
from dmporec.random_model import random_config  # noqa: E402
from dmporec.scoring import score_groups  # noqa: E402

LAYOUTS = ("naive", "shared", "cached")


def _records(n: int) -> list:
    ml1m = SHARED / "data" / "dmpo" / "rec_data_ml_1m_dpo_ranking_3.json"
    if ml1m.is_file():
        from dmporec.alpaca import read_alpaca

        return read_alpaca(ml1m)[:n]
    from dmporec.demo_data import DemoDataConfig, make_demo_data

    return make_demo_data(DemoDataConfig(train_users=n, valid_users=0, test_users=1)).train[:n]


def _model(config, device: torch.device, dtype: torch.dtype, attention: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
    return add_lora(model.to(device), ModelConfig(lora_target_modules="all-linear"))


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def equality(args, tokenizer, device: torch.device) -> list[dict]:
    """Layouts against naive on a small-width model of the architecture, fp32."""
    config = random_config(args.config, layers=2)
    enc = GroupEncoder(tokenizer, ChatFormat.from_tokenizer(tokenizer, template_kwargs=args.kw))
    groups = [enc.group(r, k=3, orders="both") for r in _records(3)]
    checks = []
    for attention in args.attentions.split(","):
        model = _model(config, device, torch.float32, attention)
        model.eval()
        with torch.no_grad():
            naive = score_groups(model, groups, layout="naive").logps
            for layout in LAYOUTS[1:]:
                got = score_groups(model, groups, layout=layout).logps
                diff = (got - naive).abs().max().item()
                checks.append(
                    {
                        "check": f"logps {layout} vs naive",
                        "attention": attention,
                        "max_abs_diff": diff,
                        "ok": diff < 1e-4,
                    }  # fmt: skip
                )
        if attention == "flex_attention" and device.type != "cuda":
            continue  # FlexAttention has no backward on CPU
        model.train()
        grads = {}
        for layout in ("naive", "shared"):
            model.zero_grad()
            scores = score_groups(model, groups, layout=layout)
            chosen, rejected = split_pairs(scores.logps)
            dmpo_loss(chosen, rejected, chosen.detach(), rejected.detach()).loss.sum().backward()
            grads[layout] = torch.cat(
                [p.grad.flatten() for p in model.parameters() if p.requires_grad]
            )
        rel = ((grads["shared"] - grads["naive"]).norm() / grads["naive"].norm()).item()
        checks.append(
            {
                "check": "LoRA gradients shared vs naive",
                "attention": attention,
                "relative_diff": rel,
                "ok": rel < 1e-4,
            }  # fmt: skip
        )
    return checks


def timing(args, tokenizer, device: torch.device) -> list[dict]:
    """One DMPO k=3 step and one evaluation call per layout, at the config's real shape."""
    config = random_config(args.config, layers=args.layers, full_width=not args.small)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    attention = "flex_attention" if device.type == "cuda" else "sdpa"
    enc = GroupEncoder(tokenizer, ChatFormat.from_tokenizer(tokenizer, template_kwargs=args.kw))
    train = [enc.group(r, k=3) for r in _records(args.users)]
    evaluate = [enc.group(r, k=3, orders="both") for r in _records(args.users)]
    model = _model(config, device, dtype, attention)
    enable_checkpointing(model)
    rows = []
    for layout in ("naive", "shared"):
        for phase, groups in (("dmpo step", train), ("evaluation", evaluate)):
            for _attempt in ("warm-up", "timed"):
                _peak_reset(device)
                start = time.perf_counter()
                if phase == "dmpo step":
                    model.train()
                    model.zero_grad()
                    scores = score_groups(model, groups, layout=layout)
                    chosen, rejected = split_pairs(scores.logps)
                    loss = dmpo_loss(chosen, rejected, chosen.detach(), rejected.detach()).loss
                    loss.mean().backward()
                else:
                    model.eval()
                    with torch.no_grad():
                        scores = score_groups(model, groups, layout=layout)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                wall = time.perf_counter() - start
            rows.append(
                {
                    "phase": phase,
                    "layout": layout,
                    "users": len(groups),
                    "wall_s": round(wall, 3),
                    "users_per_s": round(len(groups) / wall, 3),
                    "tokens": scores.encoded,
                    "peak_mib": round(_peak_mib(device)),
                }  # fmt: skip
            )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default=str(QWEN3 / "config-Qwen3-8B.json"))
    parser.add_argument("--tokenizer", default=str(QWEN3))
    parser.add_argument("--layers", type=int, default=None, help="default: the config's depth")
    parser.add_argument("--small", action="store_true", help="small widths for the timing too")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument(
        "--attentions", default="sdpa,flex_attention", help="for the equality checks"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    args.kw = {"enable_thinking": False}
    if args.layers is None:
        args.layers = json.loads(Path(args.config).read_text())["num_hidden_layers"]
    device = torch.device(args.device)
    if device.type == "cpu":
        # torch's CPU FlexAttention template fails to compile once dynamo recompiles it with
        # dynamic sizes; static shapes compile (CUDA uses a different, Triton template).
        torch._dynamo.config.automatic_dynamic_shapes = False  # type: ignore[attr-defined]
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    start = time.perf_counter()
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "config": args.config,
        "layers": args.layers,
        "widths": "small" if args.small else "real",
        "equality": equality(args, tokenizer, device),
        "timing": timing(args, tokenizer, device),
    }
    result["all_ok"] = all(c["ok"] for c in result["equality"])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"device: {result['device']}; equality {'ok' if result['all_ok'] else 'FAILED'}")
    for c in result["equality"]:
        value = c.get("max_abs_diff", c.get("relative_diff"))
        print(f"  {c['check']:<32} {c['attention']:<15} {value:.2e} {'ok' if c['ok'] else 'FAIL'}")
    print(
        "| phase | layout | users | wall s | users/s | tokens | peak MiB |\n|---|---|---|---|---|---|---|"
    )
    for r in result["timing"]:
        print(
            f"| {r['phase']} | {r['layout']} | {r['users']} | {r['wall_s']} | {r['users_per_s']} "
            f"| {r['tokens']} | {r['peak_mib']} |"
        )
    print(f"wrote {args.out} ({result['wall_s']} s)")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["all_ok"] else 1)
