"""The whole pipeline: zero-shot evaluation, SFT, evaluation, DMPO, evaluation, one table."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

from dmporec.config import RunConfig
from dmporec.records import atomic_write_text
from dmporec.stages.common import prepare_run, read_summary
from dmporec.stages.dmpo import run_dmpo
from dmporec.stages.evaluate import run_evaluate, stage_dirs
from dmporec.stages.sft import run_sft
from dmporec.tables import paired_table, paired_tests, summary_table


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
