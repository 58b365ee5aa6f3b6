"""Read the records a run needs, from whichever source the config names."""

from __future__ import annotations

import os
from pathlib import Path

from dmporec.alpaca import read_alpaca
from dmporec.config import DataConfig
from dmporec.demo_data import make_demo_data
from dmporec.records import (
    DataError,
    Record,
    TitleNormalization,
    normalize_record,
    read_records,
    write_records,
)


def load_records(path: str | os.PathLike, norm: TitleNormalization) -> list[Record]:
    """Records from an authors' alpaca file (.json) or canonical JSON lines (anything else)."""
    path = Path(path)
    if path.suffix == ".json":
        return read_alpaca(path, norm)
    return [normalize_record(r, norm) for r in read_records(path)]


def resolve_data(cfg: DataConfig, output_dir: str | os.PathLike) -> DataConfig:
    """The data config with demo data generated (once) under OUTPUT_DIR/data and its paths filled in."""
    if cfg.demo is None:
        return cfg
    out = Path(output_dir) / "data"
    demo = make_demo_data(cfg.demo)
    for name, records in (("train", demo.train), ("valid", demo.valid), ("test", demo.test)):
        write_records(out / f"{name}.jsonl", records)
    train = str(out / "train.jsonl")
    return cfg.model_copy(
        update={
            "demo": None,
            "sft_train": train,
            "dmpo_train": train,
            "eval": str(out / "test.jsonl"),
        }
    )


def stage_records(cfg: DataConfig, which: str) -> list[Record]:
    """The records of one split ('sft_train', 'dmpo_train' or 'eval'), trimmed as configured."""
    path = getattr(cfg, which)
    if path is None:
        raise DataError(f"data.{which} is not set in the config")
    records = load_records(path, cfg.title_normalization)
    if not records:
        raise DataError("no records", file=path)
    if which == "eval" and cfg.max_eval_pairs:
        return records[: cfg.max_eval_pairs]
    return records
