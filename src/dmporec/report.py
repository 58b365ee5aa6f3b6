"""`dmporec report RUN_DIR`: a markdown report with tables and plots of a run or an experiment.

RUN_DIR is an experiment directory (results.jsonl, from `dmporec experiment`) or a pipeline run
(summary.json, from `dmporec run`). The report holds the results table, accuracy with 95% CIs of
every model side by side, accuracy against k for the DPO/DMPO rows, listwise metrics when they
were measured, and the training curves of every stage found (loss, reward margin, reward accuracy).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dmporec.plots import CURVES  # noqa: E402
from dmporec.records import DataError, atomic_write_text  # noqa: E402
from dmporec.tables import summary_table  # noqa: E402

_K = re.compile(r"\(k=(\d+)\)")


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Result rows of an experiment (model named 'cell: stage') or of a pipeline run."""
    results, summary = run_dir / "results.jsonl", run_dir / "summary.json"
    if not run_dir.is_dir():
        raise DataError("no such directory (report takes a run's or an experiment's)", file=run_dir)
    if results.is_file():
        rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
        return [{**r, "model": f"{r['cell']}: {r['model']}"} for r in rows]
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


def plot_vs_k(rows: list[dict[str, Any]], out: Path) -> Path | None:
    """Accuracy against the number of negatives k, one line per loss; None without two k values."""
    series: dict[str, list[tuple[int, tuple[float, float, float]]]] = {}
    for r in rows:
        match = _K.search(r["model"])
        if match:
            loss = "S-DPO" if "SDPO" in r["model"] else "DPO / DMPO"
            series.setdefault(loss, []).append((int(match.group(1)), _ci(r["metrics"], "accuracy")))
    if not any(len({k for k, _ in pts}) > 1 for pts in series.values()):
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for name, pts in series.items():
        pts.sort()
        ax.errorbar(
            [k for k, _ in pts],
            [v for _, (v, _, _) in pts],
            yerr=[[lo for _, (_, lo, _) in pts], [hi for _, (_, _, hi) in pts]],
            marker="o",
            capsize=4,
            label=name,
        )
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("negatives per user (k)")
    ax.set_ylabel("pairwise accuracy (95% CI)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_training(run_dir: Path, out: Path) -> Path | None:
    """Every stage's curves (loss, reward margin, reward accuracy) overlaid, one line per stage."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(run_dir.glob("**/metrics.jsonl")):
        by_step = {}
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                by_step[row["step"]] = row
        if by_step:
            curves[str(path.parent.relative_to(run_dir))] = [by_step[s] for s in sorted(by_step)]
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


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.md and its PNGs; return the report's path."""
    run_dir = Path(run_dir)
    rows = read_rows(run_dir)
    if not rows:
        raise DataError("no finished results to report yet", file=run_dir)
    parts = [f"# Results: {run_dir.name}", "", summary_table(rows), ""]
    split = {r.get("split", "test") for r in rows}
    parts += [f"Evaluated on the {' and '.join(sorted(split))} split.", ""]
    listwise = listwise_table(rows)
    if listwise:
        parts += ["## Listwise (sampled candidates)", "", listwise, ""]
    plots = [
        ("Models side by side", plot_models(rows, run_dir / "report_models.png")),
        ("Accuracy against k", plot_vs_k(rows, run_dir / "report_k.png")),
        ("Training curves", plot_training(run_dir, run_dir / "report_training.png")),
    ]
    for title, path in plots:
        if path is not None:
            parts += [f"## {title}", "", f"![{title}]({path.name})", ""]
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(parts))
    return out
