"""benchmarks/shared_prefix.py's tables: each layout's speed-up over the naive cell of its
workload (steps, one epoch with the reference pass, the per-token limit) and DMPO training
against TRL's DPOTrainer, from the cells' JSON rows."""

from __future__ import annotations

import statistics


def speedup_table(results: list[dict]) -> str:
    """Each layout against the naive cell of its workload: median throughputs over the rounds,
    and the median of the per-round speed-ups (their range in brackets with several rounds)."""
    rounds: dict[tuple, list[dict]] = {}  # (kind, k, orders, method) -> its cells, round order
    for r in results:
        rounds.setdefault((r["kind"], r["k"], r.get("orders"), r["method"]), []).append(r)
    rows = [
        "| workload | k | naive | shared | speed-up | speed-up, one epoch with the reference pass "
        "| limit | tokens naive / shared | peak RSS MiB naive / shared | max loss diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (kind, k, orders, method), bs in rounds.items():
        if method == "naive" or method.startswith("trl"):
            continue
        as_ = rounds[(kind, k, orders, "naive")]
        rate, unit = ("users_per_s", "users/s") if kind == "train" else ("pairs_per_s", "pairs/s")
        ratios = sorted(y[rate] / x[rate] for x, y in zip(as_, bs, strict=False))
        a, b = (sorted(cs, key=lambda c: c["wall_s"])[(len(cs) - 1) // 2] for cs in (as_, bs))
        speedup = median_range(ratios)
        epoch = "-"
        if kind == "train":
            epoch = median_range(
                sorted(epoch_rate(y) / epoch_rate(x) for x, y in zip(as_, bs, strict=False))
            )
        if kind == "train":
            workload = "DMPO train step"
            diff = max(abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=True))
            last = f"{diff:.1e}"
        else:
            listing = "both orders" if orders == "both" else "listed order"
            layout = ", KV-cached prefix" if method == "cached" else ""
            workload, k = f"evaluation ({a['pairs']} pairs, {listing}{layout})", "-"
            last = f"acc {a['accuracy']:.3f} / {b['accuracy']:.3f}"
        rows.append(
            f"| {workload} | {k} | {a[rate]:.3f} {unit} | {b[rate]:.3f} {unit} | {speedup} "
            f"| {epoch} | {limit(kind, a, b)} | {a['tokens']} / {b['tokens']} | {a['peak_rss_mib']:.0f} / {b['peak_rss_mib']:.0f} "
            f"| {last} |"
        )
    return "\n".join(rows)


def median_range(ratios: list[float]) -> str:
    """The median speed-up, with the range over the rounds when there are several."""
    ratios = sorted(ratios)
    median = f"{statistics.median(ratios):.2f}x"
    return median + (f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else "")


def epoch_rate(c: dict) -> float:
    """Users/s of a training cell over one epoch with its reference pass: the steps' time plus,
    where the reference log-probs are precomputed, that pass's time per user (the pass is paid
    once per run, so over E epochs it weighs 1/E of this)."""
    if c.get("reference_once_s") is None:  # the reference forward runs in every step
        return c["users_per_s"]
    if not c.get("reference_users"):  # results written before the pass's users were recorded
        return float("nan")
    return c["users"] / (c["wall_s"] + c["reference_once_s"] * c["users"] / c["reference_users"])


def limit(kind: str, naive: dict, other: dict) -> str:
    """The speed-up if every token cost what it costs in the naive cell. Evaluation: the token
    ratio. Training: naive's step is the policy rows' forward and backward plus the reference
    rows' forward, a cheaper token, so the limit is naive's step time over the time naive's
    policy rows would take for the other layout's tokens (its reference is precomputed)."""
    if kind != "train":
        return f"{naive['tokens'] / other['tokens']:.2f}x"
    if "policy_tokens" not in naive:  # results written before the split was recorded
        return "-"
    per_token = (naive["wall_s"] - naive["reference_in_step_s"]) / naive["policy_tokens"]
    return f"{naive['wall_s'] / (per_token * other['tokens']):.2f}x"


def peer_table(results: list[dict]) -> str:
    """DMPO training against TRL's DPOTrainer on the same users: median users/s over the rounds
    and shared's speed-up over each, for the timed steps alone and for one epoch with each cell's
    reference pass (where it is precomputed; `epoch_rate`)."""
    by: dict[tuple[int, str], list[dict]] = {}
    for r in results:
        if r["kind"] == "train":
            by.setdefault((r["k"], r["method"]), []).append(r)
    if not any(m.startswith("trl") for _, m in by):
        return ""
    rows = [
        "| k | | TRL DPOTrainer | TRL, precomputed reference | naive | shared | shared vs TRL "
        "/ precomputed / naive | tokens TRL / shared | peak RSS MiB TRL / shared |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in sorted({k for k, _ in by}):
        methods = {m for kk, m in by if kk == k}
        if not {"trl", "trl-precompute", "shared"} <= methods:
            continue
        trl, shared = by[k, "trl"][0], by[k, "shared"][0]
        for label, of in (("steps", lambda c: c["users_per_s"]), ("one epoch", epoch_rate)):
            rate = {m: statistics.median(of(c) for c in by[k, m]) for m in methods}
            naive = rate.get("naive", float("nan"))
            rows.append(
                f"| {k} | {label} | {rate['trl']:.3f} users/s | {rate['trl-precompute']:.3f} users/s "
                f"| {naive:.3f} users/s | {rate['shared']:.3f} users/s "
                f"| {rate['shared'] / rate['trl']:.1f}x / {rate['shared'] / rate['trl-precompute']:.1f}x "
                f"/ {rate['shared'] / naive:.1f}x "
                f"| {trl['tokens']} / {shared['tokens']} | {trl['peak_rss_mib']:.0f} / {shared['peak_rss_mib']:.0f} |"
            )
    return "\n".join(rows)
