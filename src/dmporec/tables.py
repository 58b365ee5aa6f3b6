"""The results tables a run prints and writes: models side by side, and paired tests."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from dmporec.evaluation import pair_scores, read_predictions
from dmporec.metrics import pair_correct, paired_test


def _fmt_ci(m: dict[str, Any], key: str) -> str:
    return f"{m[key]:.3f} [{m[f'{key}_ci_low']:.3f}, {m[f'{key}_ci_high']:.3f}]"


def _fmt_rate(x: float | None) -> str:
    # Baselines list no candidates: no rate (None; NaN in results of older versions).
    return "-" if x is None or math.isnan(x) else f"{x:.2f}"


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of `evaluate_row` results."""
    lines = [
        "| model | pairs | accuracy [95% CI] | AUC coin-flip [95% CI] | AUC stable | first-listed "
        "| train s | eval s | peak RSS MiB train / eval |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    generated = any("valid_ratio" in r["metrics"] for r in rows)
    if generated:
        lines[0] += " ValidRatio [95% CI] | generated order accuracy [95% CI] |"
        lines[1] += "---|---|"
    for r in rows:
        m = r["metrics"]
        line = (
            f"| {r['model']} | {m['pairs']} | {_fmt_ci(m, 'accuracy')} | {_fmt_ci(m, 'auc')} "
            f"| {m['auc_stable']:.3f} | {_fmt_rate(m['first_listed_rate'])} | {r['train_s'] or '-'} "
            f"| {r['eval_s'] or '-'} | {r['train_peak_rss_mib'] or '-'} / {r['eval_peak_rss_mib'] or '-'} |"
        )
        if generated and "valid_ratio" in m:
            line += f" {_fmt_ci(m, 'valid_ratio')} | {_fmt_ci(m, 'generated_accuracy')} |"
        elif generated:
            line += " - | - |"
        lines.append(line)
    return "\n".join(lines)


# The baselines each LLM row is tested against (random and MiniLM only appear in the table).
TESTED_BASELINES = ("popularity", "bpr-mf")


def paired_tests(rows: list[dict[str, Any]], orders: str, seed: int = 0) -> list[dict[str, Any]]:
    """Each LLM row (one with an eval_dir) against the earlier LLM rows and the popularity and
    BPR-MF baselines, on the same pairs (metrics.paired_test)."""
    correct = {}
    for r in rows:
        if "eval_dir" in r:
            chosen, rejected = pair_scores(read_predictions(Path(r["eval_dir"])), orders)
            correct[r["model"]] = pair_correct(chosen, rejected)
        elif "correct" in r:
            correct[r["model"]] = np.asarray(r["correct"], dtype=bool)
    tests = []
    for j, b in enumerate(rows):
        for a in rows[j + 1 :]:
            if "eval_dir" not in a or ("eval_dir" not in b and b["model"] not in TESTED_BASELINES):
                continue
            if a["model"] not in correct or b["model"] not in correct:
                continue
            test = paired_test(correct[a["model"]], correct[b["model"]], seed=seed)
            tests.append({"a": a["model"], "b": b["model"], **test})
    return tests


def paired_table(tests: list[dict[str, Any]]) -> str:
    """Markdown table of `paired_tests`: the accuracy difference, its CI, McNemar's p."""
    lines = [
        "| comparison | accuracy difference [95% CI] | pairs A right, B wrong / B right, A wrong "
        "| McNemar p | significant at 0.05 |",
        "|---|---|---|---|---|",
    ]
    for t in tests:
        lines.append(
            f"| {t['a']} vs {t['b']} | {t['difference']:+.3f} [{t['difference_ci_low']:+.3f}, "
            f"{t['difference_ci_high']:+.3f}] | {t['a_better']} / {t['b_better']} "
            f"| {t['p_value']:.2g} | {'yes' if t['p_value'] < 0.05 else 'no'} |"
        )
    return "\n".join(lines)
