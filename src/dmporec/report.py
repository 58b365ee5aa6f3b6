"""`dmporec report RUN_DIR`: a markdown report with tables and plots of a run or an experiment.

RUN_DIR is an experiment directory (results.jsonl, from `dmporec experiment`) or a pipeline run
(summary.json, from `dmporec run`). The report holds the results table, the paired tests, listwise
metrics when they were measured, an experiment's extra evaluations and training statistics,
accuracy with 95% CIs of every model side by side, accuracy against k for the DPO/DMPO rows (and
against whatever settings key an experiment file's `plots` name), and the training curves of every
stage found (loss, reward margin, reward accuracy).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dmporec.files import atomic_write_text, read_steps  # noqa: E402
from dmporec.plots import CURVES  # noqa: E402
from dmporec.records import DataError  # noqa: E402
from dmporec.tables import (  # noqa: E402
    eval_table,
    hybrid_eval_table,
    paired_table,
    summary_table,
    training_table,
)


def series_name(row: dict[str, Any]) -> str:
    """A row's line on a plot: its model, and its cell's label ('DMPO (k=3), lr 0.001')."""
    return ", ".join([row["model"], *([row["label"]] if row.get("label") else [])])


def row_value(row: dict[str, Any], key: str) -> Any:
    """A row's value of `key`: its cell's vars, else its settings (None when it has neither)."""
    if key in row.get("vars", {}):
        return row["vars"][key]
    return row.get("settings", {}).get(key)


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Result rows of an experiment (model named 'cell: stage', `series` its line on plots) or of
    a pipeline run."""
    results, summary = run_dir / "results.jsonl", run_dir / "summary.json"
    if not run_dir.is_dir():
        raise DataError("no such directory (report takes a run's or an experiment's)", file=run_dir)
    if results.is_file():
        rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
        return [
            {**r, "model": f"{r['cell']}: {r['model']}", "series": series_name(r)} for r in rows
        ]
    if summary.is_file():
        rows = json.loads(summary.read_text()).get("rows")
        if rows is None:  # a stage's summary.json, not a run's
            raise DataError(
                "is a stage's directory (its summary.json has no result rows); report takes the "
                "run's directory, its parent",
                file=run_dir,
            )
        return rows
    raise DataError(
        "neither results.jsonl (dmporec experiment) nor summary.json (dmporec run) found",
        file=run_dir,
    )


def _ci(m: dict[str, Any], key: str) -> tuple[float, float, float]:
    return m[key], m[key] - m[f"{key}_ci_low"], m[f"{key}_ci_high"] - m[key]


def plot_models(rows: list[dict[str, Any]], out: Path) -> Path:
    """Pairwise accuracy of every row with its 95% CI; 0.5 is chance."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 1.5), 3.4))
    values = [_ci(r["metrics"], "accuracy") for r in rows]
    ax.bar(
        range(len(rows)),
        [v for v, _, _ in values],
        yerr=[[lo for _, lo, _ in values], [hi for _, _, hi in values]],
        capsize=4,
        color="tab:blue",
        alpha=0.8,
    )
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("pairwise accuracy (95% CI)")
    ax.set_ylim(0.3, 0.8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_sweep(
    rows: list[dict[str, Any]],
    x: str,
    out: Path,
    *,
    line: str | None = None,
    bands: Sequence[str] = (),
    log_x: bool = False,
    title: str = "",
    xlabel: str = "",
    metrics: Sequence[str] = ("accuracy",),
) -> Path | None:
    """A metric (95% CI) against `x` (a vars or settings key, see row_value), one line per model
    (`series`) or per value of the key `line`; the rows of the `bands` cells as horizontal
    bands. `metrics`: one panel each, side by side ("accuracy", "auc": the authors' coin-flip
    AUC); a row without a metric's CI is left out of that panel. None without two x values."""
    panels: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {}
    for metric in metrics:
        series = panels[metric] = {}
        for r in rows:
            value = row_value(r, x)
            if r.get("cell") in bands or isinstance(value, bool):
                continue
            if not isinstance(value, int | float) or f"{metric}_ci_low" not in r["metrics"]:
                continue
            name = str(row_value(r, line)) if line else r.get("series", r["model"])
            mean, lo, hi = _ci(r["metrics"], metric)
            series.setdefault(name, []).append((float(value), mean, lo, hi))
    xs = sorted({p[0] for pts in panels[metrics[0]].values() for p in pts})
    if len(xs) < 2:
        return None
    width = 8.6 if len(panels[metrics[0]]) > 4 else 4.8
    fig, grid = plt.subplots(
        1, len(metrics), figsize=(width + 3.6 * (len(metrics) - 1), 4.0), squeeze=False
    )
    axes = list(grid[0])
    # One colour per line across the panels, and one legend of every line and band.
    names = dict.fromkeys(n for metric in metrics for n in panels[metric])
    # More lines than the default cycle's ten colours: tab20's without its greys (the zero-shot
    # band is grey), 18, so up to 18 lines never share one.
    tab18 = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (14, 15)]
    palette = [f"C{i}" for i in range(10)] if len(names) <= 10 else tab18
    colors = {name: palette[i % len(palette)] for i, name in enumerate(names)}
    for ax, metric in zip(axes, metrics, strict=True):
        _sweep_panel(ax, rows, panels[metric], metric, bands, log_x, colors)
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (95% CI)")
        if title:
            ax.set_title(title)
    legend: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    # Beside the panels: no point hidden.
    axes[-1].legend(
        list(legend.values()), list(legend), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1)
    )
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


METRIC_LABELS = {"accuracy": "pairwise accuracy", "auc": "coin-flip AUC"}


def _sweep_panel(
    ax, rows, series, metric: str, bands: Sequence[str], log_x: bool, colors: dict[str, str]
) -> None:
    """One metric's lines (and the bands' rows) on `ax`; 0.5 (chance for both metrics) dashed."""
    for r in rows:
        if r.get("cell") in bands and f"{metric}_ci_low" in r["metrics"]:
            mean, lo, hi = _ci(r["metrics"], metric)
            ax.axhspan(mean - lo, mean + hi, color="gray", alpha=0.15)
            ax.axhline(
                mean, color="gray", linestyle=":",
                label=f"{r.get('series', r['model'])} (95% CI band)",
            )  # fmt: skip
    xs = sorted({p[0] for pts in series.values() for p in pts})
    # Each line a little to the side, so CIs at the same x do not cover each other.
    step = 0.025 if log_x else 0.01 * (xs[-1] - xs[0]) if len(xs) > 1 else 0.0
    for i, (name, pts) in enumerate(series.items()):
        pts.sort()
        shift = i - (len(series) - 1) / 2
        at = [p[0] * (1 + step) ** shift if log_x else p[0] + step * shift for p in pts]
        ax.errorbar(
            at,
            [p[1] for p in pts],
            yerr=[[p[2] for p in pts], [p[3] for p in pts]],
            marker="o",
            capsize=3,
            label=name,
            color=colors[name],
        )
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle="--")
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)


def plot_vs_k(rows: list[dict[str, Any]], out: Path) -> Path | None:
    """Accuracy and coin-flip AUC (two panels) against the number of negatives k (dmpo.k) of the
    DPO/DMPO rows, one line per group of cells that differ in k alone: cells of other training
    users, learning rates, losses or SFT terms never share a line, so a point's move along a
    line is k's. A cell alone at its settings is left out, unless only its loss tells it from a
    line (S-DPO at one k beside DMPO's line): a point of its own. Each line is named by the
    settings that tell the kept groups apart (a file by its name). None without a line of two
    k values."""
    trained = [r for r in rows if r.get("stage") == "dmpo" and row_value(r, "dmpo.k") is not None]
    groups: dict[str, list[dict[str, Any]]] = {}
    rest_of: dict[str, dict[str, Any]] = {}  # a group's settings but k, by its key
    for r in trained:
        rest = _all_but_k(r)
        key = json.dumps(rest, sort_keys=True)
        groups.setdefault(key, []).append(r)
        rest_of[key] = rest
    lines = {key for key, g in groups.items() if len({row_value(r, "dmpo.k") for r in g}) > 1}
    if not lines:
        return None
    line_settings = [_without_loss(rest_of[key]) for key in lines]
    kept = [key for key in groups if key in lines or _without_loss(rest_of[key]) in line_settings]
    rests = [rest_of[key] for key in kept]
    keys = sorted({k for rest in rests for k in rest})
    differ = [k for k in keys if len({json.dumps(rest.get(k)) for rest in rests}) > 1]
    named = []
    for key in kept:
        name = ", ".join(f"{k.split('.')[-1]} {_short(rest_of[key].get(k))}" for k in differ)
        name = name or str(row_value(groups[key][0], "dmpo.loss") or "dmpo")
        named += [{**r, "vars": {**r.get("vars", {}), "k line": name}} for r in groups[key]]
    return plot_sweep(named, "dmpo.k", out, line="k line", metrics=("accuracy", "auc"))


def _without_loss(rest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rest.items() if k != "dmpo.loss"}


def _all_but_k(row: dict[str, Any]) -> dict[str, Any]:
    """What a row's cell was made with but dmpo.k: its settings, or (a row from before rows kept
    them) its overrides."""
    if "settings" in row:
        # Dotless keys say which stages a cell ran (baselines, zero_shot, hybrid; rows of older
        # runs lack some) or which SFT it shares (sft_from, checked to be the same one): not how
        # its model was made.
        return {k: v for k, v in row["settings"].items() if "." in k and k != "dmpo.k"}
    pairs = (o.partition("=") for o in row.get("overrides", []))
    return {k: v for k, _, v in pairs if k != "dmpo.k"}


def _short(value: Any) -> str:
    text = str(value)
    return Path(text).name if "/" in text else text


def plot_training(run_dir: Path, out: Path) -> Path | None:
    """Every stage's curves (loss, reward margin, reward accuracy) overlaid, one line per stage."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(run_dir.glob("**/metrics.jsonl")):
        steps = read_steps(path)
        if steps:
            curves[str(path.parent.relative_to(run_dir))] = steps
    panels = [(k, t) for k, t in CURVES if any(k in r for rows in curves.values() for r in rows)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for name, rows in curves.items():
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", label=name)
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def listwise_table(rows: list[dict[str, Any]]) -> str | None:
    """HR@1, HR@5, NDCG@10, MRR per row that measured them (eval.listwise)."""
    lines = []
    for r in rows:
        m = r["metrics"]
        prefix = next((k[: -len("_users")] for k in m if re.fullmatch(r"list\d+_users", k)), None)
        if prefix is None:
            continue
        cells = [f"{m[f'{prefix}_{x}']:.3f}" for x in ("hr@1", "hr@5", "ndcg@10", "mrr")]
        lines.append(
            f"| {r['model']} | {prefix[4:]} | {m[f'{prefix}_users']} | {' | '.join(cells)} |"
        )
    if not lines:
        return None
    head = "| model | candidates | users | HR@1 | HR@5 | NDCG@10 | MRR |\n|---|---|---|---|---|---|---|"
    return head + "\n" + "\n".join(lines)


def _paired_tests(run_dir: Path) -> list[dict[str, Any]]:
    """The paired tests of an experiment (paired.json) or of a pipeline run (summary.json)."""
    experiment, summary = run_dir / "paired.json", run_dir / "summary.json"
    if experiment.is_file():
        return json.loads(experiment.read_text())
    if summary.is_file():
        return json.loads(summary.read_text()).get("paired_tests", [])
    return []


def write_report(run_dir: str | Path, plots: Sequence[Any] = ()) -> Path:
    """Write RUN_DIR/report.md and its PNGs; return the report's path. `plots`: an experiment
    file's sweep plots (x, file, line, bands, log_x, title, xlabel)."""
    run_dir = Path(run_dir)
    rows = read_rows(run_dir)
    if not rows:
        raise DataError("no finished results to report yet", file=run_dir)
    parts = [f"# Results: {run_dir.name}", "", summary_table(rows), ""]
    split = {r.get("split", "test") for r in rows}
    parts += [f"Evaluated on the {' and '.join(sorted(split))} split.", ""]
    tests = _paired_tests(run_dir)
    if tests:
        parts += ["## Paired tests (the same pairs)", "", paired_table(tests), ""]
    listwise = listwise_table(rows)
    if listwise:
        parts += ["## Listwise (sampled candidates)", "", listwise, ""]
    for name in dict.fromkeys(n for r in rows for n in r.get("evals", {})):
        table = hybrid_eval_table(rows, name) or eval_table(rows, name)
        parts += [f"## Extra evaluation: {name}", "", table, ""]
    training = training_table(rows)
    if training:
        parts += ["## Training", "", training, ""]
    figures = [
        ("Models side by side", plot_models(rows, run_dir / "report_models.png")),
        ("Accuracy and AUC against k", plot_vs_k(rows, run_dir / "report_k.png")),
    ]
    for p in plots:
        path = plot_sweep(
            rows,
            p.x,
            run_dir / p.file,
            line=p.line,
            bands=p.bands,
            log_x=p.log_x,
            title=p.title,
            xlabel=p.xlabel,
        )
        figures.append((p.title or f"Accuracy against {p.x}", path))
    figures.append(("Training curves", plot_training(run_dir, run_dir / "report_training.png")))
    for title, path in figures:
        if path is not None:
            parts += [f"## {title}", "", f"![{title}]({path.name})", ""]
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(parts))
    return out


def report_images(report: Path) -> list[Path]:
    """The PNGs a report.md shows (beside it)."""
    return [report.parent / name for name in re.findall(r"\]\(([^)]+\.png)\)", report.read_text())]
