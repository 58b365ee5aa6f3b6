"""A trained run (or a bare model) loaded once to rank and explain: the Ranker and how --model finds it.

--model is a run directory (its dmpo stage, else its sft stage), a stage directory (has
lineage.json: the base model plus the adapters to merge), a plain model directory (config.json,
e.g. what `dmporec export` writes), or a model name (`builtin:smollm2-135m`, a hub id) for the
untrained zero-shot model. Titles go through the run's `data.title_normalization`, so
"Am&eacute;lie" reads as the model saw it in training. A score is the candidate's mean
probability of being ranked first against each other candidate, asked in both listing orders
(ranking.py has the rule and its cost).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from dmporec.config import ConfigError, DataConfig, EvalConfig, RunConfig, load_config
from dmporec.explain import EXPLAIN_MAX_NEW_TOKENS, explain_instruction
from dmporec.model import (
    LINEAGE,
    ModelConfig,
    load_base_model,
    load_stage_model,
    load_tokenizer,
)
from dmporec.prompt_bound import PromptBound
from dmporec.prompts import ChatFormat
from dmporec.ranking import (
    PairEncoder,
    RankRequest,
    check_request,
    pair_answers,
    rank_candidates,
    top_k,
)
from dmporec.records import DataError, TitleNormalization, normalize_title
from dmporec.wording import resolve_wording


@dataclass
class Ranker:
    """A loaded model with everything needed to rank and explain; safe to share between threads
    (model calls are serialized: they would only compete for the same cores)."""

    model: torch.nn.Module
    tokenizer: Any
    chat: ChatFormat
    norm: TitleNormalization
    name: str
    eval_cfg: EvalConfig = field(default_factory=EvalConfig)
    data_cfg: DataConfig = field(default_factory=DataConfig)
    encoder: PairEncoder = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.encoder = PairEncoder(self.tokenizer, self.chat)

    @classmethod
    def create(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        model_cfg: ModelConfig,
        name: str,
        run_cfg: RunConfig | None = None,
    ) -> Ranker:
        """Wire a loaded model; the run config (if any) supplies title cleaning and scorer settings."""
        chat = ChatFormat.from_tokenizer(
            tokenizer,
            use_chat_template=model_cfg.use_chat_template,
            template_kwargs=model_cfg.chat_template_kwargs,
        )
        norm = run_cfg.data.title_normalization if run_cfg else TitleNormalization()
        eval_cfg = run_cfg.eval if run_cfg else EvalConfig()
        data_cfg = run_cfg.data if run_cfg else DataConfig()
        return cls(model.eval(), tokenizer, chat, norm, name, eval_cfg, data_cfg)

    def request(
        self,
        history: Sequence[str],
        candidates: Sequence[str],
        domain: Any = "movies",
        *,
        file: str | Path | None = None,
        record: int | str | None = None,
    ) -> RankRequest:
        """A checked request with titles cleaned as in training (`clean_request`), its history
        cut to data.max_prompt_tokens (`bounded`)."""
        request = clean_request(history, candidates, domain, self.norm, file=file, record=record)
        return self.bounded(request, file=file, record=record)

    def bounded(
        self,
        request: RankRequest,
        *,
        file: str | Path | None = None,
        record: int | str | None = None,
    ) -> RankRequest:
        """`request` with its history cut to the newest titles that fit data.max_prompt_tokens
        (DataError instead under data.overlong=refuse)."""
        return self.encoder.bounded(request, self._bound(), file=file, record=record)

    def _bound(self) -> PromptBound:
        return PromptBound.of(self.data_cfg)

    def rank(
        self, requests: Sequence[RankRequest], progress: Callable[[int], None] | None = None
    ) -> list[list[float]]:
        """Scores of each request's candidates (ranking.rank_candidates: `progress(n)` hears of
        the prompts scored as they are)."""
        with self._lock:
            return rank_candidates(
                self.model,
                self.encoder,
                requests,
                layout=self.eval_cfg.layout,
                max_batch_tokens=self.eval_cfg.max_batch_tokens,
                progress=progress,
            )

    def answers(
        self,
        requests: Sequence[RankRequest],
        pairs_of: Sequence[Sequence[tuple[int, int]]],
        progress: Callable[[int], None] | None = None,
        *,
        max_group_tokens: int = 2048,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The answer log-probs of each request's ordered pairs (ranking.pair_answers): a subset
        of the pairs, for the pivot rerank (dmporec.rerank)."""
        with self._lock:
            return pair_answers(
                self.model,
                self.encoder,
                requests,
                pairs_of,
                layout=self.eval_cfg.layout,
                max_batch_tokens=self.eval_cfg.max_batch_tokens,
                max_group_tokens=max_group_tokens,
                progress=progress,
            )

    @torch.no_grad()
    def generate_explanation(
        self,
        history: Sequence[str],
        title: str,
        domain: Any = "movies",
        max_new_tokens: int = EXPLAIN_MAX_NEW_TOKENS,
    ) -> str:
        """A greedy, bounded answer to `explain_instruction` (titles cleaned as in training):
        opt-in, since a model trained on ranking answers may answer in their format
        (dmporec.explain has the grounded reasons)."""
        titles, wording = [normalize_title(t, self.norm) for t in history], resolve_wording(domain)

        def prompt_ids(kept: int) -> list[int]:
            text = explain_instruction(
                titles[-kept:], normalize_title(title, self.norm), wording, tag=self.encoder.tag
            )
            prompt = self.chat.prefix + text + self.chat.suffix
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

        kept = self._bound().fit(
            len(titles), lambda kept: len(prompt_ids(kept)) + max_new_tokens, file=None, record=None
        )
        device = next(self.model.parameters()).device
        ids = torch.tensor([prompt_ids(kept)], device=device)
        with self._lock:
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def clean_request(
    history: Sequence[str],
    candidates: Sequence[str],
    domain: Any,
    norm: TitleNormalization,
    *,
    file: str | Path | None = None,
    record: int | str | None = None,
) -> RankRequest:
    """A checked request (ranking.check_request) with titles cleaned by `norm`, as in training;
    no model needed. `domain` is a wording: a built-in name, five comma-separated words or an
    object. DataError names the field."""

    def clean(titles: Sequence[str]) -> tuple[str, ...]:
        return tuple(normalize_title(t, norm) for t in titles)

    try:
        wording = resolve_wording(domain)
    except ValueError as e:
        raise DataError(str(e), file=file, record=record, field="domain") from None
    return check_request(
        RankRequest(clean(history), clean(candidates), wording), file=file, record=record
    )


def ranked_items(
    titles: Sequence[str], scores: Sequence[float], k: int | None = None
) -> list[dict[str, Any]]:
    """[{rank, title, score}] best first (ties keep the input order), the first k if given."""
    return [
        {"rank": r, "title": titles[i], "score": round(s, 6)}
        for r, (i, s) in enumerate(top_k(titles, scores, k), 1)
    ]


def find_stage(path: Path) -> Path | None:
    """The stage to load from a stage dir or a run dir (dmpo, else sft); None if neither."""
    if (path / LINEAGE).is_file():
        return path
    for stage in ("dmpo", "sft"):
        if (path / stage / LINEAGE).is_file():
            return path / stage
    return None


def run_config(stage_dir: Path) -> RunConfig | None:
    """The config a stage was trained with (its run directory's config.yaml), if there is one."""
    path = stage_dir.parent / "config.yaml"
    return load_config(path) if path.is_file() else None


def title_normalization(spec: str) -> TitleNormalization:
    """The title cleaning `load_ranker(spec)` will use (a run's), read without loading a model."""
    path = Path(spec).expanduser()
    stage = find_stage(path) if path.is_dir() else None
    cfg = run_config(stage) if stage is not None else None
    return cfg.data.title_normalization if cfg is not None else TitleNormalization()


def load_ranker(spec: str, device: torch.device | None = None) -> Ranker:
    """A Ranker for a run dir, stage dir, model dir or model name (see the module docstring)."""
    path = Path(spec).expanduser()
    if path.is_dir() and (stage := find_stage(path)) is not None:
        model, tokenizer, model_cfg = load_stage_model(stage, device)
        return Ranker.create(model, tokenizer, model_cfg, str(stage), run_config(stage))
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{spec}: not a run dir (with dmpo/ or sft/), a stage dir (with {LINEAGE}) "
            "or a model dir (with config.json)"
        )
    if not path.is_dir() and spec.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"{spec}: no such directory")
    try:
        model_cfg = ModelConfig(name=spec)
    except ValidationError as e:
        raise ConfigError(f"--model {spec}: {e.errors()[0]['msg']}") from None
    try:
        tokenizer = load_tokenizer(model_cfg)  # fails fast (and cheaply) for a bad name
    except ValueError as e:  # an unknown builtin or a malformed hub id
        raise ConfigError(f"--model {spec}: {e}") from None
    except OSError as e:
        raise FileNotFoundError(f"{spec}: cannot load a model from it ({e})") from None
    model = load_base_model(model_cfg, device)
    return Ranker.create(model, tokenizer, model_cfg, spec)
