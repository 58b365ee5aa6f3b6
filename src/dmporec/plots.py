"""Training curves from a stage's metrics.jsonl, as one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dmporec.files import read_steps  # noqa: E402

CURVES = (
    ("loss", "loss"),
    ("reward_margin", "reward margin"),
    ("reward_accuracy", "reward accuracy"),
    ("valid_accuracy", "validation accuracy"),
)


def plot_curves(metrics_path: Path, out_path: Path) -> Path | None:
    """Plot every logged curve against the optimizer step; None when nothing was logged."""
    if not metrics_path.is_file():
        return None
    rows = read_steps(metrics_path)
    panels = [(key, title) for key, title in CURVES if any(key in r for r in rows)]
    if not rows or not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        ax.plot(
            [r["step"] for r in rows if key in r], [r[key] for r in rows if key in r], marker="."
        )
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{rows[0].get('stage', '')} training", fontsize=10)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path
