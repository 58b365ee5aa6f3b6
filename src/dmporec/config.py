"""Typed run configuration: YAML files in configs/, with `section.key=value` overrides on top."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dmporec.demo_data import DemoDataConfig
from dmporec.model_config import OPERATIONAL, ModelConfig
from dmporec.records import TitleNormalization


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Scored(_Strict):
    """A section with a `layout`; `scorer`, its name before, is still read (`layout` wins)."""

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "scorer" in data:
            data = dict(data)
            old = data.pop("scorer")
            data.setdefault("layout", old)
        return data


class DataConfig(_Strict):
    """Where the records come from. A path ending in .json is read as the authors' alpaca
    format, anything else as canonical records (JSON lines)."""

    sft_train: str | None = Field(
        None, description="SFT training data (one positive, one negative per user)."
    )
    dmpo_train: str | None = Field(
        None, description="DMPO training data (records with >= k negatives, or dpo_ranking_k rows)."
    )
    eval: str | None = Field(None, description="Test pairs.")
    valid: str | None = Field(
        None,
        description="Validation pairs (`eval.split=valid`, `*.eval_every_steps`); when unset, "
        "the training users held out by valid_users.",
    )
    demo: DemoDataConfig | None = Field(
        None, description="Generate the demo data into OUTPUT_DIR/data and use it for all three."
    )
    title_normalization: TitleNormalization = Field(default_factory=TitleNormalization)
    max_eval_pairs: int | None = Field(
        None,
        ge=1,
        description="Evaluate the first N test records only (N pairs for one-negative test files).",
    )
    prompt_seed: int = Field(
        0, description="Seed of the candidate order in prompts that do not fix it."
    )
    max_prompt_tokens: int = Field(
        4096,
        ge=32,
        description="Longest sequence (prompt + answer, in tokens) any record or request may "
        "make; checked before any model work in training, evaluation, recommend and serve.",
    )
    overlong: Literal["truncate", "refuse"] = Field(
        "truncate",
        description="A prompt over max_prompt_tokens: truncate = keep the newest history titles "
        "that fit (counted in the stage's output); refuse = stop, naming the record.",
    )
    valid_users: int = Field(
        0,
        ge=0,
        description="Hold out this many training users (a fixed seeded draw) from sft_train and "
        "dmpo_train; `eval.split=valid` scores their pairs. For choosing settings without the test file.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.demo is not None and any((self.sft_train, self.dmpo_train, self.eval, self.valid)):
            raise ValueError("set either data.demo or the data paths, not both")
        if self.valid and self.valid_users:
            raise ValueError("set either data.valid or data.valid_users, not both")
        return self


class TrainConfig(_Scored):
    """One LoRA training stage; the defaults are the authors' settings (effective batch 8)."""

    epochs: int = Field(3, ge=1, description="Passes over the training users.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(8, ge=1, description="Users per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="Share of steps with linear warm-up before the cosine decay."
    )
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    seed: int = Field(
        42, ge=0, le=2**32 - 1, description="Seeds weights init, data order and dropout."
    )
    layout: Literal["shared", "naive"] = Field(
        "shared",
        json_schema_extra=OPERATIONAL,
        description="shared: encode each prompt once for all its answers; naive: one row per answer (debugging, benchmarks).",
    )
    max_batch_tokens: int = Field(
        8192,
        ge=64,
        json_schema_extra=OPERATIONAL,
        description="Rows x padded length per forward pass; lower it to save memory.",
    )
    orders: Literal["listed", "both"] = Field(
        "listed",
        description="listed: each pair as the data lists it; both: also the other listing order "
        "(twice the pairs, one history prefix), so the listing position carries no signal.",
    )
    gradient_checkpointing: bool = Field(
        False,
        json_schema_extra=OPERATIONAL,
        description="Recompute activations in backward: less memory, ~30% slower (for big models on GPU).",
    )
    save_every_steps: int = Field(
        0,
        ge=0,
        json_schema_extra=OPERATIONAL,
        description="Checkpoint every N optimizer steps (0: at the end of each epoch only).",
    )
    eval_every_steps: int = Field(
        0,
        ge=0,
        json_schema_extra=OPERATIONAL,
        description="Score the validation pairs (data.valid or data.valid_users) every N "
        "optimizer steps and at the end, in eval.orders: `valid_accuracy` in metrics.jsonl and "
        "curves.png, a learning curve from one run (0: off).",
    )
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = Field(
        "none",
        json_schema_extra=OPERATIONAL,
        description="Experiment tracking through accelerate's trackers: every optimizer step's "
        "loss, reward margin and accuracy, learning rate and validation metrics, and the run "
        "config as hyperparameters, under OUTPUT_DIR/<stage>/tracking (tensorboard, mlflow) or "
        "your wandb project (set WANDB_MODE=offline to keep it local). metrics.jsonl is always "
        "written.",
    )


class SFTConfig(TrainConfig):
    epochs: int = Field(5, ge=1, description="Passes over the training users.")


class DMPOConfig(TrainConfig):
    k: int = Field(3, ge=1, le=20, description="Negatives per user; k=1 is DPO.")
    beta: float = Field(
        0.1, gt=0, description="Strength of the pull towards the reference (SFT) model."
    )
    loss: Literal["dmpo", "sdpo"] = Field(
        "dmpo", description="dmpo (the paper) or sdpo (S-DPO, Chen et al. 2024)."
    )
    sft_weight: float = Field(
        0.0, ge=0, description="Weight of an SFT term on the chosen answers (the authors' dpo_ftx)."
    )


class EvalConfig(_Scored):
    batch_size: int = Field(
        16, ge=1, json_schema_extra=OPERATIONAL, description="Test users scored per call."
    )
    layout: Literal["shared", "naive", "cached"] = Field(
        "shared",
        json_schema_extra=OPERATIONAL,
        description="shared: the prefix all users share once per call (KV cache), then one packed "
        "row per user (prompt tree under a block mask); cached: the same tokens, the history "
        "encoded causally into the KV cache that the pair lines and answers then attend to (one "
        "more pass; slower on a CPU); naive: one row per answer (debugging, benchmarks).",
    )
    max_batch_tokens: int = Field(
        8192, ge=64, json_schema_extra=OPERATIONAL, description="Rows x padded length per pass."
    )
    split: Literal["test", "valid"] = Field(
        "test", description="test: data.eval; valid: the users held out by data.valid_users."
    )
    orders: Literal["listed", "both"] = Field(
        "both",
        description="both: score each pair in both listing orders and add the log-probs, so the "
        "model's position bias cancels (the history is still encoded once per user; ~1.25x the "
        "tokens); listed: only the order in the data. 'both' won on validation (docs/results.md).",
    )
    listwise: int = Field(
        0,
        ge=0,
        # 1 candidate would rank itself first: HR@1 = 1.0 that means nothing.
        description="Also rank N candidates per test user (the positive and N-1 sampled titles "
        "the user never rated) for HR@k, NDCG@k, MRR; 0 = off. Costs N(N-1) prompts per user.",
    )
    generate: bool = Field(
        False,
        description="Also generate each pair's answer greedily (listed order) and parse it back: "
        "ValidRatio and the accuracy of the generated order, as S-DPO and LLaRA report them.",
    )
    n_boot: int = Field(1000, ge=10, description="Bootstrap resamples for the 95% CIs.")
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="Seed of the coin-flip AUC and the bootstrap."
    )

    @field_validator("listwise")
    @classmethod
    def _a_list(cls, value: int) -> int:
        if value == 1:
            raise ValueError("a list needs at least 2 candidates (0 = off)")
        return value


class SASRecConfig(_Strict):
    """SASRec as one more baseline row (dmporec.sequential; Cornac, the `seq` extra). Fitted like
    the other baselines, on the training and evaluated users' histories, seeded by eval.seed.
    The defaults were chosen on the MovieLens-1M validation users (docs/usage.md)."""

    epochs: int = Field(10, ge=1, description="Passes over every prefix of every history.")
    dim: int = Field(32, ge=1, description="Item embedding and hidden size.")
    max_len: int = Field(
        40, ge=1, description="History items read, the latest ones (the authors' windows: 40)."
    )
    blocks: int = Field(2, ge=1, description="Self-attention blocks.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout in every block.")
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate.")
    batch_size: int = Field(
        512, ge=2, description="Prefixes per step; the others' targets are negatives too."
    )


class RunConfig(_Strict):
    output_dir: str = Field(
        "runs/default",
        json_schema_extra=OPERATIONAL,
        description="Where every stage writes its results.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    dmpo: DMPOConfig = Field(default_factory=DMPOConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    # Which stages `run` runs: each stage's results are checked by its own settings.
    zero_shot: bool = Field(
        True,
        json_schema_extra=OPERATIONAL,
        description="`run` also evaluates the untrained base model.",
    )
    baselines: bool = Field(
        True,
        json_schema_extra=OPERATIONAL,
        description="`run` also scores the classic baselines (random, popularity, BPR-MF, MiniLM "
        "similarity) on the same pairs, with paired tests against them.",
    )

    sasrec: SASRecConfig | None = Field(
        None,
        description="With baselines, `run` also scores SASRec, the sequential baseline (needs "
        "`pip install 'dmporec[seq]'`), with these settings: `sasrec: {}` in YAML or "
        "`sasrec.epochs=10` on the command line turns it on; unset = off.",
    )
    hybrid: bool = Field(
        True,
        json_schema_extra=OPERATIONAL,
        description="`run` also fits the hybrid ranker (the DMPO model's pair margins fused with "
        "the classic scorers by a logistic regression fitted on the validation users only) and "
        "scores it on the test pairs; skipped, and said, without validation users (data.valid "
        "or data.valid_users).",
    )

    @field_validator("output_dir")
    @classmethod
    def _a_directory(cls, value: str) -> str:
        if Path(value).exists() and not Path(value).is_dir():
            raise ValueError(f"{value} exists and is not a directory")
        return value


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the file and field."""


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite (settings that pass validation can still diverge): the
    stage stops, names the step, and is not marked finished."""


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """A RunConfig from a YAML file (optional) and `a.b=value` overrides (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            tree = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid YAML: {_one_line(e)}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: not a YAML value: {_one_line(e)}") from None
        _set(tree, key.strip(), value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(top)'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{source}{' + overrides' if overrides else ''}: {problems}") from None


def _operational(section: type[BaseModel], name: str) -> bool:
    extra = section.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("operational"))


def result_settings(section: BaseModel) -> dict[str, Any]:
    """What a config section's results depend on, as JSON values: every field but those marked
    OPERATIONAL (how fast, how often, where), nested sections likewise. The one rule every reuse
    check applies: a stage's settings.json (stages/common.py) and an experiment cell's row."""
    dumped = section.model_dump(mode="json")
    return {
        name: result_settings(value) if isinstance(value, BaseModel) else dumped[name]
        for name, value in section
        if not _operational(type(section), name)
    }


def flat_settings(section: BaseModel) -> dict[str, Any]:
    """result_settings flattened to 'section.key' entries ('data.title_normalization.strip_year')."""

    def flat(key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or not value:
            return {key: value}
        return {k: v for name, sub in value.items() for k, v in flat(f"{key}.{name}", sub).items()}

    return {
        k: v
        for name, value in result_settings(section).items()
        for k, v in flat(name, value).items()
    }


def operational_keys(section: type[BaseModel] = RunConfig, prefix: str = "") -> set[str]:
    """The 'section.key' names of every OPERATIONAL field: a record made before a field was
    marked still carries it, and it is left out of the comparison (stages.common.settings_changes)."""
    keys = set()
    for name, field in section.model_fields.items():
        if _operational(section, name):
            keys.add(prefix + name)
        for sub in (field.annotation, *get_args(field.annotation)):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                keys |= operational_keys(sub, f"{prefix}{name}.")
    return keys


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
