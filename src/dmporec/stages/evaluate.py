"""Evaluate a model on test pairs: pairwise accuracy, AUCs, 95% CIs, position bias."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dmporec.config import ConfigError, EvalConfig, RunConfig, TrainConfig
from dmporec.data import stage_records
from dmporec.generation import generate_answers, generation_report
from dmporec.listwise import candidate_sets
from dmporec.metrics import (
    first_listed_rate,
    grouped_auc,
    listwise_report,
    pairwise_accuracy,
    pairwise_report,
    rank_of_positive,
    ties_with_positive,
)
from dmporec.model import ModelConfig, load_base_model, load_stage_model, load_tokenizer
from dmporec.prompts import positive_listed_first
from dmporec.ranking import PairEncoder, RankRequest, rank_candidates
from dmporec.records import Record, atomic_write_text
from dmporec.scoring import length_order, score_groups
from dmporec.stages.common import (
    check_settings,
    encoder,
    process_state,
    read_settings,
    record_settings,
    stage_settings,
    write_summary,
)
from dmporec.training import PeakMemory, ValidateFn


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    tokenizer: Any,
    model_cfg: ModelConfig,
    records: list[Record],
    ec: EvalConfig,
    prompt_seed: int,
    desc: str = "evaluate",
) -> list[dict[str, Any]]:
    """One row per (user, negative): chosen and rejected summed log-probs and the listing order;
    with `ec.orders == 'both'` also `*_swapped`: the same answers with the pair listed the other way."""
    enc = encoder(tokenizer, model_cfg, prompt_seed)
    model.eval()
    groups = [enc.group(r, orders=ec.orders) for r in records]
    user_logps: list[torch.Tensor] = [torch.empty(0)] * len(records)
    with tqdm(total=sum(r.k for r in records), desc=desc, unit="pair") as bar:
        order = length_order(groups)
        for start in range(0, len(order), ec.batch_size):
            chunk = order[start : start + ec.batch_size]
            scores = score_groups(
                model,
                [groups[u] for u in chunk],
                method=ec.scorer,
                max_batch_tokens=ec.max_batch_tokens,
            )
            for b, u in enumerate(chunk):
                user_logps[u] = scores.logps[b].float().cpu()
            bar.update(sum(records[u].k for u in chunk))
    rows = []
    for record, logps in zip(records, user_logps, strict=True):
        for i, neg in enumerate(record.negatives):
            row = {
                "user_id": record.user_id,
                "positive": record.positive.title,
                "negative": neg.title,
                "chosen_logp": logps[2 * i].item(),
                "rejected_logp": logps[2 * i + 1].item(),
                "positive_listed_first": positive_listed_first(record, i, prompt_seed),
            }
            if ec.orders == "both":  # the swapped branches follow the k listed ones
                row["chosen_logp_swapped"] = logps[2 * (record.k + i)].item()
                row["rejected_logp_swapped"] = logps[2 * (record.k + i) + 1].item()
            rows.append(row)
    return rows


@torch.no_grad()
def score_lists(
    model: torch.nn.Module,
    tokenizer: Any,
    model_cfg: ModelConfig,
    records: list[Record],
    ec: EvalConfig,
    desc: str = "rank lists",
) -> list[dict[str, Any]]:
    """One row per test user: `ec.listwise` candidates (listwise.candidate_sets: the positive and
    sampled titles the user never rated), their scores from ranking.rank_candidates (every pair
    asked in both listing orders) and the positive's index."""
    chat = encoder(tokenizer, model_cfg, 0).chat
    pair_encoder = PairEncoder(tokenizer, chat)
    model.eval()
    rows = []
    sets = candidate_sets(records, n=ec.listwise, seed=ec.seed)
    for record, (titles, pos) in tqdm(
        list(zip(records, sets, strict=True)), desc=desc, unit="user"
    ):
        request = RankRequest(tuple(i.title for i in record.history), tuple(titles), record.wording)
        (scores,) = rank_candidates(
            model, pair_encoder, [request], method=ec.scorer, max_batch_tokens=ec.max_batch_tokens
        )
        rows.append(
            {
                "user_id": record.user_id,
                "candidates": titles,
                "positive_index": pos,
                "scores": scores,
            }
        )
    return rows


def markdown_row(name: str, m: dict[str, Any]) -> str:
    return (
        f"| {name} | {m['pairs']} | {m['accuracy']:.3f} [{m['accuracy_ci_low']:.3f}, {m['accuracy_ci_high']:.3f}] "
        f"| {m['auc']:.3f} [{m['auc_ci_low']:.3f}, {m['auc_ci_high']:.3f}] | {m['auc_stable']:.3f} "
        f"| {m.get('first_listed_rate', float('nan')):.2f} |"
    )


MD_HEADER = (
    "| model | pairs | accuracy [95% CI] | AUC (coin flip) [95% CI] | AUC (stable) | first-listed rate |\n"
    "|---|---|---|---|---|---|"
)


def validation_fn(cfg: RunConfig, tokenizer: Any, tc: TrainConfig) -> ValidateFn | None:
    """What a training stage scores every `tc.eval_every_steps` steps: pairwise accuracy on the
    validation pairs (data.valid or the held-out users) in eval.orders; None when off."""
    if not tc.eval_every_steps:
        return None
    records = stage_records(cfg.data, "valid")
    ec = cfg.eval

    def validate(model: torch.nn.Module) -> dict[str, float]:
        rows = score_pairs(
            model, tokenizer, cfg.model, records, ec, cfg.data.prompt_seed, desc="validate"
        )
        return {"valid_accuracy": pairwise_accuracy(*pair_scores(rows, ec.orders))}

    return validate


def pair_scores(rows: list[dict[str, Any]], orders: str) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, rejected) score of each saved pair: the listed-order log-probs, plus the swapped
    order's when both orders were scored (the log of the product of the probabilities)."""
    both = orders == "both"
    chosen = np.array([r["chosen_logp"] + (r["chosen_logp_swapped"] if both else 0) for r in rows])
    rejected = np.array(
        [r["rejected_logp"] + (r["rejected_logp_swapped"] if both else 0) for r in rows]
    )
    return chosen, rejected


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_predictions(eval_dir: Path) -> list[dict[str, Any]]:
    return _read_jsonl(eval_dir / "predictions.jsonl")


def write_eval(
    rows: list[dict[str, Any]],
    ec: EvalConfig,
    out_dir: Path,
    name: str,
    lists: list[dict[str, Any]] | None = None,
    generations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Metrics of scored pairs; writes predictions.jsonl, eval.json and eval.md to `out_dir`.

    With both orders scored, a pair's chosen score is the sum of its two chosen log-probs (the
    log of the product of the probabilities), likewise rejected; the position diagnostics
    (first-listed rate, accuracy by position) always describe the model's listed-order answers.
    """
    both = ec.orders == "both"
    chosen, rejected = pair_scores(rows, ec.orders)
    metrics = pairwise_report(chosen, rejected, seed=ec.seed, n_boot=ec.n_boot)
    # The position diagnostics use the listed-order scores alone, without a bootstrap.
    listed_c = np.array([r["chosen_logp"] for r in rows])
    listed_r = np.array([r["rejected_logp"] for r in rows])
    pf = np.array([r["positive_listed_first"] for r in rows], bool)
    metrics["grouped_auc"] = grouped_auc(np.array([r["user_id"] for r in rows]), chosen, rejected)
    metrics["orders"] = ec.orders
    metrics["first_listed_rate"] = first_listed_rate(listed_c, listed_r, pf)
    metrics["accuracy_positive_listed_first"] = pairwise_accuracy(listed_c[pf], listed_r[pf])
    metrics["accuracy_positive_listed_second"] = pairwise_accuracy(listed_c[~pf], listed_r[~pf])
    if both:
        metrics["accuracy_listed_order"] = pairwise_accuracy(listed_c, listed_r)
    if lists:
        ranks = [rank_of_positive(r["scores"], r["positive_index"]) for r in lists]
        ties = [ties_with_positive(r["scores"], r["positive_index"]) for r in lists]
        report = listwise_report(ranks, ties, seed=ec.seed, n_boot=ec.n_boot)
        metrics.update({f"list{len(lists[0]['candidates'])}_{k}": v for k, v in report.items()})
        atomic_write_text(out_dir / "lists.jsonl", "".join(json.dumps(r) + "\n" for r in lists))
    if generations:
        metrics.update(generation_report(generations, seed=ec.seed, n_boot=ec.n_boot))
        atomic_write_text(
            out_dir / "generations.jsonl",
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in generations),
        )
    atomic_write_text(out_dir / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(
        out_dir / "eval.json", json.dumps({"model": name, **metrics}, indent=2) + "\n"
    )
    atomic_write_text(out_dir / "eval.md", f"{MD_HEADER}\n{markdown_row(name, metrics)}\n")
    return metrics


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    model_cfg: ModelConfig,
    records: list[Record],
    ec: EvalConfig,
    prompt_seed: int,
    out_dir: Path,
    name: str,
) -> dict[str, Any]:
    """Score every test pair and write the results to `out_dir` (see write_eval)."""
    rows = score_pairs(
        model, tokenizer, model_cfg, records, ec, prompt_seed, desc=f"evaluate {name}"
    )
    lists = None
    if ec.listwise:
        lists = score_lists(model, tokenizer, model_cfg, records, ec, desc=f"rank lists {name}")
    generations = None
    if ec.generate:
        chat = encoder(tokenizer, model_cfg, prompt_seed).chat
        generations = generate_answers(
            model, tokenizer, chat, records, prompt_seed, ec.batch_size, desc=f"generate {name}"
        )
    return write_eval(rows, ec, out_dir, name, lists, generations)


def _saved_pairs(path: Path, records: list[Record]) -> list[dict[str, Any]] | None:
    """Rows saved one per (user, negative) by an earlier run, if they are this run's pairs."""
    if not path.is_file():
        return None
    rows = _read_jsonl(path)
    wanted = [(r.user_id, n.title) for r in records for n in r.negatives]
    return rows if [(r["user_id"], r["negative"]) for r in rows] == wanted else None


def _saved_rows(path: Path, records: list[Record], orders: str) -> list[dict[str, Any]] | None:
    """Scored pairs saved by an earlier run, if they are exactly this run's test pairs and orders."""
    rows = _saved_pairs(path, records)
    if rows is None:
        return None
    return rows if orders == "listed" or all("chosen_logp_swapped" in r for r in rows) else None


def _saved_lists(path: Path, records: list[Record], ec: EvalConfig) -> list[dict[str, Any]] | None:
    """Ranked lists saved by an earlier run, if they are this run's users and candidate sets."""
    if not ec.listwise or not path.is_file():
        return None
    rows = _read_jsonl(path)
    wanted = [titles for titles, _ in candidate_sets(records, n=ec.listwise, seed=ec.seed)]
    return rows if [r["candidates"] for r in rows] == wanted else None


def _saved_generations(
    path: Path, records: list[Record], ec: EvalConfig
) -> list[dict[str, Any]] | None:
    """Generated answers saved by an earlier run, if they are this run's test pairs."""
    return _saved_pairs(path, records) if ec.generate else None


def stage_dirs(cfg: RunConfig, stage: str) -> tuple[Path, Path]:
    """(the stage's directory, where its evaluation goes) for 'zero_shot', 'sft', 'dmpo' or a dir;
    validation results go beside the test ones (`eval-valid`, `zero_shot/valid`)."""
    stage_dir = (
        Path(cfg.output_dir) / stage if stage in ("zero_shot", "sft", "dmpo") else Path(stage)
    )
    valid = cfg.eval.split == "valid"
    if stage == "zero_shot":
        return stage_dir, stage_dir / "valid" if valid else stage_dir
    return stage_dir, stage_dir / ("eval-valid" if valid else "eval")


def run_evaluate(cfg: RunConfig, stage: str) -> dict[str, Any]:
    """Evaluate 'zero_shot' (the base model) or a finished stage ('sft', 'dmpo' or a stage dir)."""
    stage_dir, out = stage_dirs(cfg, stage)
    done = out / "eval.json"
    state = process_state()
    state.wait_for_everyone()
    if not state.is_main_process:  # under `accelerate launch` one process evaluates
        state.wait_for_everyone()
        return json.loads(done.read_text())
    records = stage_records(cfg.data, "eval" if cfg.eval.split == "test" else "valid")
    if stage == "zero_shot":
        trained = None
    else:
        trained = read_settings(stage_dir)
        if trained is None:
            raise ConfigError(
                f"evaluate: {stage_dir} has no record of its settings; train it again"
            )
    settings = stage_settings(cfg, "eval", trained)
    check_settings(out, settings, f"evaluate {stage_dir.name}")
    saved = _saved_rows(out / "predictions.jsonl", records, cfg.eval.orders)
    saved_lists = _saved_lists(out / "lists.jsonl", records, cfg.eval)
    saved_gens = _saved_generations(out / "generations.jsonl", records, cfg.eval)
    if (
        saved is not None
        and (saved_lists is not None or not cfg.eval.listwise)
        and (saved_gens is not None or not cfg.eval.generate)
    ):
        print(
            f"evaluate: metrics from the {len(saved)} pairs scored in {out / 'predictions.jsonl'} "
            "(delete it to score again)"
        )
        metrics = write_eval(saved, cfg.eval, out, stage_dir.name, saved_lists, saved_gens)
        state.wait_for_everyone()
        return metrics
    start = time.perf_counter()
    with PeakMemory() as mem:
        if stage == "zero_shot":
            model, tokenizer, model_cfg = (
                load_base_model(cfg.model),
                load_tokenizer(cfg.model),
                cfg.model,
            )
        else:
            model, tokenizer, model_cfg = load_stage_model(stage_dir)
        evaluate(
            model,
            tokenizer,
            model_cfg,
            records,
            cfg.eval,
            cfg.data.prompt_seed,
            out,
            stage_dir.name,
        )
    record_settings(out, settings)
    wall = round(time.perf_counter() - start, 1)
    write_summary(
        out,
        {
            "stage": f"eval {stage_dir.name}",
            "wall_s": wall,
            "peak_rss_mib": round(mem.peak_rss_mib),
            "peak_gpu_mib": round(mem.peak_gpu_mib),
        },
    )
    state.wait_for_everyone()
    return json.loads(done.read_text())
