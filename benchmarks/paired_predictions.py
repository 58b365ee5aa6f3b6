"""Two evaluations of the same pairs, paired: accuracy (McNemar, paired bootstrap CI) and the
coin-flip and stable AUCs (paired bootstrap over users), from their predictions.jsonl.

    .venv/bin/python benchmarks/paired_predictions.py A_EVAL_DIR B_EVAL_DIR [--orders both]
        [--base-a A_BASE_EVAL_DIR --base-b B_BASE_EVAL_DIR] [--out FILE.json]

A_EVAL_DIR and B_EVAL_DIR are evaluation directories (or predictions.jsonl files) of the same
pairs in the same order, e.g. a stage's eval-valid/ and another stage's. Prints a table and
writes the numbers as JSON to --out (default: print only).

With --base-a and --base-b (each model's base on the same pairs, e.g. its zero-shot), it also
tests whether A gains more over its base than B over its own: (A - A's base) - (B - B's base)
of accuracy and of the coin-flip AUC, paired bootstrap over users (metrics.gain_difference_test).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dmporec.evaluation import chosen_rejected_scores
from dmporec.files import atomic_write_text, read_jsonl
from dmporec.metrics import gain_difference_test, pairwise_report
from dmporec.tables import paired_row_test


def predictions(path: Path) -> list[dict]:
    path = path / "predictions.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"paired_predictions: {path}: no such file")
    return read_jsonl(path)


def _key(r: dict) -> tuple[str, str, str]:
    return (r["user_id"], r["positive"], r["negative"])


def compare(a: list[dict], b: list[dict], orders: str, seed: int = 0) -> dict:
    if [_key(r) for r in a] != [_key(r) for r in b]:
        raise SystemExit("paired_predictions: the two files do not hold the same pairs in order")
    users = [r["user_id"] for r in a]
    scored = {name: chosen_rejected_scores(p, orders) for name, p in (("A", a), ("B", b))}
    rows = [
        {"model": name, "pair_scores": {"users": users, "chosen": c, "rejected": r}}
        for name, (c, r) in scored.items()
    ]
    return {
        "pairs": len(a),
        "orders": orders,
        "a_metrics": pairwise_report(*scored["A"], seed=seed),
        "b_metrics": pairwise_report(*scored["B"], seed=seed),
        "test": paired_row_test(*rows, orders=orders, seed=seed),  # accuracy and both AUCs
    }


def compare_gains(models: dict[str, tuple[str, list[dict]]], orders: str, seed: int = 0) -> dict:
    """The gain test of `models` ("a", "a_base", "b", "b_base": (path, predictions))."""
    pairs = [_key(r) for r in models["a"][1]]
    for path, rows in models.values():
        if [_key(r) for r in rows] != pairs:
            raise SystemExit(
                f"paired_predictions: {path} does not hold the same pairs in order as {models['a'][0]}"
            )
    users = [r["user_id"] for r in models["a"][1]]
    scores = {k: chosen_rejected_scores(rows, orders) for k, (_, rows) in models.items()}
    return gain_difference_test(users, scores, seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="evaluation directory or predictions.jsonl of model A")
    parser.add_argument("b", help="the same of model B, on the same pairs")
    parser.add_argument("--orders", choices=("both", "listed"), default="both")
    parser.add_argument("--base-a", help="A's base (e.g. its zero-shot) on the same pairs")
    parser.add_argument("--base-b", help="B's base on the same pairs (with --base-a)")
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args(argv)
    if (args.base_a is None) != (args.base_b is None):
        parser.error("--base-a and --base-b go together")
    a, b = predictions(Path(args.a)), predictions(Path(args.b))
    result = compare(a, b, args.orders)
    result["a"], result["b"] = args.a, args.b
    acc = auc = result["test"]
    print("| | A | B | A - B [95% CI] | p |")
    print("|---|---|---|---|---|")
    print(
        f"| accuracy | {acc['accuracy_a']:.3f} | {acc['accuracy_b']:.3f} | "
        f"{acc['difference']:+.3f} [{acc['difference_ci_low']:+.3f}, "
        f"{acc['difference_ci_high']:+.3f}] | {acc['p_value']:.3g} (McNemar, "
        f"{acc['a_better']} / {acc['b_better']} discordant) |"
    )
    print(
        f"| coin-flip AUC | {auc['auc_a']:.3f} | {auc['auc_b']:.3f} | "
        f"{auc['auc_difference']:+.3f} [{auc['auc_difference_ci_low']:+.3f}, "
        f"{auc['auc_difference_ci_high']:+.3f}] | {auc['auc_p_value']:.3g} |"
    )
    print(f"({result['pairs']} pairs, {args.orders} orders; A = {args.a}, B = {args.b})")
    if args.base_a:
        models = {
            "a": (args.a, a),
            "a_base": (args.base_a, predictions(Path(args.base_a))),
            "b": (args.b, b),
            "b_base": (args.base_b, predictions(Path(args.base_b))),
        }
        g = result["gain"] = compare_gains(models, args.orders)
        result["a_base"], result["b_base"] = args.base_a, args.base_b
        print("\n| gain over its base | A | B | A - B [95% CI] | bootstrap p |")
        print("|---|---|---|---|---|")
        for name, key in (("accuracy", "gain"), ("coin-flip AUC", "auc_gain")):
            print(
                f"| {name} | {g[key + '_a']:+.3f} | {g[key + '_b']:+.3f} | "
                f"{g[key + '_difference']:+.3f} [{g[key + '_difference_ci_low']:+.3f}, "
                f"{g[key + '_difference_ci_high']:+.3f}] | {g[key + '_p_value']:.3g} |"
            )
        print(f"(A's base = {args.base_a}, B's base = {args.base_b}; bootstrap over users)")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(result, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
