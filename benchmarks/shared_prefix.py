"""Shared-prefix scoring vs the peers' naive pairwise rows: DMPO training steps and evaluation.

    .venv/bin/python benchmarks/shared_prefix.py [--users 4] [--steps 2] [--eval-pairs 200]
        [--ks 1,3,5] [--orders listed,both] [--eval-methods shared,cached]

Data: the authors' rec_Amazon_Movie_dpo_ranking_{1,3,5}.json and eval file (../shared/data/dmpo);
model: packaged SmolLM2-135M-Instruct, fp32, 2 threads. Every cell runs in a fresh process so
its peak RSS is its own. Training cells do the same DMPO steps (same users, same LoRA init):
- naive: one row per answer with its full prompt, and the reference forward in every step
  (how LLaMA-Factory and TRL's DPOTrainer do it by default);
- shared: one packed row per user (block attention mask), reference log-probs computed once
  before training (their cost is reported separately, and cached across runs).
Evaluation scores each test pair in the listed candidate order, and in both orders (the
default of `dmporec evaluate`: 2 prompts per pair, 4 answers), naive against the packed trie
("shared") and against the trie behind a KV-cached prefix ("cached", `eval.scorer=cached`).
Both take one backward pass per user and one optimizer step per batch (bounded memory).
Prints a table and writes benchmarks/results/shared_prefix.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dmpo"
RESULTS = Path(__file__).resolve().parent / "results" / "shared_prefix.json"


def cell(
    kind: str, method: str, k: int, users: int, steps: int, eval_pairs: int, orders: str = "listed"
) -> dict:
    import torch

    torch.set_num_threads(2)
    from dmporec.alpaca import read_alpaca
    from dmporec.collate import GroupEncoder
    from dmporec.losses import dmpo_loss
    from dmporec.model import (
        BUILTIN_SMOLLM2,
        ModelConfig,
        add_lora,
        load_base_model,
        load_tokenizer,
    )
    from dmporec.prompts import ChatFormat
    from dmporec.records import TitleNormalization
    from dmporec.scoring import length_order, score_groups

    cfg = ModelConfig(name=BUILTIN_SMOLLM2)
    tok = load_tokenizer(cfg)
    enc = GroupEncoder(tok, ChatFormat.from_tokenizer(tok))
    norm = TitleNormalization()
    if kind == "eval":
        model = load_base_model(cfg).eval()
        groups = [
            enc.group(r, orders=orders)
            for r in read_alpaca(DATA / "rec_Amazon_Movie_eval_ranking.json", norm)[:eval_pairs]
        ]
        with torch.no_grad():
            score_groups(model, groups[:2], method=method)  # warm-up
            start = time.perf_counter()
            # as `dmporec evaluate` batches: 16 users a call, in length order
            order = length_order(groups)
            logps = torch.zeros(len(groups), groups[0].n_answers)
            for i in range(0, len(order), 16):
                chunk = order[i : i + 16]
                logps[chunk] = score_groups(model, [groups[u] for u in chunk], method=method).logps
        wall = time.perf_counter() - start
        return {
            "kind": kind,
            "method": method,
            "k": k,
            "pairs": len(groups),
            "wall_s": wall,
            "pairs_per_s": len(groups) / wall,
            "tokens": sum(g.tokens(method) for g in groups),
            "orders": orders,
            # chosen answers are the even columns: sum over the listings, then compare
            "accuracy": (logps[:, 0::2].sum(1) > logps[:, 1::2].sum(1)).float().mean().item(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }

    torch.manual_seed(0)
    model = add_lora(load_base_model(cfg), cfg)
    for name, p in model.named_parameters():  # a trained-looking adapter, identical in every cell
        if "lora_B" in name:
            p.data.normal_(
                0, 0.01, generator=torch.Generator().manual_seed(zlib.crc32(name.encode()))
            )
    records = read_alpaca(DATA / f"rec_Amazon_Movie_dpo_ranking_{k}.json", norm)
    groups = [enc.group(r, k=k) for r in records[: users * steps]]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def reference(batch):
        with torch.no_grad(), model.disable_adapter():
            return score_groups(model, batch, method=method).logps

    ref_start = time.perf_counter()
    precomputed = (
        [reference(groups[i : i + users]) for i in range(0, len(groups), users)]
        if method == "shared"
        else None
    )
    ref_wall = time.perf_counter() - ref_start
    losses, step_times, tokens = [], [], 0
    for s in range(steps):
        batch = groups[s * users : (s + 1) * users]
        start = time.perf_counter()
        step_loss = 0.0
        for u, group in enumerate(batch):  # one user per backward: memory stays bounded for both
            ref = precomputed[s][u : u + 1] if precomputed is not None else reference([group])
            scores = score_groups(model, [group], method=method)
            out = dmpo_loss(
                scores.logps[:, 0::2],
                scores.logps[:, 1::2],
                ref[:, 0::2],
                ref[:, 1::2],
                0.1,
                scores.mask[:, 1::2],
            )
            (out.loss.sum() / len(batch)).backward()
            step_loss += out.loss.sum().item() / len(batch)
        optimizer.step()
        optimizer.zero_grad()
        step_times.append(time.perf_counter() - start)
        losses.append(step_loss)
        tokens += sum(g.tokens(method) for g in batch) * (2 if precomputed is None else 1)
    wall = sum(step_times)
    return {
        "kind": kind,
        "method": method,
        "k": k,
        "users": users * steps,
        "wall_s": wall,
        "users_per_s": users * steps / wall,
        "tokens": tokens,
        "losses": losses,
        "reference_once_s": ref_wall if precomputed is not None else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=4, help="users per training step")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--eval-pairs", type=int, default=200)
    parser.add_argument("--ks", default="1,3,5")
    parser.add_argument("--orders", default="listed,both", help="evaluation listings to time")
    parser.add_argument(
        "--eval-methods", default="shared,cached", help="evaluation layouts to time against naive"
    )
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        kind, method, k, orders = args.cell.split(":")
        print(
            json.dumps(cell(kind, method, int(k), args.users, args.steps, args.eval_pairs, orders))
        )
        return
    if not DATA.is_dir():
        sys.exit(f"needs the authors' files in {DATA}")
    ks = [int(k) for k in args.ks.split(",") if k]
    cells = [("train", m, k, "listed") for k in ks for m in ("naive", "shared")]
    eval_methods = ["naive", *(m for m in args.eval_methods.split(",") if m)]
    cells += [("eval", m, 1, o) for o in args.orders.split(",") if o for m in eval_methods]
    results = []
    for kind, method, k, orders in cells:
        cmd = [
            sys.executable,
            __file__,
            "--cell",
            f"{kind}:{method}:{k}:{orders}",
            "--users",
            str(args.users),
            "--steps",
            str(args.steps),
            "--eval-pairs",
            str(args.eval_pairs),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(
                f"cell {kind}:{method}:{k}:{orders} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
            )
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        _write(args, results, table=None)  # a cell's numbers survive a later failure
        print(
            f"done: {kind} {method} k={k} {orders}: {results[-1]['wall_s']:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    rows = [
        "| workload | k | naive | shared | speed-up | tokens naive / shared | peak RSS MiB naive / shared | max loss diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    naive = {}  # (kind, k, orders) -> the naive cell every other layout is compared with
    for b in results:
        key = (b["kind"], b["k"], b.get("orders"))
        if b["method"] == "naive":
            naive[key] = b
            continue
        a = naive[key]
        if a["kind"] == "train":
            diff = max(abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=True))
            rows.append(
                f"| DMPO train step | {a['k']} | {a['users_per_s']:.3f} users/s | {b['users_per_s']:.3f} users/s "
                f"| {b['users_per_s'] / a['users_per_s']:.2f}x | {a['tokens']} / {b['tokens']} "
                f"| {a['peak_rss_mib']:.0f} / {b['peak_rss_mib']:.0f} | {diff:.1e} |"
            )
        else:
            listing = "both orders" if a["orders"] == "both" else "listed order"
            layout = ", KV-cached prefix" if b["method"] == "cached" else ""
            rows.append(
                f"| evaluation ({a['pairs']} pairs, {listing}{layout}) | - | {a['pairs_per_s']:.2f} pairs/s | {b['pairs_per_s']:.2f} pairs/s "
                f"| {b['pairs_per_s'] / a['pairs_per_s']:.2f}x | {a['tokens']} / {b['tokens']} "
                f"| {a['peak_rss_mib']:.0f} / {b['peak_rss_mib']:.0f} | acc {a['accuracy']:.3f} / {b['accuracy']:.3f} |"
            )
    table = "\n".join(rows)
    print(table)
    _write(args, results, table)


def _write(args: argparse.Namespace, results: list[dict], table: str | None) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%d"), "args": vars(args), "cells": results}
    if table is None:
        record["unfinished"] = True
    else:
        record["table"] = table
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
