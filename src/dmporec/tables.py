"""The results tables a run prints and writes: models side by side, and paired tests."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from dmporec.evaluation import pair_scores, read_predictions
from dmporec.metrics import pair_correct, paired_auc_test, paired_test


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


# The baselines each trained row is tested against (random only appears in the table).
TESTED_BASELINES = ("popularity", "bpr-mf", "als", "embedding")


def row_pair_scores(row: dict[str, Any], orders: str) -> tuple[np.ndarray, ...] | None:
    """(users, chosen, rejected) of a results row: an LLM row's from its predictions, a baseline's
    or the hybrid's from the per-pair scores it carries; None when it has neither."""
    if "pair_scores" in row:
        p = row["pair_scores"]
        return (
            np.asarray(p["users"]),
            np.asarray(p["chosen"], float),
            np.asarray(p["rejected"], float),
        )
    if "eval_dir" in row:
        rows = read_predictions(Path(row["eval_dir"]))
        chosen, rejected = pair_scores(rows, orders)
        return np.array([r["user_id"] for r in rows]), chosen, rejected
    return None


def _trained(row: dict[str, Any]) -> bool:
    return "eval_dir" in row or "hybrid_dir" in row


def paired_tests(rows: list[dict[str, Any]], orders: str, seed: int = 0) -> list[dict[str, Any]]:
    """Each trained row (an LLM stage or the hybrid) against the rows above it that are trained
    too or are the popularity, BPR-MF or ALS baselines, on the same pairs: accuracy
    (metrics.paired_test, exact McNemar) and both AUCs (metrics.paired_auc_test, paired bootstrap
    over users)."""
    scores = {r["model"]: s for r in rows if (s := row_pair_scores(r, orders)) is not None}
    tests = []
    for j, b in enumerate(rows):
        for a in rows[j + 1 :]:
            if not _trained(a) or (not _trained(b) and b["model"] not in TESTED_BASELINES):
                continue
            if a["model"] not in scores or b["model"] not in scores:
                continue
            (users, ca, ra), (_, cb, rb) = scores[a["model"]], scores[b["model"]]
            test = paired_test(pair_correct(ca, ra), pair_correct(cb, rb), seed=seed)
            auc = paired_auc_test(users, ca, ra, cb, rb, seed=seed)
            tests.append({"a": a["model"], "b": b["model"], **test, **auc})
    return tests


def paired_table(tests: list[dict[str, Any]]) -> str:
    """Markdown table of `paired_tests`: the accuracy difference, its CI and McNemar's p; the
    coin-flip AUC difference, its CI and bootstrap p (when the tests carry them)."""
    auc = any("auc_difference" in t for t in tests)
    lines = [
        "| comparison | accuracy difference [95% CI] | pairs A right, B wrong / B right, A wrong "
        "| McNemar p | significant at 0.05 |"
        + (" coin-flip AUC difference [95% CI] | bootstrap p |" if auc else ""),
        "|---|---|---|---|---|" + ("---|---|" if auc else ""),
    ]
    for t in tests:
        line = (
            f"| {t['a']} vs {t['b']} | {t['difference']:+.3f} [{t['difference_ci_low']:+.3f}, "
            f"{t['difference_ci_high']:+.3f}] | {t['a_better']} / {t['b_better']} "
            f"| {t['p_value']:.2g} | {'yes' if t['p_value'] < 0.05 else 'no'} |"
        )
        if auc and "auc_difference" in t:
            line += (
                f" {t['auc_difference']:+.3f} [{t['auc_difference_ci_low']:+.3f}, "
                f"{t['auc_difference_ci_high']:+.3f}] | {t['auc_p_value']:.2g} |"
            )
        elif auc:
            line += " - | - |"
        lines.append(line)
    return "\n".join(lines)
