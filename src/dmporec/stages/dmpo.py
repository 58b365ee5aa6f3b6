"""Stage 2: DMPO. Policy = SFT model + a new LoRA adapter; reference = the same with it disabled.

`run_dmpo` sets the stage up (data, model, the reference's log-probs, scored once) and hands
training.py's loop `dmpo_step`, one micro-batch from batch to loss, which reads top to bottom here
with losses.py and scoring/ beside it.
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import torch

from dmporec import item_tokens
from dmporec.collate import PreferenceBatch, collate_preferences, model_encoder, split_pairs
from dmporec.config import ConfigError, DMPOConfig, RunConfig
from dmporec.data import stage_records
from dmporec.distributed import main_print
from dmporec.evaluation import validation_fn
from dmporec.losses import LOSSES, sft_loss
from dmporec.model import (
    LINEAGE,
    add_lora,
    load_base_model,
    load_tokenizer,
    merge_adapters,
    read_lineage,
)
from dmporec.prompt_bound import bound_records
from dmporec.records import Record
from dmporec.reference import cached_reference_logps
from dmporec.scoring.forward import score_groups
from dmporec.stages.common import (
    check_settings,
    finish_stage,
    process_state,
    read_settings,
    record_settings,
    stage_settings,
)
from dmporec.training import PeakMemory, train_lora


def run_dmpo(cfg: RunConfig, sft_dir: Path | None = None) -> Path:
    """Train `OUTPUT_DIR/dmpo/adapter` on top of the SFT model (`sft_dir`, default OUTPUT_DIR/sft)."""
    out = Path(cfg.output_dir) / "dmpo"
    tc = cfg.dmpo
    sft_dir = Path(sft_dir) if sft_dir is not None else Path(cfg.output_dir) / "sft"
    _, sft_adapters = read_lineage(sft_dir)
    sft_settings = read_settings(sft_dir)
    if sft_settings is None:
        raise ConfigError(f"dmpo: {sft_dir} has no record of its settings; train it again")
    settings = stage_settings(cfg, "dmpo", sft_settings)
    check_settings(out, settings, "dmpo")
    if (out / LINEAGE).is_file():
        main_print(f"dmpo: {out} is finished (same settings); delete it to train again")
        return out
    with_items = item_tokens.check_trained(
        sft_settings, cfg.model.item_tokens, f"dmpo: the SFT stage {sft_dir}"
    )
    records = _dmpo_records(cfg)
    record_settings(out, settings)  # before training: a checkpoint resumes only with these
    tokenizer = load_tokenizer(cfg.model)
    if with_items:  # the SFT stage's table and trained projection
        table, proj = item_tokens.load_stage(sft_dir)
        item_tokens.add_tokens(tokenizer, table)
    enc = model_encoder(tokenizer, cfg.model, cfg.data.prompt_seed)
    records, cut = bound_records(records, enc, cfg.data, cfg.data.dmpo_train, "dmpo")
    groups = [enc.group(r, k=tc.k, orders=tc.orders) for r in records]
    pairs = tc.k * (2 if tc.orders == "both" else 1)  # each its own (chosen, rejected) in the loss

    start = time.perf_counter()
    with PeakMemory() as mem:
        # The SFT adapter is folded into the weights: that model is the frozen reference.
        model = add_lora(
            merge_adapters(load_base_model(cfg.model), sft_adapters), cfg.model, tc.seed
        )
        if with_items:  # frozen: the reference (adapter off) is the SFT model exactly
            item_tokens.attach(model, tokenizer, proj, trainable=False)
        ref = cached_reference_logps(
            model, cfg.model, sft_adapters, groups, 2 * pairs, tc, cfg.eval.batch_size
        )
        examples = list(zip(groups, ref, strict=True))  # (group, its reference log-probs)
        validate = validation_fn(cfg, tokenizer, tc)
        result = train_lora(
            model,
            examples,
            partial(dmpo_step, tc=tc),
            tc,
            out,
            stage="dmpo",
            collate=collate_preferences,
            validate=validate,
            hparams=cfg.model_dump(mode="json"),
        )
    if with_items and process_state().is_main_process:
        item_tokens.save_stage(model, out)  # the SFT's, unchanged: every stage loads alone
    merged = [os.path.relpath(p.resolve(), out.resolve()) for p in sft_adapters]
    finish_stage(
        out,
        cfg.model,
        merged,
        {
            "stage": "dmpo",
            "loss": tc.loss,
            "k": tc.k,
            "users": len(groups),
            # A resumed stage counts the training time of its earlier invocations too.
            "wall_s": round(time.perf_counter() - start + result.pop("resumed_s"), 1),
            "peak_rss_mib": round(mem.peak_rss_mib),
            "peak_gpu_mib": round(mem.peak_gpu_mib),
            **cut,
            **{f"final_{k}": v for k, v in result.items()},
        },
    )
    return out


def _dmpo_records(cfg: RunConfig) -> list[Record]:
    """The training users, refused (one line) when none has dmpo.k negatives."""
    tc = cfg.dmpo
    records = stage_records(cfg.data, "dmpo_train")
    most = max(r.k for r in records)
    if most < tc.k:  # the run would train k=most under the label k
        raise ConfigError(
            f"dmpo.k={tc.k}, but no user of {cfg.data.dmpo_train} has more than {most} "
            f"negatives; set dmpo.k={most} or less"
        )
    short = sum(r.k < tc.k for r in records)
    if short:
        main_print(
            f"dmpo: {short} of {len(records)} users have fewer than k={tc.k} negatives; "
            "their missing negatives are masked out of the loss"
        )
    return records


def dmpo_step(
    model: torch.nn.Module, batch: PreferenceBatch, tc: DMPOConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """One DMPO micro-batch: its mean loss (training.py runs backward) and what to log.

    Only the policy runs here. The reference's log-probs of the same answers come in the batch:
    the same model with the adapter disabled scored them once before training (reference.py).
    A group holds P pairs (the k negatives, twice with orders='both'), each a chosen and a
    rejected answer; a user with fewer than k negatives has the pairs it lacks masked out.
    """
    # [B, 2P] summed log-prob of each answer: chosen, rejected, chosen, ... (collate.py's layout)
    policy = score_groups(
        model, batch.groups, layout=tc.layout, max_batch_tokens=tc.max_batch_tokens
    )
    policy_chosen, policy_rejected = split_pairs(policy.logps)  # [B, P] each
    ref_chosen, ref_rejected = split_pairs(batch.ref_logps.to(policy.logps.device))
    real_pairs = split_pairs(policy.mask)[1]  # [B, P], False where a user has no such pair
    out = LOSSES[tc.loss](
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, tc.beta, real_pairs
    )
    loss = out.loss  # [B]
    if tc.sft_weight:  # plus SFT's loss on the chosen answers (per answer token)
        chosen_tokens = split_pairs(policy.n_tokens)[0]
        loss = loss + tc.sft_weight * sft_loss(policy_chosen, chosen_tokens, real_pairs)
    return loss.mean(), {
        "reward_margin": out.margin.mean().item(),
        "reward_accuracy": out.accuracy.mean().item(),
        "chosen_reward": out.chosen_rewards.mean().item(),
    }
