"""`dmporec experiment`: a grid of runs (a learning curve, a sweep, cross-domain) with one table.

An experiment file names a base run config, overrides shared by every cell, and the cells:

    # dmporec experiment --config configs/sweep-ml-1m.yaml
    base: configs/ml-1m-smollm2.yaml
    output_dir: runs/sweep-ml-1m
    publish: docs/results/sweep-ml-1m        # optional: finished rows published and restored
    overrides: [data.valid_users=20, eval.split=valid]
    cells:
      - {name: zero-shot, stages: [zero_shot]}
      - {name: sft-lr2e-4, stages: [sft], overrides: [sft.learning_rate=2e-4]}
      - {name: "dmpo-k{k}", grid: {k: [3, 5]}, overrides: ["dmpo.k={k}"]}  # dmpo-k3, dmpo-k5
      - {name: dpo-k1, overrides: [dmpo.k=1], stages: [dmpo], sft_from: dmpo-k3}

Each cell runs in OUTPUT_DIR/NAME and appends one JSON line per evaluated stage to
OUTPUT_DIR/results.jsonl: its settings, metrics and per-pair scores; a cell already there with
the same settings is skipped (a stopped experiment resumes), one with other settings stops the
run. Then every trained row is paired against the rows the file asks for (`paired`, a cell's
`paired_with`), the extra evaluations (`evals`: `dmporec evaluate` or the hybrid ranker) score each
finished model (one kept with other settings stops the run), and the tables, the report and the
sweep plots (`plots`) are written, and published when `publish` is set.
"""

from __future__ import annotations

import gc
import itertools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dmporec.config import ConfigError, RunConfig, flat_settings, load_config
from dmporec.model import LINEAGE
from dmporec.stages.common import prepare_run, read_settings, settings_changes, stage_settings
from dmporec.stages.dmpo import run_dmpo
from dmporec.stages.pipeline import baseline_rows, dmpo_label, evaluate_row
from dmporec.stages.sft import run_sft
from dmporec.tables import TESTED_BASELINES

Scalar = str | int | float | bool
NAME = r"^[A-Za-z0-9._+-]+$"


class Cell(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Also the cell's directory; {key} takes a grid or vars value.")
    overrides: list[str] = Field(default_factory=list, description="On top of the shared ones.")
    stages: list[Literal["baselines", "zero_shot", "sft", "dmpo"]] = Field(
        default_factory=lambda: ["sft", "dmpo"],
        description="What to train and evaluate; baselines: random, popularity, BPR-MF and "
        "MiniLM similarity on the same pairs (and lists).",
    )
    sft_from: str | None = Field(None, description="Start DMPO from this earlier cell's SFT.")
    grid: dict[str, list[Scalar]] = Field(
        default_factory=dict,
        description="One cell per combination of these values, in order: {key} in the name, "
        "overrides, sft_from, paired_with and label takes the cell's value.",
    )
    vars: dict[str, Scalar] = Field(
        default_factory=dict,
        description="The cell's values for plots and templates (its grid values added); kept "
        "in its rows.",
    )
    label: str | None = Field(
        None, description="Words after its rows' model name on plots: 'DMPO (k=3), LABEL'."
    )
    paired_with: list[str] = Field(
        default_factory=list,
        description="Cells whose rows this cell's trained rows are also paired against.",
    )


class Paired(BaseModel):
    """Which rows every trained row (SFT, DMPO) is paired against, on the same pairs."""

    model_config = ConfigDict(extra="forbid")
    zero_shot: bool = Field(True, description="The zero-shot cells' rows.")
    baselines: list[str] = Field(
        default_factory=lambda: list(TESTED_BASELINES),
        description="These baselines of the baselines cells fitted on the same training data.",
    )
    sft: bool = Field(True, description="DMPO rows against the SFT they started from.")


class ExtraEval(BaseModel):
    """Another evaluation of every finished model, beside its test one (training users' pairs,
    candidate lists, the hybrid ranker): its results go into the row under evals.NAME, with the
    settings they were made with (stages/experiment_evals.py)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        pattern=NAME, description="Also the directory of an evaluate: STAGE/eval-NAME."
    )
    kind: Literal["evaluate", "hybrid"] = Field(
        "evaluate",
        description="evaluate: `dmporec evaluate` of every row's model into STAGE/eval-NAME (a "
        "baselines cell's baselines refitted). hybrid: `dmporec hybrid` of the sft and dmpo rows "
        "only (not baselines or zero-shot rows): the model's pair margins fused with the classic "
        "scorers, fitted on the validation users, scored on the test pairs (STAGE/hybrid/, "
        "which each hybrid evaluation rewrites; the row keeps its results).",
    )
    overrides: list[str] = Field(
        description="On top of the cell's, e.g. eval.split=valid; for a hybrid the validation "
        "users it is fitted on, e.g. data.valid=FILE."
    )
    cells: list[str] = Field(
        default_factory=lambda: ["*"], description="Cells it applies to (shell patterns)."
    )


class Plot(BaseModel):
    """Accuracy (95% CI) against a settings key or a cell's vars, one line per model."""

    model_config = ConfigDict(extra="forbid")
    x: str = Field(description="A vars key or a settings key, e.g. dmpo.k.")
    file: str = Field(pattern=r"^[A-Za-z0-9._-]+\.png$")
    line: str | None = Field(None, description="Key naming each line (default: model, label).")
    bands: list[str] = Field(
        default_factory=list, description="Cells drawn as a horizontal band (e.g. zero-shot)."
    )
    log_x: bool = False
    title: str = ""
    xlabel: str = Field("", description="The x axis (default: the key).")


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str = Field(description="Run config every cell starts from.")
    output_dir: str
    publish: str | None = Field(
        None,
        description="Publish every finished row (settings, metrics, per-pair scores, paired "
        "tests) and the tables here; a run first restores the cells published here.",
    )
    overrides: list[str] = Field(default_factory=list, description="Applied to every cell.")
    paired: Paired = Field(default_factory=Paired)
    evals: list[ExtraEval] = Field(default_factory=list)
    plots: list[Plot] = Field(default_factory=list)
    cells: list[Cell] = Field(min_length=1)

    def cell(self, name: str) -> Cell:
        return next(c for c in self.cells if c.name == name)


def _fill(text: str, values: dict[str, Scalar]) -> str:
    for key, value in values.items():
        text = text.replace(f"{{{key}}}", f"{value:g}" if isinstance(value, float) else str(value))
    return text


def expand(cell: Cell) -> list[Cell]:
    """The cells of a grid (one per combination, {key} filled in); a cell without a grid is its
    own, its vars filled in too."""
    combos = itertools.product(*cell.grid.values()) if cell.grid else [()]
    cells = []
    for combo in combos:
        values = {**cell.vars, **dict(zip(cell.grid, combo, strict=True))}
        cells.append(
            cell.model_copy(
                update={
                    "name": _fill(cell.name, values),
                    "overrides": [_fill(o, values) for o in cell.overrides],
                    "sft_from": cell.sft_from and _fill(cell.sft_from, values),
                    "paired_with": [_fill(p, values) for p in cell.paired_with],
                    "label": cell.label and _fill(cell.label, values),
                    "grid": {},
                    "vars": values,
                }
            )
        )
    return cells


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
    exp.cells = [c for cell in exp.cells for c in expand(cell)]
    names = [c.name for c in exp.cells]
    bad = [n for n in names if not re.match(NAME, n)]
    if bad:
        raise ConfigError(f"{path}: cell name {bad[0]!r}: letters, digits and ._+- only")
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
        unknown = sorted(set(cell.paired_with) - set(names))
        if unknown:
            raise ConfigError(f"{path}: cell {cell.name}: paired_with {unknown[0]!r}: no such cell")
    return exp


# Names a cell's directory cannot have: the experiment's own files, its folder, its parent.
_NOT_CELLS = {"results.jsonl", "results.md", "report.md", "paired.md", ".", ".."}


def cell_config(exp: Experiment, cell: Cell, extra: list[str] | None = None) -> RunConfig:
    out = Path(exp.output_dir) / cell.name
    return load_config(
        exp.base, [*exp.overrides, *cell.overrides, *(extra or []), f"output_dir={out}"]
    )


def cell_settings(exp: Experiment, cell: Cell, extra: list[str] | None = None) -> dict[str, Any]:
    """A cell's whole resolved config as config.flat_settings keeps it (operational fields and
    output_dir left out), and the cell it takes its SFT from: what its rows depend on (the base
    file, the shared and the command-line overrides included)."""
    return {**flat_settings(cell_config(exp, cell, extra)), "sft_from": cell.sft_from}


def made_otherwise(row: dict[str, Any], cell: Cell, settings: dict[str, Any]) -> str:
    """Why `row` is not a result of `cell` as the experiment now makes it ('' when it is): the
    settings that differ (settings_changes), or for a row written before rows kept their
    settings, its cell overrides."""
    if "settings" in row:
        said = settings_changes(row["settings"], settings)
        return f"other settings ({said})" if said else ""
    if row.get("overrides", []) != cell.overrides:
        return f"overrides {row.get('overrides', [])}; the experiment gives it {cell.overrides}"
    return ""


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


def sft_trained(exp: Experiment, name: str) -> bool:
    return (Path(exp.output_dir) / name / "sft" / LINEAGE).is_file()


def run_cell(exp: Experiment, cell: Cell, extra: list[str] | None = None) -> list[dict[str, Any]]:
    """Train and evaluate one cell; one result row per evaluated stage."""
    from dmporec.stages.experiment_rows import training_summary

    cfg = prepare_run(cell_config(exp, cell, extra))
    if cell.sft_from:  # that cell's SFT must be the one these settings would train
        _check_sft_from(exp, cell, stage_settings(cfg, "sft"))
    rows = (
        [{**r, "stage": "baselines"} for r in baseline_rows(cfg)]
        if "baselines" in cell.stages
        else []
    )
    if "zero_shot" in cell.stages:
        rows.append({**evaluate_row(cfg, "zero_shot", "zero-shot", None), "stage": "zero_shot"})
    if "sft" in cell.stages or "dmpo" in cell.stages:
        sft_dir = Path(exp.output_dir) / cell.sft_from / "sft" if cell.sft_from else run_sft(cfg)
        gc.collect()
        if "sft" in cell.stages and not cell.sft_from:
            row = evaluate_row(cfg, "sft", "SFT", sft_dir)
            rows.append({**row, "stage": "sft", "training": training_summary(sft_dir)})
        if "dmpo" in cell.stages:
            dmpo_dir = run_dmpo(cfg, sft_dir)
            gc.collect()
            row = evaluate_row(cfg, "dmpo", dmpo_label(dmpo_dir), dmpo_dir)
            rows.append({**row, "stage": "dmpo", "training": training_summary(dmpo_dir)})
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


def run_experiment(
    path: str,
    extra: list[str] | None = None,
    only: list[str] | None = None,
    rerun: list[str] | None = None,
    publish: str | None = None,
    restore: list[str] | None = None,
) -> str:
    """Restore the published cells, run every cell (or the `only` ones, and the `rerun` ones
    again) not yet in results.jsonl, pair, evaluate further, tabulate and publish; return the
    results table."""
    from dmporec.stages import experiment_rows as rows_
    from dmporec.stages.experiment_evals import check_evals, extra_evals

    exp = load_experiment(path)
    names = {c.name for c in exp.cells}
    for flag, given in (("--cells", only), ("--rerun", rerun)):
        unknown = sorted(set(given or []) - names)
        if unknown:
            raise ConfigError(f"{path}: {flag}: no cell named {', '.join(unknown)}")
    extra = list(extra or [])
    for item in [x for x in extra if x.startswith("output_dir=")]:  # moves the whole experiment
        exp.output_dir = item.split("=", 1)[1]
        extra.remove(item)
    exp.publish = publish or exp.publish
    rerun = list(rerun or [])
    only = None if not only else [*only, *(c for c in rerun if c not in only)]
    results = rows_.Results(exp, extra)
    results.drop(rerun)
    if exp.publish:
        results.restore(rows_.published(exp), skip=rerun)
    for source in restore or []:  # its cells replace the published ones
        results.restore(Path(source), skip=rerun, replace=True)
    check_evals(results)  # before any cell runs: a stale extra evaluation stops the run now
    for cell in exp.cells:
        if only and cell.name not in only:
            continue
        if results.has(cell.name):
            print(f"experiment: cell {cell.name} is in {results.path}; skipped")
            continue
        if cell.sft_from and not sft_trained(exp, cell.sft_from):
            # Restored (or never run here): its adapter is not here. It runs again first.
            print(f"experiment: cell {cell.sft_from} runs first: {cell.name} starts from its SFT")
            results.drop([cell.sft_from])
            results.add(run_cell(exp, exp.cell(cell.sft_from), extra))
        print(f"experiment: cell {cell.name} ({' '.join(cell.overrides) or 'base settings'})")
        results.add(run_cell(exp, cell, extra))
    extra_evals(results, only)
    return results.write()
