"""Read the records a run needs, from whichever source the config names."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from dmporec.alpaca import read_alpaca
from dmporec.config import DataConfig
from dmporec.demo_data import make_demo_data
from dmporec.records import (
    DataError,
    Record,
    TitleNormalization,
    clean_records,
    normalize_record,
    read_records,
    records_text,
)

_DROPPED = {
    "negative_equals_positive": "negative(s) equal to their positive",
    "duplicate_negative": "repeated negative(s)",
    "positive_in_history": "positive(s) from their own history",
    "records": "record(s) left without negatives or history",
}


def load_records(path: str | os.PathLike, norm: TitleNormalization) -> list[Record]:
    """Records from an authors' alpaca file (.json) or canonical JSON lines (anything else),
    titles normalized, and pairs without signal dropped with a warning (`clean_records`)."""
    path = Path(path)
    if path.suffix == ".json":
        records = read_alpaca(path, norm)
    else:
        records = [normalize_record(r, norm) for r in read_records(path)]
    records, dropped = clean_records(records)
    if any(dropped.values()):
        said = ", ".join(f"{n} {_DROPPED[k]}" for k, n in dropped.items() if n)
        print(f"data: warning: {path}: dropped {said} (after title normalization)", file=sys.stderr)
    return records


def demo_files(
    cfg: DataConfig, output_dir: str | os.PathLike
) -> tuple[DataConfig, dict[Path, str]]:
    """The data config with the demo data's paths under OUTPUT_DIR/data filled in, and the text
    of each of those files (written by the caller once it has checked the run; see
    stages.common.prepare_run). No demo: the config as it is, no files."""
    if cfg.demo is None:
        return cfg, {}
    out = Path(output_dir) / "data"
    demo = make_demo_data(cfg.demo)
    files = {
        out / f"{name}.jsonl": records_text(records)
        for name, records in (("train", demo.train), ("valid", demo.valid), ("test", demo.test))
    }
    train = str(out / "train.jsonl")
    return cfg.model_copy(
        update={
            "demo": None,
            "sft_train": train,
            "dmpo_train": train,
            "eval": str(out / "test.jsonl"),
            "valid": str(out / "valid.jsonl") if demo.valid else None,
        }
    ), files


def _user_key(record: Record) -> tuple[tuple[str, ...], str]:
    """Who a training record belongs to: the authors' SFT and DPO files share users, not ids."""
    return tuple(item.title for item in record.history), record.positive.title


def held_out_keys(cfg: DataConfig) -> set[tuple[tuple[str, ...], str]]:
    """The `valid_users` training users held out for validation: a fixed draw from sft_train, so
    every run of a sweep holds out the same users."""
    if not cfg.valid_users:
        return set()
    keys = sorted({_user_key(r) for r in _read(cfg, "sft_train")})
    if cfg.valid_users >= len(keys):
        raise DataError(
            f"data.valid_users={cfg.valid_users} leaves no training users ({len(keys)} in all)",
            file=cfg.sft_train,
        )
    return set(random.Random("dmporec-valid").sample(keys, cfg.valid_users))


def _read(cfg: DataConfig, which: str) -> list[Record]:
    path = getattr(cfg, which)
    if path is None:
        raise DataError(f"data.{which} is not set in the config")
    records = load_records(path, cfg.title_normalization)
    if not records:
        raise DataError("no records", file=path)
    return records


def stage_records(cfg: DataConfig, which: str) -> list[Record]:
    """The records of 'sft_train', 'dmpo_train', 'eval' or 'valid', trimmed as configured.

    'valid' is data.valid, else the held-out users' records from dmpo_train (all their
    negatives), else sft_train; the training splits leave those users out."""
    if which == "valid" and cfg.valid:
        return _read(cfg, "valid")
    if which == "valid":
        source = "dmpo_train" if cfg.dmpo_train else "sft_train"
        held = held_out_keys(cfg)
        if not held:
            raise DataError("validation needs data.valid (a file) or data.valid_users > 0")
        return [r for r in _read(cfg, source) if _user_key(r) in held]
    records = _read(cfg, which)
    if which == "eval" and cfg.max_eval_pairs:
        return records[: cfg.max_eval_pairs]
    held = held_out_keys(cfg) if which != "eval" else set()
    return [r for r in records if _user_key(r) not in held]


def training_labels(cfg: DataConfig) -> list[Record]:
    """The training users' records whose positives and negatives a classic scorer may fit as
    labels (baselines.LikeRate): dmpo_train's (all k negatives), else sft_train's; held-out
    validation users left out, as the training stages leave them."""
    return stage_records(cfg, "dmpo_train" if cfg.dmpo_train else "sft_train")
