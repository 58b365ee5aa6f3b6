"""Shared fixtures: the tiny random Qwen3 (cached once per session), small demo records, and the
benchmark scripts as modules."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from dmporec.collate import GroupEncoder
from dmporec.demo_data import DemoDataConfig, make_demo_data
from dmporec.model import BUILTIN_TINY, ModelConfig, add_lora, load_base_model, load_tokenizer
from dmporec.prompts import ChatFormat


@pytest.fixture(scope="session")
def tiny_cfg() -> ModelConfig:
    return ModelConfig(name=BUILTIN_TINY)


@pytest.fixture(scope="session")
def tiny(tiny_cfg):
    return load_base_model(tiny_cfg), load_tokenizer(tiny_cfg)


@pytest.fixture(scope="session")
def demo():
    return make_demo_data(DemoDataConfig(train_users=6, valid_users=2, test_users=6, negatives=5))


@pytest.fixture
def three_user_groups(tiny_cfg, demo):
    """(a fresh LoRA policy, DMPO groups of 3 demo users at k=2, the second with one negative)."""
    tok = load_tokenizer(tiny_cfg)
    enc = GroupEncoder(tok, ChatFormat.from_tokenizer(tok))
    records = demo.train[:3]
    records[1] = replace(records[1], negatives=records[1].negatives[:1])
    groups = [enc.group(r, k=2) for r in records]
    return add_lora(load_base_model(tiny_cfg), tiny_cfg), groups


@pytest.fixture(scope="session")
def benchmark() -> Callable[[str], ModuleType]:
    """benchmark("catalogue_eval"): benchmarks/catalogue_eval.py as a module, imported once per
    session and registered in sys.modules (a script's dataclasses look their module up)."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str) -> ModuleType:
        key = f"benchmark_{name}"
        if key not in sys.modules:
            spec = importlib.util.spec_from_file_location(key, root / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            spec.loader.exec_module(module)
        return sys.modules[key]

    return load
