"""A random-weight model from a real config and a real tokenizer, for testing a model family's
whole path without its weights (`dmporec random-model`).

    dmporec random-model --config ../shared/models/qwen3/config-Qwen3-8B.json \
        --tokenizer ../shared/models/qwen3 --out runs/qwen3-random [--layers 2 --hidden 64]

The config keeps everything of the real one (architecture, vocabulary, RoPE, norms, tied or
untied embeddings) but the depth and widths given here; `--full-width` keeps the real widths
too (e.g. Qwen3-8B's hidden 4096, 8 KV heads) at the given depth, for memory measurements.
The directory it writes is a model name like any other: `model.name=runs/qwen3-random`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from dmporec.config import ConfigError
from dmporec.files import atomic_write_text

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip


def random_config(config_path: str | Path, layers: int, full_width: bool = False) -> Any:
    """The real config at `layers` layers (and small widths unless `full_width`)."""
    try:
        raw = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{config_path}: not a readable config.json ({e})") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise ConfigError(f"{config_path}: a model config needs a model_type")
    raw.pop("dtype", None)
    raw.pop("torch_dtype", None)
    raw["num_hidden_layers"] = layers
    if "layer_types" in raw:
        raw["layer_types"] = raw["layer_types"][:layers]
    if not full_width:
        raw.update(SMALL)
    model_type = raw.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **raw)
    except ValueError as e:  # a model type this transformers does not know
        raise ConfigError(f"{config_path}: {e}") from None


def build_random_model(
    config_path: str | Path,
    tokenizer_dir: str | Path,
    out: str | Path,
    *,
    layers: int = 2,
    full_width: bool = False,
    seed: int = 0,
) -> Path:
    """Writes a loadable model directory (seeded random weights, fp32) and returns it."""
    out = Path(out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{tokenizer_dir}: no tokenizer there ({e})") from None
    config = random_config(config_path, layers, full_width)
    if config.vocab_size < len(tokenizer):
        raise ValueError(
            f"{config_path}: vocab_size {config.vocab_size} < tokenizer's {len(tokenizer)}"
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    atomic_write_text(
        out / "RANDOM_WEIGHTS.md",
        f"Random weights (seed {seed}) in the shape of {config_path} at {layers} layers"
        f"{' (real widths)' if full_width else ' (small widths)'}, tokenizer {tokenizer_dir}. "
        "It learns like any model of the family but knows nothing: for tests only.\n",
    )
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a model's config.json")
    parser.add_argument("--tokenizer", required=True, help="directory with the model's tokenizer")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    parser.add_argument(
        "--full-width", action="store_true", help="keep the config's widths (default: small)"
    )
    parser.add_argument("--seed", type=int, default=0)


def run_random_model(args: argparse.Namespace) -> int:
    if args.layers < 1:
        raise ConfigError("--layers must be >= 1")
    for path in (args.config, args.tokenizer):
        if not Path(path).exists():
            raise ConfigError(f"{path}: not found")
    out = build_random_model(
        args.config,
        args.tokenizer,
        args.out,
        layers=args.layers,
        full_width=args.full_width,
        seed=args.seed,
    )
    print(f"random-weight model: {out} (use model.name={out})")
    return 0
