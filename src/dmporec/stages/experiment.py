"""`dmporec experiment`: a list of runs (a grid, a sweep, cross-domain) with one results table.

An experiment file names a base run config, overrides shared by every cell, and the cells:

    # dmporec experiment --config configs/sweep-ml-1m.yaml
    base: configs/ml-1m-smollm2.yaml
    output_dir: runs/sweep-ml-1m
    overrides: [data.valid_users=20, eval.split=valid]
    cells:
      - {name: zero-shot, stages: [zero_shot]}
      - {name: sft-lr2e-4, stages: [sft], overrides: [sft.learning_rate=2e-4]}
      - {name: dmpo-k3, overrides: [dmpo.k=3]}            # stages default: [sft, dmpo]
      - {name: dmpo-k5, overrides: [dmpo.k=5], sft_from: dmpo-k3}   # reuse that cell's SFT

Each cell runs in OUTPUT_DIR/NAME and appends one JSON line per evaluated stage to
OUTPUT_DIR/results.jsonl; a cell already there is skipped, so a stopped experiment resumes.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dmporec.config import ConfigError, RunConfig, flat_settings, load_config
from dmporec.evaluation import read_jsonl
from dmporec.records import atomic_write_text
from dmporec.stages.common import (
    prepare_run,
    read_settings,
    settings_changes,
    stage_settings,
)
from dmporec.stages.dmpo import run_dmpo
from dmporec.stages.pipeline import baseline_rows, dmpo_label, evaluate_row
from dmporec.stages.sft import run_sft
from dmporec.tables import summary_table


class Cell(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9._+-]+$", description="Also the cell's directory.")
    overrides: list[str] = Field(default_factory=list, description="On top of the shared ones.")
    stages: list[Literal["baselines", "zero_shot", "sft", "dmpo"]] = Field(
        default_factory=lambda: ["sft", "dmpo"],
        description="What to train and evaluate; baselines: random, popularity, BPR-MF and "
        "MiniLM similarity on the same pairs (and lists).",
    )
    sft_from: str | None = Field(None, description="Start DMPO from this earlier cell's SFT.")


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str = Field(description="Run config every cell starts from.")
    output_dir: str
    overrides: list[str] = Field(default_factory=list, description="Applied to every cell.")
    cells: list[Cell] = Field(min_length=1)


def load_experiment(path: str) -> Experiment:
    if not Path(path).is_file():
        raise ConfigError(f"{path}: experiment file not found")
    try:
        exp = Experiment(**(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}))
    except (yaml.YAMLError, TypeError) as e:
        raise ConfigError(f"{path}: not a valid experiment file: {e}") from None
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"{path}: {problems}") from None
    names = [c.name for c in exp.cells]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: cell names must be unique, got {names}")
    taken = sorted(set(names) & _NOT_CELLS)
    if taken:
        raise ConfigError(
            f"{path}: cell name {taken[0]!r} is not a directory of its own in output_dir"
        )
    for where, overrides in [("overrides", exp.overrides)] + [
        (f"cell {c.name}", c.overrides) for c in exp.cells
    ]:
        if any(o.split("=", 1)[0].strip() == "output_dir" for o in overrides):
            raise ConfigError(
                f"{path}: {where}: output_dir is the experiment's (its top-level output_dir key, "
                "or output_dir=... on the command line); each cell runs in OUTPUT_DIR/NAME"
            )
    for i, cell in enumerate(exp.cells):
        if cell.sft_from is not None and cell.sft_from not in names[:i]:
            raise ConfigError(
                f"{path}: cell {cell.name}: sft_from {cell.sft_from!r} is not an earlier cell"
            )
    return exp


# Names a cell's directory cannot have: the experiment's own files, its folder, its parent.
_NOT_CELLS = {"results.jsonl", "results.md", "report.md", ".", ".."}


def cell_settings(exp: Experiment, cell: Cell, extra: list[str] | None = None) -> dict[str, Any]:
    """A cell's whole resolved config as config.flat_settings keeps it (operational fields and
    output_dir left out), and the cell it takes its SFT from: what its rows depend on (the base
    file, the shared and the command-line overrides included)."""
    return {**flat_settings(cell_config(exp, cell, extra)), "sft_from": cell.sft_from}


def cell_config(exp: Experiment, cell: Cell, extra: list[str] | None = None) -> RunConfig:
    out = Path(exp.output_dir) / cell.name
    return load_config(
        exp.base, [*exp.overrides, *cell.overrides, *(extra or []), f"output_dir={out}"]
    )


def _check_sft_from(exp: Experiment, cell: Cell, wanted: dict[str, Any]) -> None:
    """Stop when the SFT that `cell.sft_from` trained differs from the one this cell's settings
    would train (its stage settings; the DMPO adapter's own LoRA settings may differ)."""
    made = read_settings(Path(exp.output_dir) / cell.sft_from / "sft")
    if made is None:
        return

    def sft(settings: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in settings.items() if not k.startswith("model.lora_")}

    said = settings_changes(sft(made), sft(wanted))
    if said:
        raise ConfigError(
            f"cell {cell.name}: sft_from {cell.sft_from} trained another SFT ({said}): give the "
            "cell that cell's SFT settings, or train its own SFT (no sft_from)"
        )


def run_cell(exp: Experiment, cell: Cell, extra: list[str] | None = None) -> list[dict[str, Any]]:
    """Train and evaluate one cell; one result row per evaluated stage."""
    cfg = prepare_run(cell_config(exp, cell, extra))
    if cell.sft_from:  # that cell's SFT must be the one these settings would train
        _check_sft_from(exp, cell, stage_settings(cfg, "sft"))
    rows = baseline_rows(cfg) if "baselines" in cell.stages else []
    if "zero_shot" in cell.stages:
        rows.append(evaluate_row(cfg, "zero_shot", "zero-shot", None))
    if "sft" in cell.stages or "dmpo" in cell.stages:
        sft_dir = Path(exp.output_dir) / cell.sft_from / "sft" if cell.sft_from else run_sft(cfg)
        gc.collect()
        if "sft" in cell.stages and not cell.sft_from:
            rows.append(evaluate_row(cfg, "sft", "SFT", sft_dir))
        if "dmpo" in cell.stages:
            dmpo_dir = run_dmpo(cfg, sft_dir)
            gc.collect()
            rows.append(evaluate_row(cfg, "dmpo", dmpo_label(dmpo_dir), dmpo_dir))
    settings = cell_settings(exp, cell, extra)
    return [
        {
            "cell": cell.name,
            "overrides": cell.overrides,
            "settings": settings,
            "split": cfg.eval.split,
            **row,
        }
        for row in rows
    ]


def run_experiment(path: str, extra: list[str] | None = None, only: list[str] | None = None) -> str:
    """Run every cell (or the `only` ones) not yet in results.jsonl; return the table of all."""
    exp = load_experiment(path)
    unknown = sorted(set(only or []) - {c.name for c in exp.cells})
    if unknown:
        raise ConfigError(f"{path}: no cell named {', '.join(unknown)}")
    extra = list(extra or [])
    for item in [x for x in extra if x.startswith("output_dir=")]:  # moves the whole experiment
        exp.output_dir = item.split("=", 1)[1]
        extra.remove(item)
    out = Path(exp.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    # cell -> the row it was made with (its overrides; its whole settings since they are kept)
    done = {r["cell"]: r for r in (read_jsonl(results) if results.is_file() else [])}
    for cell in exp.cells:
        if only and cell.name not in only:
            continue
        made = done.get(cell.name)
        if made is not None and made.get("overrides", []) != cell.overrides:
            raise ConfigError(
                f"{results}: cell {cell.name} was made with overrides "
                f"{made.get('overrides', [])}, the experiment now gives it {cell.overrides}: "
                "rename the cell, or remove its rows from results.jsonl to rerun it"
            )
        said = (
            settings_changes(made["settings"], cell_settings(exp, cell, extra))
            if made and "settings" in made
            else ""
        )
        if said:
            raise ConfigError(
                f"{results}: cell {cell.name} was made with other settings ({said}; the base "
                "file, the shared or the command-line overrides changed): rename the cell, or "
                "remove its rows from results.jsonl to rerun it"
            )
        if made is not None:
            print(f"experiment: cell {cell.name} is in {results}; skipped")
            continue
        print(f"experiment: cell {cell.name} ({' '.join(cell.overrides) or 'base settings'})")
        rows = run_cell(exp, cell, extra)
        with results.open("a") as f:  # one append per finished cell: a crash loses no cell
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    rows = read_jsonl(results)
    table = summary_table([{**r, "model": f"{r['cell']}: {r['model']}"} for r in rows])
    atomic_write_text(out / "results.md", table + "\n")
    return f"{table}\n\n(results in {results})"
