"""What every stage does the same way: paths, the prompt encoder, stage summaries and curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelerate import PartialState

from dmporec.collate import GroupEncoder
from dmporec.config import RunConfig, dump_config
from dmporec.data import resolve_data
from dmporec.model import ModelConfig, write_lineage
from dmporec.plots import plot_curves
from dmporec.prompts import ChatFormat
from dmporec.records import atomic_write_text

SUMMARY = "summary.json"


def prepare_run(cfg: RunConfig) -> RunConfig:
    """Generate demo data if configured and record the resolved config in the output dir."""
    cfg = cfg.model_copy(update={"data": resolve_data(cfg.data, cfg.output_dir)})
    atomic_write_text(Path(cfg.output_dir) / "config.yaml", dump_config(cfg))
    return cfg


def encoder(tokenizer: Any, model_cfg: ModelConfig, prompt_seed: int) -> GroupEncoder:
    chat = ChatFormat.from_tokenizer(
        tokenizer,
        use_chat_template=model_cfg.use_chat_template,
        template_kwargs=model_cfg.chat_template_kwargs,
    )
    return GroupEncoder(tokenizer, chat, prompt_seed)


def finish_stage(
    stage_dir: Path, model_cfg: ModelConfig, merged: list[str], summary: dict[str, Any]
) -> None:
    """Mark a training stage finished: lineage (written last), curves and summary; main process only."""
    if not PartialState().is_main_process:
        return
    plot_curves(stage_dir / "metrics.jsonl", stage_dir / "curves.png")
    write_summary(stage_dir, summary)
    write_lineage(stage_dir, model_cfg, merged)


def write_summary(stage_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(stage_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")


def read_summary(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None
