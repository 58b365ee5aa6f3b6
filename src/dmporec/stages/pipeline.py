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


def _fmt_ci(m: dict[str, Any], key: str) -> str:
    return f"{m[key]:.3f} [{m[f'{key}_ci_low']:.3f}, {m[f'{key}_ci_high']:.3f}]"


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of `evaluate_row` results."""
    lines = [
        "| model | pairs | accuracy [95% CI] | AUC coin-flip [95% CI] | AUC stable | first-listed "
        "| train s | eval s | peak RSS MiB train / eval |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["metrics"]
        lines.append(
            f"| {r['model']} | {m['pairs']} | {_fmt_ci(m, 'accuracy')} | {_fmt_ci(m, 'auc')} "
            f"| {m['auc_stable']:.3f} | {m['first_listed_rate']:.2f} | {r['train_s'] or '-'} "
            f"| {r['eval_s'] or '-'} | {r['train_peak_rss_mib'] or '-'} / {r['eval_peak_rss_mib'] or '-'} |"
        )
    return "\n".join(lines)


def evaluate_row(
    cfg: RunConfig, stage: str, model_name: str, train_dir: Path | None
) -> dict[str, Any]:
    """Evaluate a stage and gather its metrics with the wall time and memory of its stages."""
    metrics = run_evaluate(cfg, stage)
    ev = read_summary(stage_dirs(cfg, stage)[1]) or {}
    train = (read_summary(train_dir) if train_dir else None) or {}
    gc.collect()
    return {
        "model": model_name,
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
    name = (
        "DPO (k=1)"
        if cfg.dmpo.k == 1 and cfg.dmpo.loss == "dmpo"
        else f"{cfg.dmpo.loss.upper()} (k={cfg.dmpo.k})"
    )
    rows.append(evaluate_row(cfg, "dmpo", name, dmpo_dir))

    table = summary_table(rows)
    total = round(time.perf_counter() - start, 1)
    atomic_write_text(out / "summary.md", f"{table}\n\nTotal wall time: {total} s\n")
    atomic_write_text(
        out / "summary.json", json.dumps({"rows": rows, "total_wall_s": total}, indent=2) + "\n"
    )
    return f"{table}\n\nTotal wall time: {total} s (results in {out})"
