"""The results tables a run prints and writes: models side by side, and paired tests."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from dmporec.evaluation import chosen_rejected_scores, read_predictions
from dmporec.metrics import pair_correct, paired_auc_test, paired_test


def _fmt_ci(m: dict[str, Any], key: str) -> str:
    return f"{m[key]:.3f} [{m[f'{key}_ci_low']:.3f}, {m[f'{key}_ci_high']:.3f}]"


def _fmt_rate(x: float | None) -> str:
    # Baselines list no candidates: no rate (None; NaN in results of older versions).
    return "-" if x is None or math.isnan(x) else f"{x:.2f}"


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of `evaluate_row` results."""
    lines = [
        "| model | pairs | accuracy [95% CI] | AUC coin-flip [95% CI] | AUC stable | first-listed "
        "| train s | eval s | peak RSS MiB train / eval |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    generated = any("valid_ratio" in r["metrics"] for r in rows)
    if generated:
        lines[0] += " ValidRatio [95% CI] | generated order accuracy [95% CI] |"
        lines[1] += "---|---|"
    for r in rows:
        m = r["metrics"]
        line = (
            f"| {r['model']} | {m['pairs']} | {_fmt_ci(m, 'accuracy')} | {_fmt_ci(m, 'auc')} "
            f"| {m['auc_stable']:.3f} | {_fmt_rate(m['first_listed_rate'])} | {r['train_s'] or '-'} "
            f"| {r['eval_s'] or '-'} | {r['train_peak_rss_mib'] or '-'} / {r['eval_peak_rss_mib'] or '-'} |"
        )
        if generated and "valid_ratio" in m:
            line += f" {_fmt_ci(m, 'valid_ratio')} | {_fmt_ci(m, 'generated_accuracy')} |"
        elif generated:
            line += " - | - |"
        lines.append(line)
    return "\n".join(lines)


# The baselines each trained row is tested against (random only appears in the table).
TESTED_BASELINES = ("popularity", "bpr-mf", "like-rate", "als", "embedding")


def row_pair_scores(row: dict[str, Any], orders: str) -> tuple[np.ndarray, ...] | None:
    """(users, chosen, rejected) of a results row: the per-pair scores it carries, else (a row
    of an older dmporec) its predictions where they are; None when it has neither."""
    if "pair_scores" in row:
        p = row["pair_scores"]
        return (
            np.asarray(p["users"]),
            np.asarray(p["chosen"], float),
            np.asarray(p["rejected"], float),
        )
    if "eval_dir" in row and (Path(row["eval_dir"]) / "predictions.jsonl").is_file():
        rows = read_predictions(Path(row["eval_dir"]))
        chosen, rejected = chosen_rejected_scores(rows, orders)
        return np.array([r["user_id"] for r in rows]), chosen, rejected
    return None


def row_correct(row: dict[str, Any], orders: str = "both") -> np.ndarray | None:
    """Per-pair correctness (1, 0, 0.5 for a tie) of a row: from its scores, else as a row of the
    learning curve script kept it (pair_correct, no scores); None when it has neither."""
    scores = row_pair_scores(row, orders)
    if scores is not None:
        return pair_correct(scores[1], scores[2])
    return None if row.get("pair_correct") is None else np.asarray(row["pair_correct"], float)


def paired_row_test(
    a: dict[str, Any],
    b: dict[str, Any],
    *,
    orders: str = "both",
    seed: int = 0,
    names: tuple[str, str] | None = None,
) -> dict[str, Any] | None:
    """Row `a` against row `b` on the same pairs: accuracy (metrics.paired_test, exact McNemar)
    and, where both keep their scores, both AUCs (metrics.paired_auc_test, paired bootstrap over
    users). None when either keeps no per-pair results or they scored different pairs."""
    ca, cb = row_correct(a, orders), row_correct(b, orders)
    if ca is None or cb is None or len(ca) != len(cb):
        return None
    sa, sb = row_pair_scores(a, orders), row_pair_scores(b, orders)
    if sa is not None and sb is not None and not np.array_equal(sa[0], sb[0]):
        return None  # other users' pairs
    name_a, name_b = names or (a["model"], b["model"])
    test = {"a": name_a, "b": name_b, **paired_test(ca, cb, seed=seed)}
    if sa is not None and sb is not None:
        test.update(paired_auc_test(sa[0], sa[1], sa[2], sb[1], sb[2], seed=seed))
    return test


def _trained(row: dict[str, Any]) -> bool:
    return "eval_dir" in row or "hybrid_dir" in row


def paired_tests(rows: list[dict[str, Any]], orders: str, seed: int = 0) -> list[dict[str, Any]]:
    """Each trained row (an LLM stage or the hybrid) against the rows above it that are trained
    too or are the popularity, BPR-MF or ALS baselines, on the same pairs: accuracy
    (metrics.paired_test, exact McNemar) and both AUCs (metrics.paired_auc_test, paired bootstrap
    over users)."""
    tests = []
    for j, b in enumerate(rows):
        for a in rows[j + 1 :]:
            if not _trained(a) or (not _trained(b) and b["model"] not in TESTED_BASELINES):
                continue
            test = paired_row_test(a, b, orders=orders, seed=seed)
            if test is not None:
                tests.append(test)
    return tests


def paired_table(tests: list[dict[str, Any]]) -> str:
    """Markdown table of `paired_tests`: the accuracy difference, its CI and McNemar's p; the
    coin-flip AUC difference, its CI and bootstrap p (when the tests carry them)."""
    auc = any("auc_difference" in t for t in tests)
    lines = [
        "| comparison | accuracy difference [95% CI] | pairs A right, B wrong / B right, A wrong "
        "| McNemar p | significant at 0.05 |"
        + (" coin-flip AUC difference [95% CI] | bootstrap p |" if auc else ""),
        "|---|---|---|---|---|" + ("---|---|" if auc else ""),
    ]
    for t in tests:
        line = (
            f"| {t['a']} vs {t['b']} | {t['difference']:+.3f} [{t['difference_ci_low']:+.3f}, "
            f"{t['difference_ci_high']:+.3f}] | {t['a_better']} / {t['b_better']} "
            f"| {t['p_value']:.2g} | {'yes' if t['p_value'] < 0.05 else 'no'} |"
        )
        if auc and "auc_difference" in t:
            line += (
                f" {t['auc_difference']:+.3f} [{t['auc_difference_ci_low']:+.3f}, "
                f"{t['auc_difference_ci_high']:+.3f}] | {t['auc_p_value']:.2g} |"
            )
        elif auc:
            line += " - | - |"
        lines.append(line)
    return "\n".join(lines)


def gain_table(tests: list[dict[str, Any]]) -> str:
    """Markdown table of gain tests (metrics.gain_difference_test, named by experiment_rows):
    each model's gain over its base, and the difference of the gains with its CI and p, of
    accuracy and of the coin-flip AUC ("-" where a row kept no scores for the AUC)."""
    lines = [
        "| A (over its base) | B (over its base) | A's gain | B's gain | difference [95% CI] "
        "| bootstrap p | AUC: A's gain | B's gain | difference [95% CI] | bootstrap p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in tests:
        cells = [f"{t['a']} ({t['a_base']})", f"{t['b']} ({t['b_base']})"]
        for key in ("gain", "auc_gain"):
            d = f"{key}_difference"
            if d not in t:
                cells += ["-"] * 4
                continue
            cells += [
                f"{t[key + '_a']:+.3f}",
                f"{t[key + '_b']:+.3f}",
                f"{t[d]:+.3f} [{t[d + '_ci_low']:+.3f}, {t[d + '_ci_high']:+.3f}]",
                f"{t[key + '_p_value']:.2g}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def eval_table(rows: list[dict[str, Any]], name: str) -> str | None:
    """Markdown table of an experiment's extra evaluation `name` (rows' evals.NAME): accuracy
    with its CI where measured, accuracy on each user's i-th negative, listwise HR@1 and MRR."""
    have = [(r, r["evals"][name]) for r in rows if name in r.get("evals", {})]
    if not have:
        return None
    lines = [
        "| model | pairs | accuracy [95% CI] | accuracy by negative 1, 2, ... | lists: users, "
        "candidates | HR@1 [95% CI] | MRR |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, m in have:
        acc = _fmt_ci(m, "accuracy") if "accuracy_ci_low" in m else _fmt_num(m.get("accuracy"))
        by = ", ".join(f"{v:.2f}" for v in m.get("accuracy_by_negative", {}).values()) or "-"
        lists = next(
            (k[: -len("_users")] for k in m if k.startswith("list") and k.endswith("_users")), None
        )
        listed = (
            f"{m[lists + '_users']}, {lists[4:]} | {_fmt_ci(m, lists + '_hr@1')} | {m[lists + '_mrr']:.3f}"
            if lists
            else "- | - | -"
        )
        lines.append(f"| {r['model']} | {m.get('pairs', '-')} | {acc} | {by} | {listed} |")
    return "\n".join(lines)


def hybrid_eval_table(rows: list[dict[str, Any]], name: str) -> str | None:
    """Markdown of an experiment's hybrid evaluation `name` (rows' evals.NAME with a fitted
    `fusion`): per model, the test pairs' accuracy and coin-flip AUC with their CIs, what it was
    fitted on and its weights; then its paired tests against every component. None when no
    row keeps one."""
    have = [(r, r["evals"][name]) for r in rows if "fusion" in r.get("evals", {}).get(name, {})]
    if not have:
        return None
    lines = [
        "| model | test pairs | accuracy [95% CI] | AUC coin-flip [95% CI] | fitted on: "
        "validation users, pairs | weight per RMS margin (C) |",
        "|---|---|---|---|---|---|",
    ]
    for r, m in have:
        fusion = m["fusion"]
        weights = ", ".join(
            f"{c} {w:+.3g}" for c, w in zip(fusion["components"], fusion["weights"], strict=True)
        )
        lines.append(
            f"| {r['model']} + classic | {m['pairs']} | {_fmt_ci(m, 'accuracy')} "
            f"| {_fmt_ci(m, 'auc')} | {m['valid_users']}, {m['valid_pairs']} "
            f"| {weights} ({fusion['C']:.3g}) |"
        )
    tests = [t for _, m in have for t in m.get("paired_tests", [])]
    return "\n".join(lines) + (
        f"\n\nAgainst its components, on the same test pairs:\n\n{paired_table(tests)}"
        if tests
        else ""
    )


def _fmt_num(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def training_table(rows: list[dict[str, Any]]) -> str | None:
    """Markdown table of the trained rows' training statistics (experiment rows' `training`):
    loss and DMPO's reward accuracy and margin over the first -> last 10 steps; the held-out
    reward accuracy (chosen reward) by quarter of training."""
    have = [(r, r["training"]) for r in rows if r.get("training")]
    if not have:
        return None
    lines = [
        "| model | loss, first -> last 10 steps | reward acc / margin, first -> last 10 steps "
        "| held-out reward acc (chosen reward) by quarter |",
        "|---|---|---|---|",
    ]
    for r, t in have:
        loss = (
            f"{_fmt_num(t.get('loss_first10'), '.4f')} -> {_fmt_num(t.get('loss_last10'), '.4f')}"
        )
        reward = "-"
        if "reward_accuracy_last10" in t:
            first = (
                f"{t['reward_accuracy_first10']:.2f} / {t['reward_margin_first10']:+.4f}"
                if "reward_accuracy_first10" in t
                else "-"
            )
            reward = (
                f"{first} -> {t['reward_accuracy_last10']:.2f} / {t['reward_margin_last10']:+.4f}"
            )
        quarters = "-"
        if "reward_accuracy_by_quarter" in t and "chosen_reward_by_quarter" in t:
            pairs = zip(t["reward_accuracy_by_quarter"], t["chosen_reward_by_quarter"], strict=True)
            quarters = " / ".join(f"{a:.2f} ({c:+.1f})" for a, c in pairs)
        lines.append(f"| {r['model']} | {loss} | {reward} | {quarters} |")
    return "\n".join(lines)
