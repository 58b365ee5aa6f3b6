"""The transformers calls whose names are changing, spelled in one place.

transformers 5.24 renamed a forward's `past_key_values=` to `cache=` (and the output's
`.past_key_values` to `.cache`), and `gradient_checkpointing_enable` / `is_gradient_checkpointing`
to `activation_checkpointing_enable` / `is_activation_checkpointing`; the old names warn and go
away (5.40, v6). The rest of dmporec calls these helpers, which use the new name where the
installed transformers has it and the old one otherwise (the oldest declared version is tested
in CI, see `.ci/run`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch


@cache
def _cache_name() -> str:
    """The forward keyword (and output field) of the KV cache in this transformers."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def with_cache(kv_cache: Any) -> dict[str, Any]:
    """Forward keywords that pass `kv_cache` and ask for it back: `model(**with_cache(c), ...)`."""
    return {_cache_name(): kv_cache, "use_cache": True}


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned."""
    return getattr(output, _cache_name())


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers causal LM under accelerate's and PEFT's wrappers."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder_body(model: torch.nn.Module) -> torch.nn.Module | None:
    """The decoder stack under the LM head (its output's first field is the last layer's hidden
    states, after the final norm), or None when the model names none. `base_model` finds it in
    transformers 5; in 4.57 some classes (Gemma3ForCausalLM) name a prefix they lack, and
    `get_decoder()` finds it there."""
    lm = causal_lm(model)
    get_decoder = getattr(lm, "get_decoder", None)
    for body in (lm.base_model, get_decoder() if callable(get_decoder) else None):
        if isinstance(body, torch.nn.Module) and body is not lm:
            return body
    return None


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation (gradient) checkpointing on every decoder layer, non-reentrant, with input
    gradients on so the frozen embeddings still pass gradients to the LoRA layers."""
    base = causal_lm(model)
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.enable_input_require_grads()


def checkpointing_active(model: torch.nn.Module) -> bool:
    """Whether `model` is training with activation checkpointing on (layers then replay their
    forward without a KV cache)."""
    if not model.training:
        return False
    base = causal_lm(model)
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(base), name):
            return bool(getattr(base, name))
    return False
