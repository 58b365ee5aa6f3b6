"""An experiment's extra evaluations (its file's `evals`) of the finished rows, each kept in the row
under evals.NAME with the settings it was made with.

kind `evaluate`: `dmporec evaluate` of the row's model into STAGE/eval-NAME (a baselines cell's
baselines refitted on the evaluation's data): its metrics, and the accuracy on each user's i-th
negative. kind `hybrid`: `dmporec hybrid` of an sft or dmpo row's model (stages/hybrid.py), fitted
on the validation users and scored on the test pairs: its metrics, both fitted fusions (with and
without the LLM), its paired tests against every component and its per-pair test scores.

An evaluation's settings are what it adds to its row's: its kind and every resolved setting its
overrides change (config.flat_settings, as a cell's settings are kept); a hybrid's also how its
C was chosen (hybrid.selected_by). A stored evaluation made
with other settings stops the run (check_evals) until its cell runs again (--rerun).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dmporec.config import ConfigError, RunConfig, flat_settings
from dmporec.evaluation import chosen_rejected_scores, read_predictions
from dmporec.hybrid import SELECTED_BY
from dmporec.metrics import pair_correct
from dmporec.stages.common import settings_changes
from dmporec.stages.experiment import Cell, ExtraEval, cell_config

if TYPE_CHECKING:
    from dmporec.stages.experiment_rows import Results

TRAINED = ("sft", "dmpo")  # the rows a hybrid evaluation fuses: a model trained here


def applies(ev: ExtraEval, cell: Cell) -> bool:
    return any(fnmatch.fnmatchcase(cell.name, p) for p in ev.cells)


def eval_config(results: Results, cell: Cell, ev: ExtraEval) -> RunConfig:
    """The cell's config with the evaluation's overrides on top (the cell's directory kept)."""
    return cell_config(results.exp, cell, [*results.extra, *ev.overrides])


def eval_settings(results: Results, cell: Cell, ev: ExtraEval) -> dict[str, Any]:
    """What an extra evaluation of `cell` depends on beyond the cell's own settings: its kind and
    the settings its overrides change ('section.key': value), e.g. {'kind': 'hybrid',
    'data.valid': 'runs/learning-curve/data/hybrid_valid.jsonl', 'hybrid.selected_by':
    'log-loss'}."""
    mine = results.settings(cell)
    made = flat_settings(eval_config(results, cell, ev))
    out = {"kind": ev.kind, **{k: v for k, v in made.items() if mine.get(k) != v}}
    if ev.kind == "hybrid":  # a hybrid fitted another way is another result
        out["hybrid.selected_by"] = SELECTED_BY
    return out


def made_otherwise(result: dict[str, Any], cell_has: dict[str, Any], wanted: dict[str, Any]) -> str:
    """Why a stored evaluation is not the one the experiment now makes ('' when it is): the
    settings that differ once each side's are laid over the cell's (`cell_has`), so an override
    dropped since reads as the cell's value now."""
    if "settings" not in result:
        return "no record of its settings (made by an older dmporec)"
    said = settings_changes({**cell_has, **result["settings"]}, {**cell_has, **wanted})
    return f"other settings ({said})" if said else ""


def check_evals(results: Results) -> None:
    """Stop (ConfigError, one line naming the cell and the evaluation) when a row keeps an
    evaluation the experiment file asks for that was made with other settings: it is never
    published as this file's; --rerun CELL makes it again."""
    for ev in results.exp.evals:
        for cell in (c for c in results.exp.cells if applies(ev, c)):
            kept = [r for r in results.of(cell.name) if ev.name in r.get("evals", {})]
            if not kept:
                continue
            wanted = eval_settings(results, cell, ev)
            for row in kept:
                why = made_otherwise(row["evals"][ev.name], results.settings(cell), wanted)
                if why:
                    raise ConfigError(
                        f"{results.path}: cell {cell.name} ({row['model']}): extra evaluation "
                        f"{ev.name} was made with {why}: run the cell again with --rerun "
                        f"{cell.name}, or give the evaluation another name"
                    )


def stamp_legacy(results: Results, cell: Cell, row: dict[str, Any]) -> dict[str, Any]:
    """A row of the old learning-curve script (stages/experiment_legacy.py) carries evaluations
    without settings, made as the experiment file's evaluations of those names are
    (experiment_legacy names them after configs/experiments/learning-curve-ml1m.yaml's): they take
    those evaluations' settings. Evaluations the file does not give the cell are left as they are."""
    for ev in results.exp.evals:
        result = row.get("evals", {}).get(ev.name)
        if result is not None and "settings" not in result and applies(ev, cell):
            result["settings"] = eval_settings(results, cell, ev)
    return row


def accuracy_by_negative(eval_dir: Path, orders: str) -> dict[str, float]:
    """Accuracy on each user's i-th negative ('1', '2', ...): whether a model learned the
    negatives it trained on or what the user likes."""
    preds = read_predictions(eval_dir)
    correct = pair_correct(*chosen_rejected_scores(preds, orders))
    seen: dict[str, int] = {}
    by: dict[int, list[float]] = {}
    for pred, ok in zip(preds, correct, strict=True):
        i = seen[pred["user_id"]] = seen.get(pred["user_id"], 0) + 1
        by.setdefault(i, []).append(float(ok))
    return {str(i): round(float(np.mean(v)), 3) for i, v in sorted(by.items())}


def _evaluated(cfg: RunConfig, row: dict[str, Any], where: Path) -> dict[str, Any]:
    from dmporec.stages.evaluate import run_evaluate

    result = run_evaluate(cfg, row["stage"], where)
    by_negative = accuracy_by_negative(where, cfg.eval.orders)
    return {**result, "accuracy_by_negative": by_negative} if len(by_negative) > 1 else result


def _hybrid(cfg: RunConfig, row: dict[str, Any], what: str) -> dict[str, Any]:
    """The hybrid of the row's model, as its evaluation keeps it: the metrics of the test pairs,
    the validation pairs and users it was fitted on, both fusions (Hybrid's fields), its paired
    tests against every component ('CELL: MODEL + classic' vs each), its LLM's against each
    classic scorer, and its per-pair scores."""
    from dmporec.stages.experiment_rows import row_name
    from dmporec.stages.hybrid import run_hybrid

    try:
        made = run_hybrid(cfg, row["stage"], f"{row_name(row)} + classic")
    except ValueError as e:  # Hybrid.fit: too few validation users, non-finite margins
        raise ConfigError(f"{what}: {e}") from None
    return {
        **made["metrics"],
        "valid_pairs": made["fusion"]["valid_pairs"],
        "valid_users": made["fusion"]["valid_users"],
        "fusion": made["fusion"],
        "classic_fusion": made["classic_fusion"],
        "paired_tests": made["paired_tests"],
        "llm_paired_tests": made["llm_paired_tests"],
        "pair_scores": made["pair_scores"],
    }


def extra_evals(results: Results, only: Iterable[str] | None = None) -> None:
    """Every extra evaluation of every cell that ran here (or of the `only` ones) that its rows
    lack, called directly; each cell's results saved as they finish. Restored rows keep what
    they were published with (check_evals has held them to the file's settings); a restored cell
    whose model is not here is named and left without."""
    from dmporec.stages.common import prepare_run
    from dmporec.stages.pipeline import baseline_rows

    for ev in results.exp.evals:
        left_out = []
        for cell in results.exp.cells:
            if not applies(ev, cell) or (only is not None and cell.name not in only):
                continue
            rows = [
                r
                for r in results.of(cell.name)
                if ev.name not in r.get("evals", {})
                and (ev.kind == "evaluate" or r["stage"] in TRAINED)
            ]
            if not rows:
                continue
            if not (results.out / cell.name / "config.yaml").is_file():
                left_out.append(cell.name)
                continue
            cfg = prepare_run(eval_config(results, cell, ev), record=False)
            settings = eval_settings(results, cell, ev)
            made: dict[str, Any] = {}
            if any(r["stage"] == "baselines" for r in rows):
                made = {b["model"]: b["metrics"] for b in baseline_rows(cfg)}
            for row in rows:
                what = f"experiment: {ev.name} of cell {cell.name} ({row['model']})"
                if row["stage"] == "baselines":
                    result = made[row["model"]]
                elif ev.kind == "hybrid":
                    print(what)
                    result = _hybrid(cfg, row, what)
                else:
                    print(what)
                    where = results.out / cell.name / row["stage"] / f"eval-{ev.name}"
                    result = _evaluated(cfg, row, where)
                row["evals"] = {**row.get("evals", {}), ev.name: {**result, "settings": settings}}
            results.save()
        if left_out:
            print(
                f"experiment: {ev.name} left out of {', '.join(left_out)}: restored, its model "
                "is not here (--rerun CELL trains it here and evaluates it)"
            )
