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


@pytest.fixture
def stop_training(monkeypatch) -> Callable[[int, list[str]], None]:
    """stop_training(n, argv): `dmporec argv` stopped by a KeyboardInterrupt (as Ctrl-C would)
    once n training steps are logged, leaving its checkpoint to resume from."""
    import dmporec.training as training
    from dmporec.cli import main

    real = training.append_jsonl

    def run(n: int, argv: list[str]) -> None:
        steps: list[int] = []

        def stop_after_n(path, row):
            real(path, row)
            steps.append(row["step"])
            if len(steps) == n:
                raise KeyboardInterrupt

        monkeypatch.setattr(training, "append_jsonl", stop_after_n)
        with pytest.raises(KeyboardInterrupt):  # called from Python: the caller's to handle
            main(argv)
        monkeypatch.setattr(training, "append_jsonl", real)

    return run
