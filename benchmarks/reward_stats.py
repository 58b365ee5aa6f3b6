"""Where preference training moved the answers' probability (issue #36, the "preference
optimization collapse"): held-out reward accuracy and the change of the chosen and rejected
answers' log-likelihood against the reference, from evaluations of the same pairs, and the
training batches' reward statistics over the steps.

    .venv/bin/python benchmarks/reward_stats.py --reference REF_EVAL \
        --cell NAME=EVAL[,METRICS_JSONL] [--cell ...] [--out DIR]

REF_EVAL is the reference (the SFT stage the cells were trained from) evaluated on some pairs,
each EVAL a trained stage evaluated on the same pairs in the same order (evaluation
directories or their predictions.jsonl; both listing orders scored). Per pair and listing
order, an answer's implicit reward is log pi(answer | x) - log ref(answer | x) (DPO's, beta
left out: the same for every cell):
- held-out reward accuracy: the share of (pair, order) whose chosen answer's reward is above
  the rejected one's (what the training batches log as reward_accuracy, on pairs never trained on);
- chosen and rejected shift: the mean reward of the chosen and of the rejected answer. A
  negative chosen shift with a higher accuracy is likelihood displacement: the model ranks
  more pairs right by pushing the rejected answer down faster than the chosen one, the first
  sign of the collapse reported as k grows;
- accuracy: the pairwise accuracy of the cell itself (both orders summed), and of the reference.
Means with 95% bootstrap CIs over users (a user's pairs resampled together).

With METRICS_JSONL (the stage's metrics.jsonl), the training batches' chosen_reward and
reward_accuracy over the steps (rolling mean of --window steps) are plotted in
DIR/reward_stats.png. Writes DIR/reward_stats.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from dmporec.evaluation import chosen_rejected_scores
from dmporec.files import atomic_write_text, read_jsonl, read_steps
from dmporec.metrics import bootstrap_ci, pairwise_accuracy


def predictions(path: Path) -> list[dict]:
    path = path / "predictions.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"reward_stats: {path}: no such file")
    try:
        rows = read_jsonl(path)
    except ValueError as e:
        raise SystemExit(f"reward_stats: {path}: {e}") from None
    fields = ("user_id", "positive", "negative", "positive_listed_first", "chosen_logp",
              "rejected_logp", "chosen_logp_swapped", "rejected_logp_swapped")  # fmt: skip
    for i, row in enumerate(rows, 1):
        missing = [f for f in fields if row.get(f) is None]
        if missing:
            raise SystemExit(
                f"reward_stats: {path}: record {i} has no {', '.join(missing)} (both listing "
                "orders must be scored: eval.orders=both)"
            )
    return rows


def rewards(policy: list[dict], reference: list[dict], where: str) -> dict[str, np.ndarray]:
    """Per pair, averaged over the two listing orders: the chosen and rejected answers' rewards
    and whether the chosen one's is the higher (0, 0.5 or 1)."""

    def key(r: dict) -> tuple[str, str, str, bool]:
        return (r["user_id"], r["positive"], r["negative"], r["positive_listed_first"])

    if [key(r) for r in policy] != [key(r) for r in reference]:
        raise SystemExit(
            f"reward_stats: {where} and the reference do not hold the same pairs in the same "
            "listing orders (other pairs, or another data.prompt_seed)"
        )
    out: dict[str, list[float]] = {"chosen": [], "rejected": [], "correct": []}
    for p, r in zip(policy, reference, strict=True):
        chosen, rejected, correct = [], [], []
        for suffix in ("", "_swapped"):
            c = p[f"chosen_logp{suffix}"] - r[f"chosen_logp{suffix}"]
            j = p[f"rejected_logp{suffix}"] - r[f"rejected_logp{suffix}"]
            chosen.append(c)
            rejected.append(j)
            correct.append(float(c > j))
        out["chosen"].append(float(np.mean(chosen)))
        out["rejected"].append(float(np.mean(rejected)))
        out["correct"].append(float(np.mean(correct)))
    return {k: np.asarray(v) for k, v in out.items()}


def by_user(users: list[str], values: np.ndarray) -> np.ndarray:
    """Each user's mean, so the bootstrap resamples users."""
    groups: dict[str, list[float]] = {}
    for u, v in zip(users, values, strict=True):
        groups.setdefault(u, []).append(float(v))
    return np.array([np.mean(v) for v in groups.values()])


def with_ci(values: np.ndarray) -> dict[str, float]:
    low, high = bootstrap_ci(lambda x: float(np.mean(x)), values)
    return {"mean": float(np.mean(values)), "ci_low": low, "ci_high": high}


def training_curve(path: Path, window: int) -> dict[str, list[float]]:
    steps = read_steps(path)
    out: dict[str, list[float]] = {"step": [float(s["step"]) for s in steps]}
    for key in ("chosen_reward", "reward_accuracy", "loss"):
        values = np.array([s.get(key, np.nan) for s in steps], float)
        kernel = np.ones(min(window, len(values))) / min(window, len(values))
        out[key] = np.convolve(values, kernel, mode="valid").tolist() if len(values) else []
    return out


def plot(curves: dict[str, dict[str, list[float]]], window: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("chosen_reward", "chosen reward (beta x log-ratio)"),
            ("reward_accuracy", "reward accuracy"), ("loss", "loss"))  # fmt: skip
    fig, axes = plt.subplots(1, len(keys), figsize=(13, 3.4))
    for ax, (key, title) in zip(axes, keys, strict=True):
        for name, c in curves.items():
            ax.plot(c["step"][len(c["step"]) - len(c[key]) :], c[key], label=name)
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{title}, training batches, rolling {window}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    partial = path.with_name(path.name + ".partial.png")
    fig.savefig(partial, dpi=90)
    plt.close(fig)
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", type=Path, required=True, help="the reference's evaluation")
    parser.add_argument(
        "--cell",
        action="append",
        required=True,
        help="NAME=EVAL[,METRICS_JSONL]: a trained stage's evaluation of the same pairs (and "
        "its training log); repeatable",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/reward-stats"), help="where to write"
    )
    parser.add_argument("--window", type=int, default=50, help="rolling mean over steps (50)")
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error("--window must be at least 1")
    reference = predictions(args.reference)
    users = [r["user_id"] for r in reference]
    ref_acc = pairwise_accuracy(*chosen_rejected_scores(reference, "both"))
    rows, curves = {}, {}
    for spec in args.cell:
        name, sep, paths = spec.partition("=")
        if not sep or not name:
            parser.error(f"--cell {spec!r}: NAME=EVAL[,METRICS_JSONL]")
        eval_path, _, metrics = paths.partition(",")
        policy = predictions(Path(eval_path))
        r = rewards(policy, reference, eval_path)
        rows[name] = {
            "pairs": len(policy),
            "users": len(set(users)),
            "accuracy": pairwise_accuracy(*chosen_rejected_scores(policy, "both")),
            "reference_accuracy": ref_acc,
            **{key: with_ci(by_user(users, r[key])) for key in ("correct", "chosen", "rejected")},
        }
        if metrics:
            if not Path(metrics).is_file():
                raise SystemExit(f"reward_stats: {metrics}: no such file")
            curves[name] = training_curve(Path(metrics), args.window)
    lines = [
        f"| cell | pairs | accuracy (reference {ref_acc:.3f}) | held-out reward accuracy "
        "[95% CI] | chosen shift [95% CI] | rejected shift [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        cells = [
            f"{row[k]['mean']:+.3f} [{row[k]['ci_low']:+.3f}, {row[k]['ci_high']:+.3f}]"
            for k in ("chosen", "rejected")
        ]
        c = row["correct"]
        lines.append(
            f"| {name} | {row['pairs']} | {row['accuracy']:.3f} | {c['mean']:.3f} "
            f"[{c['ci_low']:.3f}, {c['ci_high']:.3f}] | {cells[0]} | {cells[1]} |"
        )
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"command": "python " + " ".join(sys.argv), "reference": str(args.reference),
           "cells": rows, "table": "\n".join(lines), "training": curves}  # fmt: skip
    atomic_write_text(args.out / "reward_stats.json", json.dumps(doc, indent=1) + "\n")
    if curves:
        plot(curves, args.window, args.out / "reward_stats.png")
    print(f"reward_stats: wrote {args.out / 'reward_stats.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
