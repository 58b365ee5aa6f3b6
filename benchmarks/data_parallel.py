"""Data parallelism measured on this machine: a DMPO k=3 stage and an evaluation, with 1 process
and with 2 (torchrun, gloo, CPU).

    .venv/bin/python benchmarks/data_parallel.py [--users 32] [--test-users 48]
        [--out benchmarks/results/data_parallel.json]

Demo data and the packaged SmolLM2-135M (configs/demo.yaml), fp32. One process uses both cores
(2 torch threads); two processes get one core each (torchrun sets OMP_NUM_THREADS=1), so on 2
cores little gain is possible: the point is that the scaling code runs and keeps the numbers
(evaluation's predictions must be identical; DMPO at the same effective batch - grad_accum 2 on
one process, 1 on two - must end at nearly the same loss). On GPUs, one per process, the gain
is the GPU check's to measure.
- DMPO: one short SFT first (shared by both), then `dmporec dmpo --sft-dir` on --users users:
  training users/s from metrics.jsonl's elapsed time; the reference pass (sharded over the
  processes) is the rest of the stage's wall time.
- Evaluation: `dmporec evaluate --stage zero_shot` on --test-users test users (both orders).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = str(ROOT / "configs" / "demo.yaml")


def _run(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=32, help="DMPO training users")
    parser.add_argument("--test-users", type=int, default=48)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "data_parallel.json"
    )
    args = parser.parse_args()
    demo = (
        f"data.demo={{train_users: {args.users}, valid_users: 0, "
        f"test_users: {args.test_users}, negatives: 3, seed: 0}}"
    )
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        _run([str(BIN / "dmporec"), "sft", "--config", CONFIG, demo, f"output_dir={base}",
              "data.demo.train_users=4", "sft.batch_size=1", "sft.grad_accum=2"], env)  # fmt: skip
        for procs in (1, 2):
            launcher = (
                [str(BIN / "dmporec")]
                if procs == 1
                else [str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "dmporec"]
            )
            out = Path(tmp) / f"p{procs}"
            wall = _run([*launcher, "dmpo", "--config", CONFIG, demo, f"output_dir={out}",
                         "dmpo.batch_size=1", f"dmpo.grad_accum={2 // procs}", "--sft-dir", str(base / "sft")], env)  # fmt: skip
            steps = [
                json.loads(x) for x in (out / "dmpo" / "metrics.jsonl").read_text().splitlines()
            ]
            summary = json.loads((out / "dmpo" / "summary.json").read_text())
            train_s = steps[-1]["elapsed_s"]
            rows.append(
                {
                    "phase": "dmpo k=3",
                    "processes": procs,
                    "users": args.users,
                    "train_s": train_s,
                    "users_per_s": args.users / train_s,
                    "reference_and_setup_s": summary["wall_s"] - train_s,
                    "stage_wall_s": summary["wall_s"],
                    "command_wall_s": wall,
                    "final_loss": steps[-1]["loss"],
                    "steps": len(steps),
                }  # fmt: skip
            )
            wall = _run([*launcher, "evaluate", "--stage", "zero_shot", "--config", CONFIG, demo,
                         f"output_dir={out}"], env)  # fmt: skip
            summary = json.loads((out / "zero_shot" / "summary.json").read_text())
            pairs = json.loads((out / "zero_shot" / "eval.json").read_text())["pairs"]
            rows.append(
                {
                    "phase": "evaluation",
                    "processes": procs,
                    "pairs": pairs,
                    "eval_s": summary["wall_s"],
                    "pairs_per_s": pairs / summary["wall_s"],
                    "command_wall_s": wall,
                    "predictions": (out / "zero_shot" / "predictions.jsonl").read_text(),
                }  # fmt: skip
            )
    evals = [r for r in rows if r["phase"] == "evaluation"]
    same = evals[0].pop("predictions") == evals[1].pop("predictions")
    dmpo = [r for r in rows if r["phase"] != "evaluation"]
    table = "\n".join(
        [
            "| workload | 1 process | 2 processes | ratio | check |",
            "|---|---|---|---|---|",
            f"| DMPO k=3 training, {args.users} users | {dmpo[0]['users_per_s']:.3f} users/s "
            f"| {dmpo[1]['users_per_s']:.3f} users/s "
            f"| {dmpo[1]['users_per_s'] / dmpo[0]['users_per_s']:.2f}x "
            f"| final loss {dmpo[0]['final_loss']:.4f} / {dmpo[1]['final_loss']:.4f} |",
            f"| DMPO reference pass + setup | {dmpo[0]['reference_and_setup_s']:.1f} s "
            f"| {dmpo[1]['reference_and_setup_s']:.1f} s "
            f"| {dmpo[0]['reference_and_setup_s'] / dmpo[1]['reference_and_setup_s']:.2f}x | |",
            f"| evaluation, {evals[0]['pairs']} pairs, both orders | "
            f"{evals[0]['pairs_per_s']:.3f} pairs/s | {evals[1]['pairs_per_s']:.3f} pairs/s "
            f"| {evals[1]['pairs_per_s'] / evals[0]['pairs_per_s']:.2f}x "
            f"| predictions {'identical' if same else 'DIFFER'} |",
        ]
    )
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%d"), "rows": rows, "same_predictions": same}
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps({**record, "table": table}, indent=2) + "\n")
    tmp_out.replace(args.out)


if __name__ == "__main__":
    main()
