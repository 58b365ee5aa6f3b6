"""How the hybrid's regularization C should be chosen, decided on validation users only.

    .venv/bin/python benchmarks/hybrid_selection.py [--repeats 5] [--folds 5] [--out FILE]
        DIR [DIR ...]

Each DIR is a published hybrid (`dmporec hybrid`'s STAGE/hybrid/, e.g. under
docs/results/hybrid-ml1m/): its pairs-valid.jsonl holds every component's margin on the
validation pairs the hybrid was fitted on. Nothing of the test pairs is read.

Nested cross-validation over the validation users: the users are split into --folds outer folds
(GroupKFold, shuffled by seed, --repeats seeds); on each outer training part Hybrid.fit chooses C
by its inner GroupKFold, once by cross-validated log-loss and once by accuracy, and the fitted
fusion is scored on the outer held-out users. Printed per DIR and selection: the held-out
accuracy (mean over repeats, and each repeat's), and the paired difference log-loss - accuracy
per repeat; written as JSON to --out (default runs/hybrid-selection.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from dmporec.files import atomic_write_text
from dmporec.hybrid import Hybrid
from dmporec.metrics import pairwise_accuracy

NOT_COMPONENTS = ("user_id", "positive", "negative", "hybrid", "classic_fusion")


def read_margins(directory: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The components' validation margins and each pair's user, from DIR/pairs-valid.jsonl."""
    path = directory / "pairs-valid.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        components = [k for k in rows[0] if k not in NOT_COMPONENTS]
        margins = {c: np.array([float(r[c]) for r in rows]) for c in components}
        users = np.array([str(r["user_id"]) for r in rows])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise SystemExit(
            f"hybrid_selection: {path}: not a hybrid's validation pairs ({e!r})"
        ) from None
    return margins, users


def held_out_accuracy(
    margins: dict[str, np.ndarray], users: np.ndarray, selected_by: str, folds: int, seed: int
) -> float:
    from sklearn.model_selection import GroupKFold

    fused = np.zeros(users.size)
    outer = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, held in outer.split(users, groups=users):
        fit = Hybrid.fit({c: m[train] for c, m in margins.items()}, users[train],
                         folds=folds, selected_by=selected_by)  # fmt: skip
        fused[held] = fit.margin({c: m[held] for c, m in margins.items()})
    return pairwise_accuracy(fused, -fused)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    parser.add_argument("--repeats", type=int, default=5, help="outer splits, one seed each")
    parser.add_argument("--folds", type=int, default=5, help="outer and inner folds")
    parser.add_argument("--out", type=Path, default=Path("runs/hybrid-selection.json"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    doc: dict[str, dict] = {}
    lines = [
        "| hybrid | validation pairs | held-out accuracy, C by log-loss | by accuracy | "
        "log-loss - accuracy, per repeat |",
        "|---|---|---|---|---|",
    ]
    for directory in args.dirs:
        margins, users = read_margins(directory)
        try:
            got = {
                sel: [
                    held_out_accuracy(margins, users, sel, args.folds, s)
                    for s in range(args.repeats)
                ]
                for sel in ("log-loss", "accuracy")
            }
        except ValueError as e:  # Hybrid.fit: too few users in an outer fold's training part
            raise SystemExit(f"hybrid_selection: {directory}: {e} (--folds {args.folds})") from None
        diff = np.subtract(got["log-loss"], got["accuracy"])
        doc[str(directory)] = {"pairs": int(users.size), "held_out_accuracy": got,
                               "difference": diff.tolist()}  # fmt: skip
        lines.append(
            f"| {directory.name} | {users.size} | {np.mean(got['log-loss']):.4f} | "
            f"{np.mean(got['accuracy']):.4f} | {' '.join(f'{d:+.3f}' for d in diff)} |"
        )
        print(lines[-1], file=sys.stderr)
    print("\n".join(lines))
    atomic_write_text(
        args.out, json.dumps({"repeats": args.repeats, "folds": args.folds, "hybrids": doc},
                             indent=1) + "\n",
    )  # fmt: skip
    print(f"(written to {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
