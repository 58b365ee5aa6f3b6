"""An experiment's result rows: restored from a published results.jsonl, paired, tabulated and
published (stages/experiment.py runs the cells, stages/experiment_evals.py evaluates them further).

A row is one evaluated stage of a cell: cell, stage (baselines, zero_shot, sft, dmpo), model,
vars and label (the cell's, from the experiment file), overrides, settings, split, metrics,
pair_scores (users, chosen, rejected: what any later paired test needs), training (its stage's
loss and rewards, first and last steps, by quarter), evals (extra evaluations by name, each with
the settings it was made with), and once published its paired_tests.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dmporec.config import ConfigError, RunConfig
from dmporec.files import atomic_write_text, read_jsonl
from dmporec.metrics import gain_difference_test
from dmporec.report import report_images, write_report
from dmporec.stages.experiment import (
    Cell,
    Experiment,
    cell_config,
    cell_settings,
    made_otherwise,
)
from dmporec.stages.experiment_evals import stamp_legacy
from dmporec.stages.experiment_legacy import is_legacy, legacy_test_matches, upgrade_legacy
from dmporec.tables import (
    gain_table,
    paired_row_test,
    paired_table,
    row_correct,
    row_pair_scores,
    summary_table,
)

RESULTS = "results.jsonl"
LLM_STAGES = ("zero_shot", "sft", "dmpo")
# What publishing copies beside results.jsonl (and the report's PNGs).
PUBLISHED_FILES = ("results.md", "paired.md", "gains.json", "report.md")


def published(exp: Experiment) -> Path:
    return Path(exp.publish) / RESULTS


def _step_mean(steps: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([s[key] for s in steps]))


def training_summary(stage_dir: Path) -> dict[str, Any] | None:
    """A training stage's loss and reward statistics (metrics.jsonl, one row per optimizer
    step): the mean of the first and of the last 10 steps, and by quarter of training. Each DMPO
    step's users are new to the adapter, so its reward accuracy (before the update) is held out:
    by quarter it says where DMPO got and when."""
    path = stage_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    by_step = {r["step"]: r for r in read_jsonl(path) if "loss" in r}  # a resume repeats steps
    steps = [by_step[s] for s in sorted(by_step)]
    out: dict[str, Any] = {}
    for key in ("loss", "reward_accuracy", "reward_margin", "chosen_reward"):
        have = [s for s in steps if key in s]
        if not have:
            continue
        out[f"{key}_first10"] = _step_mean(have[:10], key)
        out[f"{key}_last10"] = _step_mean(have[-10:], key)
        quarters = np.array_split(np.arange(len(have)), 4)
        out[f"{key}_by_quarter"] = [
            round(_step_mean([have[i] for i in q], key), 3) for q in quarters if len(q)
        ]
    return out or None


def eval_dir_beside(row: dict[str, Any], experiment_dir: Path) -> Path | None:
    """A row's evaluation directory in its cell's directory under `experiment_dir` (eval_dir is
    recorded relative to where that run started), if its predictions are there."""
    parts = Path(row.get("eval_dir", "")).parts
    if row["cell"] not in parts:
        return None
    path = experiment_dir / row["cell"] / Path(*parts[parts.index(row["cell"]) + 1 :])
    return path if (path / "predictions.jsonl").is_file() else None


def scores_of(path: Path, row: dict[str, Any]) -> dict[str, Any]:
    """The per-pair scores (users, chosen, rejected) of the predictions in `path`, in the
    listing orders the row's metrics were computed with."""
    orders = row["metrics"].get("orders", "both")
    users, chosen, rejected = row_pair_scores({"eval_dir": str(path)}, orders)
    return {"users": users.tolist(), "chosen": chosen.tolist(), "rejected": rejected.tolist()}


def _infer_stage(row: dict[str, Any]) -> str:
    """The stage of a row written before rows named it: its evaluation's directory."""
    parts = Path(row.get("eval_dir", "")).parts
    for stage in LLM_STAGES:
        if stage in parts:
            return stage
    return "baselines"


def _pairs_key(cfg: RunConfig) -> str:
    """Which pairs a config's evaluation scores: rows with the same key can be paired."""
    d = cfg.data
    if cfg.eval.split == "test":
        key = ["test", d.eval, d.max_eval_pairs]
    else:
        key = ["valid", d.valid, d.valid_users, None if d.valid else (d.dmpo_train or d.sft_train)]
    norm = d.title_normalization.model_dump(mode="json")
    demo = d.demo.model_dump(mode="json") if d.demo else None
    return json.dumps([*key, norm, demo])


def _train_key(cfg: RunConfig) -> str:
    """What the baselines of a config are fitted on (besides the evaluated users' histories)."""
    d = cfg.data
    return json.dumps([d.sft_train, d.valid_users, d.demo.model_dump() if d.demo else None])


def row_name(row: dict[str, Any]) -> str:
    return f"{row['cell']}: {row['model']}"


def _gain_test(
    a: dict[str, Any], a_base: dict[str, Any], b: dict[str, Any], b_base: dict[str, Any], seed: int
) -> dict[str, Any] | None:
    """metrics.gain_difference_test of four rows on the same pairs: their per-pair scores, or
    for a row that kept only its per-pair correctness (the learning-curve script's zero-shot)
    that, accuracy alone then. None when a row keeps neither, no row names the pairs' users, or
    the rows with scores name other users; a row with correctness alone is checked only for
    its number of pairs."""
    rows = {"a": a, "a_base": a_base, "b": b, "b_base": b_base}
    scores = {k: s for k, r in rows.items() if (s := row_pair_scores(r, "both")) is not None}
    correct = {k: row_correct(r, "both") for k, r in rows.items() if k not in scores}
    if not scores or any(c is None for c in correct.values()):
        return None
    users = next(iter(scores.values()))[0]
    if any(not np.array_equal(s[0], users) for s in scores.values()) or any(
        len(c) != len(users) for c in correct.values()
    ):
        return None
    test = gain_difference_test(
        users, {k: (s[1], s[2]) for k, s in scores.items()}, correct, seed=seed
    )
    return {**{k: row_name(r) for k, r in rows.items()}, **test}


class Results:
    """OUTPUT_DIR/results.jsonl: the rows of every finished cell, in the order they finished."""

    def __init__(self, exp: Experiment, extra: list[str]):
        self.exp, self.extra = exp, extra
        self.out = Path(exp.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / RESULTS
        self.rows = (
            [self._describe(r) for r in read_jsonl(self.path)] if self.path.is_file() else []
        )
        self._configs: dict[str, RunConfig] = {}
        self._settings: dict[str, dict[str, Any]] = {}

    def config(self, cell: Cell) -> RunConfig:
        if cell.name not in self._configs:
            self._configs[cell.name] = cell_config(self.exp, cell, self.extra)
        return self._configs[cell.name]

    def settings(self, cell: Cell) -> dict[str, Any]:
        if cell.name not in self._settings:
            self._settings[cell.name] = cell_settings(self.exp, cell, self.extra)
        return self._settings[cell.name]

    def of(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["cell"] == name]

    def has(self, name: str) -> bool:
        """Whether the cell is finished here; stops when its rows were made otherwise."""
        cell = self.exp.cell(name)
        for row in self.of(name):
            why = made_otherwise(row, cell, self.settings(cell))
            if why:
                raise ConfigError(
                    f"{self.path}: cell {name} was made with {why}: rename the cell, or run it "
                    f"again with --rerun {name}"
                )
        return bool(self.of(name))

    def save(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def drop(self, names: Iterable[str]) -> None:
        names = set(names)
        if any(r["cell"] in names for r in self.rows):
            self.rows = [r for r in self.rows if r["cell"] not in names]
            self.save()

    def add(self, rows: list[dict[str, Any]]) -> None:
        """A finished cell's rows, described by its cell (stage, vars, label): one append per
        cell, so a crash loses no finished cell."""
        rows = [self._describe(r) for r in rows]
        self.rows += rows
        with self.path.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))

    def _describe(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row with its stage, and its cell's vars and label as the experiment file gives
        them now (a row of a cell the file no longer names keeps its own)."""
        described = {**row, "stage": row.get("stage") or _infer_stage(row)}
        cell = next((c for c in self.exp.cells if c.name == row["cell"]), None)
        if cell is None:
            return described
        described.pop("label", None)
        return {**described, "vars": cell.vars, **({"label": cell.label} if cell.label else {})}

    def restore(self, source: Path, skip: Iterable[str] = (), replace: bool = False) -> None:
        """Bring back the cells `source` (a published results.jsonl) holds that this output
        directory lacks: a new checkout has no runs/. Each is checked as a finished cell is (its
        settings, or the overrides of a row from before settings were kept); its per-pair scores
        and training statistics come from the run directory beside `source` where the row lacks
        them. Cells the experiment file does not name stay where they are.

        `replace` (--restore FILE): FILE's cells replace the rows here, restored or not, but for
        the rows the old learning-curve script copied into its runs from a publication."""
        if not source.is_file():
            if source != published(self.exp):
                raise ConfigError(f"--restore: {source}: no such file")
            return
        names = {c.name for c in self.exp.cells}
        by_cell: dict[str, list[dict[str, Any]]] = {}
        for row in read_jsonl(source):
            if not (replace and is_legacy(row)):
                by_cell.setdefault(row["cell"], []).append(row)
        done = []
        for name, rows in by_cell.items():
            if name not in names or name in skip or (self.of(name) and not replace):
                continue
            cell = self.exp.cell(name)
            rows = [
                stamp_legacy(self, cell, upgrade_legacy(r, source.parent)) if is_legacy(r) else r
                for r in rows
            ]
            for row in rows:
                why = made_otherwise(row, cell, self.settings(cell))
                if why:
                    raise ConfigError(
                        f"{source}: cell {name} was made with {why}: restore it into the output "
                        "directory it was made for, or rename the cell"
                    )
                beside = eval_dir_beside(row, source.parent)
                if beside is not None and "pair_scores" not in row:
                    row["pair_scores"] = scores_of(beside, row)
                trained = beside is not None and _infer_stage(row) in ("sft", "dmpo")
                if trained and "training" not in row and (t := training_summary(beside.parent)):
                    row["training"] = t
            self.drop([name])
            self.add(rows)
            done.append(name)
        if done:
            print(f"experiment: restored from {source}: {', '.join(done)}")

    # -- paired tests -------------------------------------------------------------------

    def _cells_with(self, stage: str) -> list[Cell]:
        return [c for c in self.exp.cells if stage in c.stages]

    def comparisons(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows a trained row is paired against, as the experiment file asks: the zero-shot
        rows of the same base model and the baselines fitted on the same training data (both on
        the same pairs), the SFT its DMPO started from, and the rows of its cell's paired_with
        cells (another model's rows are paired only when named there)."""
        cell = self._trained_cell(row)
        if cell is None:
            return []
        paired = self.exp.paired
        cfg = self.config(cell)
        same_pairs = [c for c in self.exp.cells if _pairs_key(self.config(c)) == _pairs_key(cfg)]
        found: list[dict[str, Any]] = self.zero_shots(cfg) if paired.zero_shot else []
        for c in same_pairs:
            if "baselines" in c.stages and _train_key(self.config(c)) == _train_key(cfg):
                found += [r for r in self.of(c.name) if r["model"] in paired.baselines]
        named = {c.name for c in same_pairs}
        if paired.sft and row["stage"] == "dmpo":
            source = cell.sft_from or (cell.name if "sft" in cell.stages else None)
            if source in named:
                found += [r for r in self.of(source) if r["stage"] == "sft"]
        for name in (n for n in cell.paired_with if n in named):
            found += [
                r
                for r in self.of(name)
                if r["stage"] != "baselines" or r["model"] in paired.baselines
            ]
        unique = {row_name(r): r for r in found if r is not row}
        return list(unique.values())

    def _trained_cell(self, row: dict[str, Any]) -> Cell | None:
        """The cell of an SFT or DMPO row, as the experiment file names it (None for another
        stage's row, or a cell the file no longer names)."""
        if row["stage"] not in ("sft", "dmpo"):
            return None
        return next((c for c in self.exp.cells if c.name == row["cell"]), None)

    def zero_shots(self, cfg: RunConfig) -> list[dict[str, Any]]:
        """The zero-shot rows of `cfg`'s base model on `cfg`'s pairs."""
        return [
            r
            for c in self.exp.cells
            if "zero_shot" in c.stages
            and _pairs_key(self.config(c)) == _pairs_key(cfg)
            and self.config(c).model.name == cfg.model.name
            for r in self.of(c.name)
            if r["stage"] == "zero_shot"
        ]

    def gain_tests(self) -> list[dict[str, Any]]:
        """Whether a trained row gains more over its own model's zero-shot than a row of another
        base model that its cell's paired_with names (the same stage, on the same pairs) gains
        over that model's zero-shot (metrics.gain_difference_test, bootstrap over users): e.g.
        Gemma 3 270M's DMPO against SmolLM2's. A row that kept only its per-pair correctness
        is tested on accuracy alone; one that kept neither is left out, and so is a model with
        more than one zero-shot row on these pairs (which is its base would be a guess)."""
        tests = []
        for row in self.rows:
            cell = self._trained_cell(row)
            if cell is None:
                continue
            cfg = self.config(cell)
            for name in cell.paired_with:
                other_cfg = self.config(self.exp.cell(name))
                same_model = other_cfg.model.name == cfg.model.name
                bases = self.zero_shots(cfg), self.zero_shots(other_cfg)
                one_base = all(len(b) == 1 for b in bases)
                if same_model or _pairs_key(other_cfg) != _pairs_key(cfg) or not one_base:
                    continue
                for other in (r for r in self.of(name) if r["stage"] == row["stage"]):
                    test = _gain_test(row, bases[0][0], other, bases[1][0], seed=cfg.eval.seed)
                    if test is not None:
                        tests.append(test)
        return tests

    def paired_tests(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every comparison's test (tables.paired_row_test) where both rows keep their per-pair
        results; else the test the row was published with, if any. Returns the tests and the
        comparisons that had neither ('A vs B')."""
        tests, missing = [], []
        for row in self.rows:
            for other in self.comparisons(row):
                seed = self.config(self.exp.cell(row["cell"])).eval.seed
                test = paired_row_test(
                    row, other, seed=seed, names=(row_name(row), row_name(other))
                )
                if test is None:
                    test = next(
                        (
                            {**{k: v for k, v in t.items() if k != "n"}, "a": row_name(row),
                             "b": row_name(other)}
                            for t in row.get("paired_tests", [])
                            if t["b"] == row_name(other) or legacy_test_matches(t, other)
                        ),
                        None,
                    )  # fmt: skip
                if test is None:
                    missing.append(f"{row_name(row)} vs {row_name(other)}")
                else:
                    tests.append(test)
        return tests, missing

    # -- tables, report, publish ----------------------------------------------------------

    def write(self) -> str:
        """results.md, paired.md and paired.json, gains.json where there are gain tests,
        report.md with its plots; then publish them with every row. Returns the results table."""
        tests, missing = self.paired_tests()
        named = [{**r, "model": row_name(r)} for r in self.rows]
        table = summary_table(named)
        atomic_write_text(self.out / "results.md", table + "\n")
        paired = paired_table(tests) if tests else "No paired tests (no trained rows to pair)."
        if missing:
            paired += (
                f"\n\nLeft out, one side keeps no per-pair results (rerun that cell to pair "
                f"it): {'; '.join(missing)}."
            )
        gains = self.gain_tests()
        if gains:
            paired += (
                "\n\n## Gains over each model's own zero-shot (the same pairs)\n\n"
                + gain_table(gains)
            )
        atomic_write_text(
            self.out / "paired.md", "## Paired tests (the same pairs)\n\n" + paired + "\n"
        )
        atomic_write_text(self.out / "paired.json", json.dumps(tests, indent=1) + "\n")
        if gains:
            atomic_write_text(self.out / "gains.json", json.dumps(gains, indent=1) + "\n")
        else:  # none now: an earlier run's must not be published as this one's
            (self.out / "gains.json").unlink(missing_ok=True)
        pngs = report_images(write_report(self.out, plots=self.exp.plots))
        if self.exp.publish:
            self.publish(tests, pngs)
        return f"{table}\n\n(results in {self.path}; paired tests in {self.out / 'paired.md'})"

    def publish(self, tests: list[dict[str, Any]], pngs: list[Path]) -> None:
        """Every row, carrying its paired tests, into PUBLISH/results.jsonl, and the tables and
        plots beside it; rows published there for cells this experiment file does not name are
        kept as they are."""
        target = Path(self.exp.publish)
        source = published(self.exp)
        names = {c.name for c in self.exp.cells}
        kept = [r for r in read_jsonl(source) if r["cell"] not in names] if source.is_file() else []
        rows = []
        for row in self.rows:
            mine = [t for t in tests if t["a"] == row_name(row)]
            row = {k: v for k, v in row.items() if k != "paired_tests"}
            rows.append({**row, **({"paired_tests": mine} if mine else {})})
        if kept:
            print(f"publish: kept {len(kept)} row(s) of cells not in this experiment file")
        atomic_write_text(source, "".join(json.dumps(r) + "\n" for r in [*rows, *kept]))
        elsewhere = self.out.resolve() != target.resolve()
        for path in [*(self.out / n for n in PUBLISHED_FILES), *pngs]:
            if path.is_file() and elsewhere:
                shutil.copy(path, target / path.name)
            elif elsewhere:  # this run wrote none (no gain tests): an earlier one's goes too
                (target / path.name).unlink(missing_ok=True)
        print(f"publish: {len(rows)} row(s), tables and plots in {target}")
