"""The libraries in use satisfy what pyproject.toml declares, and the compatibility shim speaks
their API (run on the newest versions by `make test`, on the oldest by `make test-oldest`)."""

import importlib.metadata as md
import warnings

import pytest
import torch
from packaging.requirements import Requirement

from dmporec.hf_compat import checkpointing_active, enable_checkpointing, output_cache, with_cache
from dmporec.model import add_lora, load_base_model

DECLARED = {
    (r := Requirement(line)).name: r.specifier
    for line in md.requires("dmporec")
    if "extra ==" not in line
}


@pytest.mark.parametrize("name", ["torch", "transformers", "peft", "accelerate", "numpy", "scipy"])
def test_installed_versions_satisfy_the_declared_ranges(name):
    version = md.version(name).split("+")[0]
    assert DECLARED[name].contains(version, prereleases=True), (name, version, DECLARED[name])


def test_shim_passes_the_cache_and_checkpointing_without_deprecation_warnings(tiny_cfg):
    from transformers import DynamicCache

    model = add_lora(load_base_model(tiny_cfg), tiny_cfg)
    ids = torch.tensor([[5, 6, 7, 8]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        full = model(input_ids=ids, use_cache=False).logits
        cache = output_cache(model(input_ids=ids[:, :2], **with_cache(DynamicCache())))
        rest = model(input_ids=ids[:, 2:], **with_cache(cache)).logits
        assert torch.allclose(full[:, 2:], rest, atol=1e-5)
        assert not checkpointing_active(model.train())
        enable_checkpointing(model)
        assert checkpointing_active(model.train())
        assert not checkpointing_active(model.eval())


def test_decoder_body_is_the_stack_under_the_lm_head(tiny_cfg):
    """Scoring hooks the decoder body's output for the last hidden states; in transformers 4.57
    Gemma3ForCausalLM names a base-model prefix it lacks, so the body is found another way."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from dmporec.hf_compat import decoder_body

    model = add_lora(load_base_model(tiny_cfg), tiny_cfg)
    assert decoder_body(model) is model.get_base_model().model
    config = Gemma3TextConfig(
        vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
    )  # fmt: skip
    gemma = Gemma3ForCausalLM(config)
    assert decoder_body(gemma) is gemma.model
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        want = gemma(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        from dmporec.scoring.forward import _encode

        got, _ = _encode(gemma, input_ids=ids)
    assert torch.allclose(got, want)
