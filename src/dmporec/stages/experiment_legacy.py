"""Rows published by benchmarks/learning_curve.py before the learning curve became an experiment
file (#38): what each row carried ('carried') read into the fields experiment rows have.

Such a row carries its per-pair correctness (no scores), its paired tests labelled the script's
way ('n', a = the model's line, b = 'zero-shot', 'popularity (N = 400)', 'SFT', 'SFT (N = 100)',
'DPO (k=1)'), its diagnostics (training-user pairs, DMPO rewards), its learning-rate probe; the
lists it ranked are in curve.json beside it. Nothing here is written in that form again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# The names of the extra evaluations (the experiment file's `evals`) the script's diagnostics
# and lists become: configs/experiments/learning-curve-ml1m.yaml names its evaluations so.
TRAIN_PAIRS = "train-pairs"
LISTS = "lists"
_N = re.compile(r" \(N = \d+\)$")
POSITION = (
    "accuracy_positive_listed_first",
    "accuracy_positive_listed_second",
    "first_listed_rate",
)


def is_legacy(row: dict[str, Any]) -> bool:
    return "carried" in row


def legacy_test_matches(test: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether a test the script published ('n' and a plain label as b) is the test against
    `other`: b names its model, with ' (N = ...)' for a row of another N."""
    return "n" in test and _N.sub("", test["b"]) == other["model"]


def _lists(source_dir: Path, row: dict[str, Any]) -> dict[str, Any] | None:
    """The row's listwise metrics from curve.json beside the published rows: a model's lists
    under its cell's name, a baselines cell's per model."""
    curve = source_dir / "curve.json"
    if not curve.is_file():
        return None
    for found in json.loads(curve.read_text()).get("listwise", []):
        mine = found["model"] == row["model"] or (
            found["model"] == found["cell"] and "eval_dir" in row
        )
        if found["cell"] == row["cell"] and mine:
            return {k: v for k, v in found.items() if k not in ("cell", "model")}
    return None


def upgrade_legacy(row: dict[str, Any], source_dir: Path) -> dict[str, Any]:
    """The row with what it carried as experiment-row fields: pair_correct, paired_tests (kept
    with their labels; stages.experiment_rows matches them to its comparisons), training (DMPO's
    reward statistics, the probe's last steps), evals (train-pairs, lists), a note, and the
    accuracy by listed position in its metrics where only the diagnostics kept it."""
    carried = row["carried"]
    out = {k: v for k, v in row.items() if k != "carried"}
    if carried.get("pair_correct") is not None:
        out["pair_correct"] = carried["pair_correct"]
    if carried.get("paired_tests"):
        out["paired_tests"] = carried["paired_tests"]
    diag = carried.get("diagnostics") or {}
    # The evaluation's own numbers that only the diagnostics kept (rows rebuilt from tables).
    position = {k: v for k, v in diag.items() if k in POSITION and k not in out["metrics"]}
    if position:
        out["metrics"] = {**out["metrics"], **position}
    training = {k: v for k, v in diag.items() if k.startswith(("reward_", "chosen_reward_"))}
    probe = carried.get("lr_probe") or {}
    if probe:
        training |= {
            "loss_last10": probe["train_loss_last10"],
            "reward_accuracy_last10": probe["reward_accuracy_last10"],
            "reward_margin_last10": probe["reward_margin_last10"],
        }
    if training:
        out["training"] = training
    evals = {}
    if "train_accuracy" in diag:
        evals[TRAIN_PAIRS] = {
            "accuracy": diag["train_accuracy"],
            "accuracy_by_negative": diag["train_accuracy_by_negative"],
        }
    lists = _lists(source_dir, row)
    if lists:
        evals[LISTS] = lists
    if evals:
        out["evals"] = evals
    if carried.get("restored_from"):
        out["note"] = carried["restored_from"]
    return out
