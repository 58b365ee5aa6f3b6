"""Stage 1: supervised fine-tuning of a LoRA adapter on the chosen answers."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch

from dmporec import item_tokens
from dmporec.collate import model_encoder
from dmporec.config import RunConfig, SFTConfig
from dmporec.data import stage_records
from dmporec.distributed import main_print
from dmporec.evaluation import validation_fn
from dmporec.losses import sft_loss
from dmporec.model import LINEAGE, add_lora, load_base_model, load_tokenizer
from dmporec.prompt_bound import bound_records
from dmporec.scoring import Group
from dmporec.scoring.forward import score_groups
from dmporec.stages.common import (
    check_settings,
    finish_stage,
    process_state,
    record_settings,
    stage_settings,
)
from dmporec.training import PeakMemory, train_lora


def run_sft(cfg: RunConfig) -> Path:
    """Train `OUTPUT_DIR/sft/adapter` (one positive-first answer per user); skip if already done."""
    out = Path(cfg.output_dir) / "sft"
    settings = stage_settings(cfg, "sft")
    check_settings(out, settings, "sft")
    if (out / LINEAGE).is_file():
        main_print(f"sft: {out} is finished (same settings); delete it to train again")
        return out
    record_settings(out, settings)  # before training: a checkpoint resumes only with these
    tc = cfg.sft
    records = stage_records(cfg.data, "sft_train")
    tokenizer = load_tokenizer(cfg.model)
    with_items = cfg.model.item_tokens != "none"
    if with_items:  # before the prompts are encoded: they name the item tokens
        item_tokens.add_tokens(tokenizer, item_tokens.fit_for_run(cfg, tc.seed, main_print))
    enc = model_encoder(tokenizer, cfg.model, cfg.data.prompt_seed)
    records, cut = bound_records(records, enc, cfg.data, cfg.data.sft_train, "sft")
    # The paper's SFT sees one pair per user: the first negative (in both orders if asked).
    groups = [enc.group(r, k=1, answers="chosen", orders=tc.orders) for r in records]

    start = time.perf_counter()
    with PeakMemory() as mem:
        model = add_lora(load_base_model(cfg.model), cfg.model, tc.seed)
        if with_items:  # its projection trains with the adapter
            item_tokens.attach(model, tokenizer, seed=tc.seed)
        validate = validation_fn(cfg, tokenizer, tc)
        result = train_lora(
            model,
            groups,
            partial(sft_step, tc=tc),
            tc,
            out,
            stage="sft",
            validate=validate,
            hparams=cfg.model_dump(mode="json"),
        )
    if with_items and process_state().is_main_process:
        item_tokens.save_stage(model, out)
    finish_stage(
        out,
        cfg.model,
        [],
        {
            "stage": "sft",
            "users": len(groups),
            # A resumed stage counts the training time of its earlier invocations too.
            "wall_s": round(time.perf_counter() - start + result.pop("resumed_s"), 1),
            "peak_rss_mib": round(mem.peak_rss_mib),
            "peak_gpu_mib": round(mem.peak_gpu_mib),
            **cut,
            **result,
        },
    )
    return out


def sft_step(
    model: torch.nn.Module, groups: list[Group], tc: SFTConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """One SFT micro-batch (a list of groups, the chosen answers only): the mean over users of
    each user's negative log-likelihood per answer token; nothing else to log."""
    scores = score_groups(model, groups, layout=tc.layout, max_batch_tokens=tc.max_batch_tokens)
    return sft_loss(scores.logps, scores.n_tokens, scores.mask).mean(), {}
