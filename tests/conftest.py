"""Shared fixtures: the tiny random Qwen3 (cached once per session) and small demo records."""

from __future__ import annotations

import pytest

from dmporec.demo_data import DemoDataConfig, make_demo_data
from dmporec.model import BUILTIN_TINY, ModelConfig, load_base_model, load_tokenizer


@pytest.fixture(scope="session")
def tiny_cfg() -> ModelConfig:
    return ModelConfig(name=BUILTIN_TINY)


@pytest.fixture(scope="session")
def tiny(tiny_cfg):
    return load_base_model(tiny_cfg), load_tokenizer(tiny_cfg)


@pytest.fixture(scope="session")
def demo():
    return make_demo_data(DemoDataConfig(train_users=6, valid_users=2, test_users=6, negatives=5))
