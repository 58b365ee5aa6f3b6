"""What every stage does the same way: paths, stage summaries and curves, and
the settings record that keeps a rerun from reusing results made with other settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dmporec.config import (
    ConfigError,
    RunConfig,
    dump_config,
    operational_keys,
    result_settings,
)
from dmporec.data import demo_files
from dmporec.distributed import process_state  # noqa: F401  (re-exported)
from dmporec.files import atomic_write_text
from dmporec.model import ModelConfig, write_lineage
from dmporec.plots import plot_curves

SUMMARY = "summary.json"
SETTINGS = "settings.json"


def file_digest(path: str | None) -> str | None:
    if path is None or not Path(path).is_file():
        return path
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _prefixed(prefix: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in settings.items()}


def stage_settings(
    cfg: RunConfig, stage: str, parent: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the results of `stage` ('sft', 'dmpo', or 'eval' of a model whose settings are
    `parent`; zero-shot when None) depend on, as flat 'section.key' entries; data files by
    content; the config's fields as config.result_settings keeps them. Compared on every rerun:
    see check_settings."""
    data = cfg.data
    out: dict[str, Any] = {
        **_prefixed("model", result_settings(cfg.model)),
        "data.title_normalization": result_settings(data.title_normalization),
        "data.prompt_seed": data.prompt_seed,
        "data.max_prompt_tokens": data.max_prompt_tokens,
        "data.overlong": data.overlong,
    }
    if stage in ("sft", "dmpo"):
        source = data.sft_train if stage == "sft" else data.dmpo_train
        out[f"data.{stage}_train"] = file_digest(source)
        out["data.valid_users"] = data.valid_users
        out.update(_prefixed(stage, result_settings(getattr(cfg, stage))))
        if stage == "sft" and cfg.model.item_tokens != "none":
            out.update(_item_table_settings(cfg))
    else:
        split = cfg.eval.split
        out["data.eval" if split == "test" else "data.valid"] = file_digest(
            data.eval if split == "test" else data.valid or data.dmpo_train or data.sft_train
        )
        if split == "valid":
            out["data.valid_users"] = data.valid_users
        out["data.max_eval_pairs"] = data.max_eval_pairs
        out["eval.split"] = split
        # eval.orders, listwise and generate need no entry: saved scores are reused only when
        # they hold this run's pairs, orders and candidate lists (stages/evaluate.py checks).
    if parent is not None:
        out["trained"] = fingerprint(parent)
    return out


def _item_table_settings(cfg: RunConfig) -> dict[str, Any]:
    """What an SFT stage's item-token table depends on: the files its histories come from (by
    content) and BPR-MF's fit settings (seeded by sft.seed)."""
    from dmporec.item_tokens import fitted_files
    from dmporec.retriever_cache import fit_settings

    return {
        "item_tokens.fitted_on": {k: file_digest(v) for k, v in fitted_files(cfg.data).items()},
        "item_tokens.bpr": fit_settings("bpr-mf", seed=cfg.sft.seed),
    }


def _trained_table(now: dict[str, Any], then: dict[str, Any] | None) -> dict[str, Any]:
    """`now` with the files the recorded SFT stage fitted its item-token table on (`then`'s), so
    that evaluating it on other data files (data.eval, data.valid) is no settings change; every
    other setting is still checked."""
    key = "item_tokens.fitted_on"
    if then is None or key not in then or key not in now:
        return now
    return {**now, key: then[key]}


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def record_settings(directory: Path, settings: dict[str, Any]) -> None:
    if process_state().is_main_process:
        atomic_write_text(
            directory / SETTINGS, json.dumps(settings, indent=1, sort_keys=True) + "\n"
        )


# What makes a directory hold reusable results: a training stage's adapter lineage or checkpoint,
# an evaluation's scored pairs. Anything else left there (a crash before the first checkpoint)
# is started over.
RESULTS = ("lineage.json", "checkpoint", "predictions.jsonl")


# Settings keys added after settings.json existed, with the value that behaves as before they did
# (no prompt of the demo or the authors' files reaches 4096 tokens, so the bound cuts nothing;
# no item tokens is the paper's prompt).
ADDED_LATER = {
    "data.max_prompt_tokens": 4096,
    "data.overlong": "truncate",
    "model.item_tokens": "none",
}


def holds_results(directory: Path) -> bool:
    """Whether a stage's or evaluation's directory holds results of its own (see RESULTS)."""
    return any((directory / name).exists() for name in RESULTS)


def check_settings(directory: Path, settings: dict[str, Any], what: str) -> None:
    """Stop (ConfigError, one line) when `directory` holds results made with other settings, or
    by a dmporec that recorded none; a directory without results passes."""
    if not holds_results(directory):
        return
    path = directory / SETTINGS
    if not path.is_file():
        raise ConfigError(
            f"{what}: {directory} holds results without a record of their settings (made by "
            f"an older dmporec); delete it or choose another output_dir"
        )
    said = settings_changes(json.loads(path.read_text()), settings)
    if said:
        raise ConfigError(
            f"{what}: {directory} was made with other settings ({said}); use another "
            f"output_dir, or delete {directory} to redo it"
        )


def settings_changes(then: dict[str, Any], now: dict[str, Any]) -> str:
    """Why a result made with the settings `then` is not one `now` would make: the settings
    that differ, 'key: old then, new now' for the first five; '' when it is. Every reuse check
    asks this (a stage's directory, an experiment's cell, a cell's sft_from, a restored row).

    A record made by an older dmporec is read as it behaves now: keys added since (ADDED_LATER)
    take the value that reproduces it, and fields marked operational since are left out."""
    stale = operational_keys()
    then = {
        **{k: v for k, v in ADDED_LATER.items() if k in now},
        **{k: v for k, v in then.items() if k not in stale},
    }
    diff = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
    said = "; ".join(f"{k}: {then.get(k)!r} then, {now.get(k)!r} now" for k in diff[:5])
    return said + (f" (and {len(diff) - 5} more)" if len(diff) > 5 else "")


def read_settings(directory: Path) -> dict[str, Any] | None:
    path = directory / SETTINGS
    return json.loads(path.read_text()) if path.is_file() else None


def _holds_results(out: Path) -> bool:
    """Whether `out` holds any stage's or evaluation's results (see RESULTS)."""
    return out.is_dir() and any(p.name in RESULTS for p in out.rglob("*"))


def prepare_run(cfg: RunConfig, record: bool = True) -> RunConfig:
    """Write the demo data if configured, check that the output dir's finished or checkpointed
    training stages were made with these settings, and (`record`: the commands that train)
    record the resolved config there as config.yaml, which export and recommend read.

    Nothing the run already holds is rewritten before the checks pass: demo data that differs
    from the files beside results made from them stops here (one line), and only missing files
    are written first. `dmporec evaluate` passes record=False: an evaluation with another test
    file or --out leaves the run's config.yaml as its training wrote it, and the SFT stage's
    item-token table (model.item_tokens) is checked as fitted, on the files it names."""
    data, files = demo_files(cfg.data, cfg.output_dir)
    cfg = cfg.model_copy(update={"data": data})
    out = Path(cfg.output_dir)
    changed = [p for p, text in files.items() if p.is_file() and p.read_text() != text]
    if changed and _holds_results(out):
        raise ConfigError(
            f"data.demo: the demo data these settings make differs from {changed[0]}, which "
            f"results in {out} were made from; use another output_dir, or delete {out} to redo it"
        )
    for path, text in files.items():
        if not path.is_file() or path in changed:
            atomic_write_text(path, text)
    sft, recorded = stage_settings(cfg, "sft"), read_settings(out / "sft")
    if not record:  # an evaluation: a trained item-token table stays what it was fitted on
        sft = _trained_table(sft, recorded)
    check_settings(out / "sft", sft, "sft")
    if recorded is not None:
        # A DMPO stage on OUTPUT_DIR/sft was trained on the SFT as recorded there (run_dmpo
        # fingerprints that record, which lacks any setting added since: ADDED_LATER); a record
        # without results is an SFT that never trained, so the check asks for this run's.
        parent = recorded if holds_results(out / "sft") else sft
        check_settings(out / "dmpo", stage_settings(cfg, "dmpo", parent), "dmpo")
    if record:
        atomic_write_text(out / "config.yaml", dump_config(cfg))
    return cfg


def finish_stage(
    stage_dir: Path, model_cfg: ModelConfig, merged: list[str], summary: dict[str, Any]
) -> None:
    """Mark a training stage finished: lineage (written last), curves and summary; main process only."""
    if not process_state().is_main_process:
        return
    plot_curves(stage_dir / "metrics.jsonl", stage_dir / "curves.png")
    write_summary(stage_dir, summary)
    write_lineage(stage_dir, model_cfg, merged)


def write_summary(stage_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(stage_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")


def read_summary(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None
