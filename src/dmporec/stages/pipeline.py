"""The whole pipeline: zero-shot evaluation, SFT, evaluation, DMPO, evaluation, one table."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

from dmporec.config import RunConfig
from dmporec.metrics import pair_correct, paired_test
from dmporec.records import atomic_write_text
from dmporec.stages.common import prepare_run, read_summary
from dmporec.stages.dmpo import run_dmpo
from dmporec.stages.evaluate import pair_scores, read_predictions, run_evaluate, stage_dirs
from dmporec.stages.sft import run_sft


def _fmt_ci(m: dict[str, Any], key: str) -> str:
    return f"{m[key]:.3f} [{m[f'{key}_ci_low']:.3f}, {m[f'{key}_ci_high']:.3f}]"


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of `evaluate_row` results."""
    lines = [
        "| model | pairs | accuracy [95% CI] | AUC coin-flip [95% CI] | AUC stable | first-listed "
        "| train s | eval s | peak RSS MiB train / eval |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    generated = all("valid_ratio" in r["metrics"] for r in rows)
    if generated:
        lines[0] += " ValidRatio [95% CI] | generated order accuracy [95% CI] |"
        lines[1] += "---|---|"
    for r in rows:
        m = r["metrics"]
        line = (
            f"| {r['model']} | {m['pairs']} | {_fmt_ci(m, 'accuracy')} | {_fmt_ci(m, 'auc')} "
            f"| {m['auc_stable']:.3f} | {m['first_listed_rate']:.2f} | {r['train_s'] or '-'} "
            f"| {r['eval_s'] or '-'} | {r['train_peak_rss_mib'] or '-'} / {r['eval_peak_rss_mib'] or '-'} |"
        )
        if generated:
            line += f" {_fmt_ci(m, 'valid_ratio')} | {_fmt_ci(m, 'generated_accuracy')} |"
        lines.append(line)
    return "\n".join(lines)


def paired_tests(rows: list[dict[str, Any]], orders: str, seed: int = 0) -> list[dict[str, Any]]:
    """Every later model against every earlier one on the same pairs (metrics.paired_test)."""
    correct = {}
    for r in rows:
        chosen, rejected = pair_scores(read_predictions(Path(r["eval_dir"])), orders)
        correct[r["model"]] = pair_correct(chosen, rejected)
    tests = []
    for j, b in enumerate(rows):
        for a in rows[j + 1 :]:
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


def dmpo_label(stage_dir: Path) -> str:
    """'DMPO (k=3)', 'DPO (k=1)' or 'SDPO (k=3)', from what the stage trained (its summary)."""
    summary = read_summary(stage_dir) or {}
    loss, k = summary.get("loss", "dmpo"), summary.get("k", "?")
    return "DPO (k=1)" if k == 1 and loss == "dmpo" else f"{loss.upper()} (k={k})"


def evaluate_row(
    cfg: RunConfig, stage: str, model_name: str, train_dir: Path | None
) -> dict[str, Any]:
    """Evaluate a stage and gather its metrics with the wall time and memory of its stages."""
    metrics = run_evaluate(cfg, stage)
    eval_dir = stage_dirs(cfg, stage)[1]
    ev = read_summary(eval_dir) or {}
    train = (read_summary(train_dir) if train_dir else None) or {}
    gc.collect()
    return {
        "model": model_name,
        "eval_dir": str(eval_dir),
        "metrics": metrics,
        "train_s": train.get("wall_s"),
        "train_peak_rss_mib": train.get("peak_rss_mib"),
        "eval_s": ev.get("wall_s"),
        "eval_peak_rss_mib": ev.get("peak_rss_mib"),
    }


def run_pipeline(cfg: RunConfig) -> str:
    """Run every stage (finished ones are skipped, so a stopped run resumes) and return the table."""
    cfg = prepare_run(cfg)
    out = Path(cfg.output_dir)
    start = time.perf_counter()
    rows = []
    if cfg.zero_shot:
        rows.append(evaluate_row(cfg, "zero_shot", "zero-shot", None))
    sft_dir = run_sft(cfg)
    gc.collect()
    rows.append(evaluate_row(cfg, "sft", "SFT", sft_dir))
    dmpo_dir = run_dmpo(cfg, sft_dir)
    gc.collect()
    rows.append(evaluate_row(cfg, "dmpo", dmpo_label(dmpo_dir), dmpo_dir))

    tests = paired_tests(rows, cfg.eval.orders, cfg.eval.seed)
    table = f"{summary_table(rows)}\n\nPaired tests on the same pairs:\n\n{paired_table(tests)}"
    total = round(time.perf_counter() - start, 1)
    atomic_write_text(out / "summary.md", f"{table}\n\nTotal wall time: {total} s\n")
    atomic_write_text(
        out / "summary.json",
        json.dumps({"rows": rows, "paired_tests": tests, "total_wall_s": total}, indent=2) + "\n",
    )
    return f"{table}\n\nTotal wall time: {total} s (results in {out})"
