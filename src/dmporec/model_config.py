"""The model section of a run config (which base model, which LoRA); importing it needs no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

BUILTIN_SMOLLM2 = "builtin:smollm2-135m"
BUILTIN_GEMMA3 = "builtin:gemma3-270m"
BUILTIN_TINY = "builtin:tiny-qwen3"

# A field's json_schema_extra when it changes how fast, how often or where, never what is computed
# (numbers equal to 1e-4): config.result_settings leaves it out of every reuse check.
OPERATIONAL: dict[str, Any] = {"operational": True}


class ModelConfig(BaseModel):
    """Which base model to load and how to adapt it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        BUILTIN_SMOLLM2,
        description=(
            "Hub id, local directory, or builtin:smollm2-135m / builtin:gemma3-270m / "
            "builtin:tiny-qwen3."
        ),
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16."
    )
    attention: Literal["auto", "sdpa", "flex_attention", "eager"] = Field(
        "auto",
        json_schema_extra=OPERATIONAL,
        description=(
            "Attention kernel: auto (FlexAttention on CUDA when torch has it, so the shared "
            "layout's block mask skips the blocks no token sees; SDPA elsewhere), sdpa, "
            "flex_attention or eager. FlexAttention has no backward on CPU."
        ),
    )
    use_chat_template: bool = Field(
        True, description="Wrap prompts in the tokenizer's chat template when it has one."
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra template arguments, e.g. {enable_thinking: false} for Qwen3.",
    )
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    lora_target_modules: str | list[str] = Field(
        "all-linear",
        description="Modules to adapt; all-linear = every linear layer but the output head.",
    )
    item_tokens: Literal["none", "bpr"] = Field(
        "none",
        description=(
            "Collaborative signal in the prompt (LLaRA/CoLLM style): bpr writes one added token "
            "after each title of the instruction, read as a trained projection of that item's "
            "BPR-MF factors (fitted when SFT starts on the histories of the training, validation "
            "and test users; dmporec.item_tokens). The projection trains with the SFT adapter "
            "and stays frozen in DMPO; a title in no history gets no token. none: the paper's "
            "prompts."
        ),
    )
    trust_remote_code: bool = Field(
        False,
        json_schema_extra=OPERATIONAL,
        description="Allow model code from the hub; off unless you trust the repository.",
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        builtins = (BUILTIN_SMOLLM2, BUILTIN_GEMMA3, BUILTIN_TINY)
        if name.startswith("builtin:") and name not in builtins:
            raise ValueError(f"unknown builtin model {name!r}; choose {', '.join(builtins)}")
        path = Path(name).expanduser()
        if (
            not name.startswith("builtin:")
            and path.exists()
            and not (path / "config.json").is_file()
        ):
            raise ValueError(
                f"{name} exists but is not a model directory (no config.json); give a hub id, "
                "a directory written by save_pretrained, or a builtin"
            )
        return name
