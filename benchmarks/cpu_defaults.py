"""CPU defaults by measurement: users per training micro-batch, and evaluation's token budget.

    .venv/bin/python benchmarks/cpu_defaults.py [--k 3] [--users 8] [--micro-batches 1,2,4,8]
        [--eval-pairs 96] [--budgets 2048,4096,8192,16384] [--repeats 2] [--out FILE]

Training: DMPO k=3 steps of the shared layout (benchmarks/shared_prefix.py's training cell: the
authors' Amazon Movies users, packaged SmolLM2-135M fp32, 2 threads, reference precomputed),
`--users` timed users in each cell, M users per micro-batch (one scoring call and backward each;
grad_accum = users / M does not change the work), after one untimed warm-up step. Accumulation
changes the optimization, not the speed: it is a training setting, not a CPU one.
Evaluation: the first `--eval-pairs` test pairs in both orders, 16 users per call as `dmporec
evaluate` does, at each `eval.max_batch_tokens` budget.
Every cell runs in a fresh process (its peak RSS is its own), `--repeats` rounds of all cells in
turn (a slow first process, measured once at 0.56x of its rerun, does not decide a default); the
table gives each cell's best round and every round's rate. Prints the table, writes
benchmarks/results/cpu_defaults.json. Run it alone on the machine: timings beside another job
mean nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from dmporec.files import atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cpu_defaults.json"


def run_cell(kind: str, value: int, args: argparse.Namespace) -> dict:
    """One cell in a fresh process: a micro-batch size (train) or a token budget (eval)."""
    cmd = [sys.executable, __file__, "--cell", f"{kind}:{value}", "--k", str(args.k)]
    cmd += ["--users", str(args.users), "--eval-pairs", str(args.eval_pairs)]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"cell {kind}:{value} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cell(kind: str, value: int, args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(HERE))
    import shared_prefix

    if kind == "train":
        if args.users % value:
            raise SystemExit(f"--users {args.users} is not a multiple of the micro-batch {value}")
        result = shared_prefix.cell(
            "train", "shared", args.k, value, args.users // value, 0,
            model_name=args.model, warmup=1,
        )  # fmt: skip
        return {**result, "micro_batch": value}
    result = shared_prefix.cell(
        "eval", "shared", 1, 1, 1, args.eval_pairs, "both", value, model_name=args.model
    )
    return {**result, "max_batch_tokens": value}


RATE = {"train": "users_per_s", "eval": "pairs_per_s"}
SETTING = {"train": "micro_batch", "eval": "max_batch_tokens"}


def best_rounds(results: list[dict]) -> list[dict]:
    """Each cell's fastest round, with every round's rate (`rates`), in first-seen order."""
    cells: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        cells.setdefault((r["kind"], r[SETTING[r["kind"]]]), []).append(r)
    best = []
    for (kind, _), rounds in cells.items():
        rates = [r[RATE[kind]] for r in rounds]
        best.append({**max(rounds, key=lambda r: r[RATE[kind]]), "rates": rates})
    return best


def _rates(r: dict) -> str:
    return " / ".join(f"{x:.3f}" for x in r.get("rates", [r[RATE[r["kind"]]]]))


def table(results: list[dict]) -> str:
    results = best_rounds(results)
    train = [r for r in results if r["kind"] == "train"]
    evals = [r for r in results if r["kind"] == "eval"]
    lines = []
    if train:
        best = max(r["users_per_s"] for r in train)
        lines += [
            f"DMPO k={train[0]['k']} training, shared layout, {train[0]['users']} timed users:",
            "",
            "| users per micro-batch | users/s (best round) | vs best | every round | tokens "
            "| peak RSS MiB |",
            "|---|---|---|---|---|---|",
        ]
        for r in train:
            lines.append(
                f"| {r['micro_batch']} | {r['users_per_s']:.3f} | {r['users_per_s'] / best:.2f} "
                f"| {_rates(r)} | {r['tokens']} | {r['peak_rss_mib']:.0f} |"
            )
    if evals:
        best = max(r["pairs_per_s"] for r in evals)
        lines += [
            "",
            f"Evaluation, {evals[0]['pairs']} pairs in both orders, 16 users per call:",
            "",
            "| eval.max_batch_tokens | pairs/s (best round) | vs best | every round "
            "| peak RSS MiB | accuracy |",
            "|---|---|---|---|---|---|",
        ]
        for r in evals:
            lines.append(
                f"| {r['max_batch_tokens']} | {r['pairs_per_s']:.3f} | "
                f"{r['pairs_per_s'] / best:.2f} | {_rates(r)} | {r['peak_rss_mib']:.0f} "
                f"| {r['accuracy']:.3f} |"
            )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=3, help="negatives per user")
    parser.add_argument("--users", type=int, default=8, help="timed training users per cell")
    parser.add_argument("--micro-batches", type=_ints, default=[1, 2, 4, 8])
    parser.add_argument("--eval-pairs", type=int, default=96)
    parser.add_argument("--budgets", type=_ints, default=[2048, 4096, 8192, 16384])
    parser.add_argument(
        "--repeats", type=int, default=2, help="rounds of every cell; the table keeps each best"
    )
    parser.add_argument("--model", help="model name (default the packaged SmolLM2-135M)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        kind, value = args.cell.split(":")
        print(json.dumps(cell(kind, int(value), args)))
        return
    for m in args.micro_batches:
        if args.users % m:
            parser.error(f"--users {args.users} is not a multiple of micro-batch {m}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    results = []
    cells = [("train", m) for m in args.micro_batches] + [("eval", b) for b in args.budgets]
    for round_ in range(1, args.repeats + 1):
        for kind, value in cells:
            results.append({**run_cell(kind, value, args), "round": round_})
            print(
                f"done: round {round_}, {kind} {value}: {results[-1]['wall_s']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    text = table(results)
    print(text)
    record = {"date": time.strftime("%Y-%m-%d"), "args": vars(args) | {"out": str(args.out)}}
    atomic_write_text(
        args.out, json.dumps({**record, "cells": results, "table": text}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
