"""Evaluate a model on test pairs: pairwise accuracy, AUCs, 95% CIs, position bias."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from dmporec.collate import GroupEncoder, model_encoder
from dmporec.config import ConfigError, DataConfig, EvalConfig, RunConfig
from dmporec.data import stage_records
from dmporec.distributed import main_print
from dmporec.evaluation import Resume, drop_partial, score_lists, score_pairs, write_eval
from dmporec.files import read_jsonl
from dmporec.generation import generate_answers
from dmporec.item_tokens import check_trained, say_missing
from dmporec.listwise import candidate_sets
from dmporec.model import (
    ModelConfig,
    load_base_model,
    load_stage_model,
    load_tokenizer,
    read_lineage,
)
from dmporec.prompt_bound import PromptBound, bound_records
from dmporec.records import Record
from dmporec.stages.common import (
    check_settings,
    process_state,
    read_settings,
    record_settings,
    stage_settings,
    write_summary,
)
from dmporec.training import PeakMemory


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    model_cfg: ModelConfig,
    records: list[Record],
    ec: EvalConfig,
    prompt_seed: int,
    out_dir: Path,
    name: str,
    enc: GroupEncoder | None = None,
    *,
    data: DataConfig,
    source: Any = None,
    resume: Resume | None = None,
) -> dict[str, int]:
    """Score every test pair and write the results to `out_dir` (see write_eval); `enc`: the
    run's encoder, if one was made already (its token cache is reused). The listwise and
    generated prompts are held to data.max_prompt_tokens / data.overlong as the pairs were
    (`source` names the file in errors); returns what that cut. `resume`: see score_pairs."""
    rows = score_pairs(
        model, tokenizer, model_cfg, records, ec, prompt_seed, desc=f"evaluate {name}", enc=enc,
        resume=resume,
    )  # fmt: skip
    if not process_state().is_main_process:  # the pairs were shared; lists and files are not
        return {}
    cut: dict[str, int] = {}
    lists = None
    if ec.listwise:
        bound = PromptBound.of(data)
        lists = score_lists(
            model, tokenizer, model_cfg, records, ec, desc=f"rank lists {name}", bound=bound,
            file=source,
        )  # fmt: skip
        cut |= {f"lists_{k}": v for k, v in bound.report(f"rank lists {name}").items()}
    generations = None
    if ec.generate:
        chat = (enc or model_encoder(tokenizer, model_cfg, prompt_seed)).chat
        bound = PromptBound.of(data)
        generations = generate_answers(
            model, tokenizer, chat, records, prompt_seed, ec.batch_size, desc=f"generate {name}",
            bound=bound, file=source,
        )  # fmt: skip
        cut |= {f"generate_{k}": v for k, v in bound.report(f"generate {name}").items()}
    write_eval(rows, ec, out_dir, name, lists, generations)
    return cut


def _saved_pairs(path: Path, records: list[Record]) -> list[dict[str, Any]] | None:
    """Rows saved one per (user, negative) by an earlier run, if they are this run's pairs."""
    if not path.is_file():
        return None
    rows = read_jsonl(path)
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
    rows = read_jsonl(path)
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


def run_evaluate(cfg: RunConfig, stage: str, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate 'zero_shot' (the base model) or a finished stage ('sft', 'dmpo' or a stage dir),
    into `out_dir` (default: stage_dirs'). Its settings are recorded there: another evaluation
    into the same directory with other settings is refused, as a stage's own is."""
    stage_dir, out = stage_dirs(cfg, stage)
    out = Path(out_dir) if out_dir is not None else out
    if stage == "zero_shot" and cfg.model.item_tokens != "none":
        # No trained projection to read the tokens with: the base model reads the plain prompts.
        main_print("evaluate zero_shot: model.item_tokens is for trained stages; scored without")
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"item_tokens": "none"})})
    done = out / "eval.json"
    # Under `accelerate launch` every process scores its share of the users (distributed.py);
    # the main process writes.
    state = process_state()
    state.wait_for_everyone()
    records = stage_records(cfg.data, "eval" if cfg.eval.split == "test" else "valid")
    if stage == "zero_shot":
        trained = None
    else:
        if not stage_dir.is_dir():
            raise ConfigError(
                f"evaluate: no stage {stage_dir}: --stage takes zero_shot, sft, dmpo (in "
                f"output_dir {cfg.output_dir}) or a stage directory"
            )
        trained = read_settings(stage_dir)
        if trained is None:
            raise ConfigError(
                f"evaluate: {stage_dir} has no record of its settings; train it again"
            )
        check_trained(trained, cfg.model.item_tokens, f"evaluate: {stage_dir}")
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
        if state.is_main_process:
            print(
                f"evaluate: metrics from the {len(saved)} pairs scored in "
                f"{out / 'predictions.jsonl'} (delete it to score again)"
            )
            write_eval(saved, cfg.eval, out, stage_dir.name, saved_lists, saved_gens)
        state.wait_for_everyone()
        return json.loads(done.read_text())
    start = time.perf_counter()
    with PeakMemory() as mem:
        if stage == "zero_shot":
            model, tokenizer, model_cfg = (
                load_base_model(cfg.model),
                load_tokenizer(cfg.model),
                cfg.model,
            )
            adapters: list[Path] = []
        else:
            model, tokenizer, model_cfg = load_stage_model(stage_dir)
            adapters = read_lineage(stage_dir)[1]
        enc = model_encoder(tokenizer, model_cfg, cfg.data.prompt_seed)
        say_missing(tokenizer, records, f"evaluate {stage_dir.name}", main_print)
        source = cfg.data.eval if cfg.eval.split == "test" else cfg.data.valid
        records, cut = bound_records(records, enc, cfg.data, source, f"evaluate {stage_dir.name}")
        cut |= evaluate(
            model,
            tokenizer,
            model_cfg,
            records,
            cfg.eval,
            cfg.data.prompt_seed,
            out,
            stage_dir.name,
            enc=enc,
            data=cfg.data,
            source=source,
            # A stopped scoring (~28 min for 1000 pairs in both orders on a CPU) resumes.
            resume=Resume(out, tuple(adapters)),
        )
    record_settings(out, settings)
    wall = round(time.perf_counter() - start, 1)
    if state.is_main_process:
        write_summary(
            out,
            {
                "stage": f"eval {stage_dir.name}",
                "wall_s": wall,
                "peak_rss_mib": round(mem.peak_rss_mib),
                "peak_gpu_mib": round(mem.peak_gpu_mib),
                **cut,
            },
        )
    state.wait_for_everyone()  # every process has read the kept batches before they go
    if state.is_main_process:
        drop_partial(out)
    return json.loads(done.read_text())
