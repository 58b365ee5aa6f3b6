"""Scoring test pairs and candidate lists with a model, and the metrics and files of an
evaluation (predictions.jsonl, eval.json, eval.md); stages/evaluate.py decides what to score
and what it may reuse."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dmporec.collate import GroupEncoder, answer_column, model_encoder
from dmporec.config import EvalConfig, RunConfig, TrainConfig
from dmporec.data import stage_records
from dmporec.files import atomic_write_text, read_jsonl
from dmporec.generation import generation_report
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
from dmporec.model import ModelConfig
from dmporec.passes import pass_key, score_in_chunks
from dmporec.prompt_bound import PromptBound, bound_records
from dmporec.prompts import positive_listed_first
from dmporec.ranking import PairEncoder, RankRequest, rank_candidates
from dmporec.records import Record
from dmporec.training import ValidateFn

PARTIAL = "scores.partial"  # stem of a stopped scoring's kept batches, in the eval directory


@dataclass(frozen=True)
class Resume:
    """Where a scoring keeps its batches as it goes (`directory`), and the adapters merged into
    the model (their weights are part of the key: another model's batches are never read)."""

    directory: Path
    adapters: tuple[Path, ...] = ()


def drop_partial(directory: Path) -> None:
    """The kept batches of every scoring into `directory`, once its predictions are written."""
    for path in directory.glob(f"{PARTIAL}.*.safetensors"):
        path.unlink()


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    tokenizer: Any,
    model_cfg: ModelConfig,
    records: list[Record],
    ec: EvalConfig,
    prompt_seed: int,
    desc: str = "evaluate",
    enc: GroupEncoder | None = None,
    resume: Resume | None = None,
) -> list[dict[str, Any]]:
    """One row per (user, negative): chosen and rejected summed log-probs and the listing order;
    with `ec.orders == 'both'` also `*_swapped`: the same answers with the pair listed the other way.
    `enc`: the run's encoder if one exists (model_encoder of these arguments), for its token cache.
    `resume`: where the batches scored so far are kept, so a stopped scoring resumes (passes.py)."""
    enc = enc or model_encoder(tokenizer, model_cfg, prompt_seed)
    model.eval()
    groups = [enc.group(r, orders=ec.orders) for r in records]
    kept = None
    if resume is not None:
        key = pass_key(model_cfg, resume.adapters, groups, ec.batch_size, ec.layout)
        kept = resume.directory / f"{PARTIAL}.{key}"
    chunks, scored = score_in_chunks(
        model,
        groups,
        layout=ec.layout,
        batch_size=ec.batch_size,
        max_batch_tokens=ec.max_batch_tokens,
        partial=kept,
        desc=desc,
        weights=[r.k for r in records],
        unit="pair",
    )
    user_logps: list[torch.Tensor] = [torch.empty(0)] * len(records)
    for c, logps in scored.items():
        for b, u in enumerate(chunks[c]):
            user_logps[u] = logps[b]
    rows = []
    for record, logps in zip(records, user_logps, strict=True):
        for i, neg in enumerate(record.negatives):
            row = {
                "user_id": record.user_id,
                "positive": record.positive.title,
                "negative": neg.title,
                "chosen_logp": logps[answer_column(i, k=record.k)].item(),
                "rejected_logp": logps[answer_column(i, k=record.k, rejected=True)].item(),
                "positive_listed_first": positive_listed_first(record, i, prompt_seed),
            }
            if ec.orders == "both":
                column = partial(answer_column, i, k=record.k, swapped=True)
                row["chosen_logp_swapped"] = logps[column()].item()
                row["rejected_logp_swapped"] = logps[column(rejected=True)].item()
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
    bound: PromptBound | None = None,
    file: Any = None,
) -> list[dict[str, Any]]:
    """One row per test user: `ec.listwise` candidates (listwise.candidate_sets: the positive and
    sampled titles the user never rated), their scores from ranking.rank_candidates (every pair
    asked in both listing orders) and the positive's index; `ec.batch_size` users per call, as the
    pairs are scored. With `bound`, a history whose longest list prompt is over it is cut (or
    refused) as the pairs' were; the sampled candidates can be longer titles than the user's own
    pairs."""
    chat = model_encoder(tokenizer, model_cfg, 0).chat
    pair_encoder = PairEncoder(tokenizer, chat)
    model.eval()
    rows: list[dict[str, Any]] = []
    sets = candidate_sets(records, n=ec.listwise, seed=ec.seed)
    requests = []
    for record, (titles, _) in zip(records, sets, strict=True):
        request = RankRequest(tuple(i.title for i in record.history), tuple(titles), record.wording)
        if bound is not None:
            request = pair_encoder.bounded(request, bound, file=file, record=record.user_id)
        requests.append(request)
    with tqdm(total=len(records), desc=desc, unit="user") as bar:
        for start in range(0, len(records), ec.batch_size):
            batch = slice(start, start + ec.batch_size)
            scores = rank_candidates(
                model,
                pair_encoder,
                requests[batch],
                layout=ec.layout,
                max_batch_tokens=ec.max_batch_tokens,
            )
            for record, (titles, pos), user_scores in zip(
                records[batch], sets[batch], scores, strict=True
            ):
                rows.append(
                    {
                        "user_id": record.user_id,
                        "candidates": titles,
                        "positive_index": pos,
                        "scores": user_scores,
                    }
                )
            bar.update(len(scores))
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
    enc = model_encoder(tokenizer, cfg.model, cfg.data.prompt_seed)
    records, _ = bound_records(
        stage_records(cfg.data, "valid"), enc, cfg.data, cfg.data.valid, "validate"
    )
    ec = cfg.eval

    def validate(model: torch.nn.Module) -> dict[str, float]:
        rows = score_pairs(
            model, tokenizer, cfg.model, records, ec, cfg.data.prompt_seed, desc="validate", enc=enc
        )
        return {"valid_accuracy": pairwise_accuracy(*chosen_rejected_scores(rows, ec.orders))}

    return validate


def chosen_rejected_scores(
    rows: list[dict[str, Any]], orders: str
) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, rejected) score of each saved pair: the listed-order log-probs, plus the swapped
    order's when both orders were scored (the log of the product of the probabilities)."""
    both = orders == "both"
    chosen = np.array([r["chosen_logp"] + (r["chosen_logp_swapped"] if both else 0) for r in rows])
    rejected = np.array(
        [r["rejected_logp"] + (r["rejected_logp_swapped"] if both else 0) for r in rows]
    )
    return chosen, rejected


def read_predictions(eval_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(eval_dir / "predictions.jsonl")


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
    chosen, rejected = chosen_rejected_scores(rows, ec.orders)
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
