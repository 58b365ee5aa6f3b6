"""One collaborative-filtering token per item (LLaRA / CoLLM style): with model.item_tokens=bpr
each title the instruction writes is followed by `<item_N>`, which the model reads as
proj(F[N]): F the BPR-MF item factors (frozen), proj a linear map trained with the SFT adapter.

    history and candidates   " <Title:Heat><item_17> "  (prompts.title_tag without a factor)
    answers                  " <Title:Heat> ,  <Title:Up> "  (never an item token)

- F is fitted once per SFT stage (`fit_for_run`: baselines.BPRMF with its defaults, seeded by
  sft.seed) on the histories of the SFT training users and of data.valid's and data.eval's
  users, each user once, as the baselines fit BPR-MF (a history is model input, never a label).
  A title in no fitted history has no row and gets no token; SFT says how many, and so does
  each evaluation of its own records. The files are part of the SFT stage's settings; an
  evaluation on other files uses the table as trained.
- The tokens are atomic added tokens with ids from the tokenizer's own length on (`add_tokens`;
  Qwen3's embedding matrix has more rows than its tokenizer, so that length is the threshold,
  not the row count). The model's input embedding is wrapped (`ItemTokenEmbedding`): ids below
  the threshold read the original embedding, ids at or above it proj(F[id - threshold]). The
  output head is not resized and stays tied to the original embedding: answers are scored over
  the base vocabulary as before. Prompts built from a tokenizer with item tokens carry them
  (`tagger`: collate.GroupEncoder, ranking.PairEncoder, generation, explain), so evaluation,
  listwise ranking, generation, recommend and serve work on such a stage unchanged.
- A stage keeps its table, F and proj in STAGE/item_tokens.safetensors and .json (`save_stage`);
  `restore` puts them back on a loaded model and tokenizer (model.load_stage_model). DMPO reads
  the SFT stage's trained proj and keeps it frozen, so its reference model is the SFT model; a
  training checkpoint keeps proj beside the adapter (training.OTHERS). `dmporec export` refuses
  such a stage: a plain transformers directory cannot hold the wrapper.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save
from torch.nn import functional as F

from dmporec.files import atomic_write_bytes, atomic_write_text
from dmporec.hf_compat import causal_lm
from dmporec.prompts import title_tag
from dmporec.records import Record

TOKEN = "<item_{}>"
FILES = ("item_tokens.safetensors", "item_tokens.json")  # in a stage directory
FORMAT = 1
_TOKENIZER_ATTR = "dmporec_item_table"  # the table a tokenizer's item tokens belong to


@dataclass(frozen=True)
class ItemTable:
    """Item rows: `titles[n]` is `<item_n>`, its factor `factors[n]` ([n_items, dim] float32)."""

    titles: tuple[str, ...]
    factors: torch.Tensor
    rows: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.factors.ndim != 2 or len(self.titles) != self.factors.shape[0]:
            raise ValueError(
                f"item table: {len(self.titles)} titles for factors of shape "
                f"{tuple(self.factors.shape)}"
            )
        object.__setattr__(self, "rows", {t: n for n, t in enumerate(self.titles)})

    def tag(self, title: str) -> str:
        """The title as the instruction writes it: its item token after it, if it has one.

        >>> table = ItemTable(("Heat",), torch.zeros(1, 2))
        >>> table.tag("Heat"), table.tag("Up")
        (' <Title:Heat><item_0> ', ' <Title:Up> ')
        """
        row = self.rows.get(title)
        return title_tag(title) if row is None else f" <Title:{title}>{TOKEN.format(row)} "

    def missing(self, records: Iterable[Record]) -> int:
        """How many distinct titles of `records` (histories and candidates) have no row."""
        titles = {i.title for r in records for i in (*r.history, r.positive, *r.negatives)}
        return len(titles - self.rows.keys())


def fit_table(records: Sequence[Record], seed: int = 0) -> ItemTable:
    """BPR-MF (baselines.BPRMF, its defaults) fitted on the histories of `records`, each user
    once; its item factors q in the order BPR-MF indexes them (first appearance)."""
    from dmporec.baselines import BPRMF
    from dmporec.catalogue import distinct_users

    bpr = BPRMF.fit(distinct_users(records), seed=seed)
    titles = sorted(bpr.items, key=bpr.items.__getitem__)
    return ItemTable(tuple(titles), torch.from_numpy(bpr.q).float())


def fitted_files(data: Any) -> dict[str, str]:
    """The data files (config field -> path) whose users' histories the table is fitted on: the
    SFT training users (the held-out validation users among them), data.valid's and data.eval's,
    as the baselines fit BPR-MF. Not dmpo_train: a DMPO cell sharing an SFT stage may read
    another file of the same users (the authors' dpo_ranking_k)."""
    names = ("sft_train", "valid", "eval")
    return {n: getattr(data, n) for n in names if getattr(data, n) is not None}


def fit_for_run(cfg: Any, seed: int, say: Callable[[str], None] = print) -> ItemTable:
    """The table of a run (`cfg`, a RunConfig), fitted on the histories of `fitted_files`'
    records (the held-out validation users' too), each user once; says how many titles of those
    files get no token."""
    from dmporec.data import load_records

    records = [
        r
        for path in fitted_files(cfg.data).values()
        for r in load_records(path, cfg.data.title_normalization)
    ]
    table = fit_table(records, seed=seed)
    say(
        f"item tokens: BPR-MF factors of {len(table.titles)} titles (the histories of "
        f"{', '.join(fitted_files(cfg.data))}); {table.missing(records)} titles of those files "
        "are in no history and get no token"
    )
    return table


def check_trained(settings: dict[str, Any] | None, wanted: str, what: str) -> bool:
    """Whether a stage recorded with `settings` (its settings.json) has item tokens; ConfigError,
    one line naming `what` (the stage), when the config's model.item_tokens (`wanted`) differs."""
    from dmporec.config import ConfigError

    trained = (settings or {}).get("model.item_tokens", "none")
    if trained != wanted:
        raise ConfigError(
            f"{what} was trained with model.item_tokens={trained}, the config says {wanted}; "
            "use the same, or train that stage again"
        )
    return trained != "none"


# ---------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class _Vocab:
    """What a tokenizer's item tokens are: the table, and the id of `<item_0>`."""

    table: ItemTable
    threshold: int


def add_tokens(tokenizer: Any, table: ItemTable) -> int:
    """Add `<item_0>` ... as atomic tokens and remember `table` on the tokenizer (what `tagger`
    and `attach` read); returns the first item token's id, the tokenizer's length before."""
    from tokenizers import AddedToken

    if has_item_tokens(tokenizer):
        raise ValueError("this tokenizer has item tokens already")
    threshold, n = len(tokenizer), len(table.titles)
    added = tokenizer.add_tokens(
        [AddedToken(TOKEN.format(i), normalized=False, special=False) for i in range(n)]
    )
    ids = tokenizer.convert_tokens_to_ids([TOKEN.format(0), TOKEN.format(n - 1)])
    if added != n or ids != [threshold, threshold + n - 1]:
        raise ValueError(
            f"model.item_tokens: the tokenizer has tokens named like {TOKEN.format('N')} already"
        )
    setattr(tokenizer, _TOKENIZER_ATTR, _Vocab(table, threshold))
    return threshold


def _vocab(tokenizer: Any) -> _Vocab | None:
    return getattr(tokenizer, _TOKENIZER_ATTR, None)


def has_item_tokens(tokenizer: Any) -> bool:
    return _vocab(tokenizer) is not None


def say_missing(
    tokenizer: Any, records: Sequence[Record], what: str, say: Callable[[str], None]
) -> None:
    """Say (once, for `what`) how many titles of `records` get no item token, if any do."""
    vocab = _vocab(tokenizer)
    if vocab is not None and (missing := vocab.table.missing(records)):
        say(f"{what}: {missing} titles are in no history the item tokens were fitted on: no token")


def tagger(tokenizer: Any) -> Callable[[str], str]:
    """How prompts built for `tokenizer` write a title: with its item token when the tokenizer
    has them (`add_tokens`), else prompts.title_tag."""
    vocab = _vocab(tokenizer)
    return title_tag if vocab is None else vocab.table.tag


# ---------------------------------------------------------------- embedding


class ItemTokenEmbedding(torch.nn.Module):
    """The model's input embedding with item tokens: ids below `threshold` go to `base`, ids at
    or above it are proj(factors[id - threshold]).

    proj is two plain parameters (not a torch Linear, so LoRA's all-linear never adapts it),
    kept in float32; its output is cast to the embedding's dtype. It starts as a seeded Gaussian
    scaled so that proj(f) has, on average over the items, the mean norm of the base embedding's
    output (a sample of its rows), and a zero bias."""

    def __init__(
        self, base: torch.nn.Module, table: ItemTable, threshold: int, seed: int = 0
    ) -> None:
        super().__init__()
        self.base, self.table, self.threshold = base, table, threshold
        device = base.weight.device
        self.register_buffer("factors", table.factors.to(device, torch.float32), persistent=False)
        hidden, dim = base.weight.shape[1], table.factors.shape[1]
        gen = torch.Generator().manual_seed(seed)
        weight = torch.randn(hidden, dim, generator=gen)
        with torch.no_grad():
            sample = torch.linspace(0, threshold - 1, min(threshold, 4096)).long().to(device)
            target = base(sample).float().norm(dim=-1).mean().item()
        factor_rms = table.factors.float().pow(2).sum(-1).mean().sqrt().item()
        weight *= target / (math.sqrt(hidden) * max(factor_rms, 1e-12))
        self.proj_weight = torch.nn.Parameter(weight.to(device))
        self.proj_bias = torch.nn.Parameter(torch.zeros(hidden, device=device))

    @property
    def weight(self) -> torch.Tensor:
        """The base embedding's weight (the output head stays tied to it)."""
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_item = ids >= self.threshold
        out = self.base(ids.masked_fill(is_item, 0))
        if not bool(is_item.any()):
            return out
        items = F.linear(
            self.factors[ids[is_item] - self.threshold], self.proj_weight, self.proj_bias
        )
        return out.index_put((is_item,), items.to(out.dtype))

    def proj_state(self) -> dict[str, torch.Tensor]:
        return {"proj.weight": self.proj_weight, "proj.bias": self.proj_bias}

    def load_proj(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.proj_weight.copy_(state["proj.weight"])
            self.proj_bias.copy_(state["proj.bias"])


def find(model: torch.nn.Module) -> ItemTokenEmbedding | None:
    """The model's item-token embedding, if it has one (under PEFT's and Accelerate's wrappers)."""
    embedding = causal_lm(model).get_input_embeddings()
    return embedding if isinstance(embedding, ItemTokenEmbedding) else None


def attach(
    model: torch.nn.Module,
    tokenizer: Any,
    proj: dict[str, torch.Tensor] | None = None,
    *,
    trainable: bool = True,
    seed: int = 0,
) -> ItemTokenEmbedding:
    """Wrap `model`'s input embedding to read the item tokens `tokenizer` has (`add_tokens`).
    Call it after any LoRA is added (PEFT freezes what the model has when it wraps it).
    `proj`: trained weights (`load_stage`), else the seeded start; `trainable`: whether proj
    trains with the adapter."""
    vocab = _vocab(tokenizer)
    if vocab is None:
        raise ValueError("the tokenizer has no item tokens (item_tokens.add_tokens)")
    lm = causal_lm(model)
    if isinstance(lm.get_input_embeddings(), ItemTokenEmbedding):
        raise ValueError("the model has item tokens already")
    module = ItemTokenEmbedding(lm.get_input_embeddings(), vocab.table, vocab.threshold, seed)
    if proj is not None:
        module.load_proj(proj)
    for p in (module.proj_weight, module.proj_bias):
        p.requires_grad_(trainable)
    lm.set_input_embeddings(module)
    return module


# ---------------------------------------------------------------- files


def save_stage(model: torch.nn.Module, directory: Path) -> None:
    """Write the model's table, F and proj to `directory` (FILES; each written whole, the
    .json last, naming the .safetensors' sha256)."""
    module = find(model)
    if module is None:
        raise ValueError("the model has no item tokens to save")
    tensors = {"factors": module.table.factors.contiguous()}
    tensors |= {k: v.detach().float().cpu().contiguous() for k, v in module.proj_state().items()}
    data = save(tensors)
    atomic_write_bytes(directory / FILES[0], data)
    info = {
        "format": FORMAT,
        "source": "bpr",
        "safetensors_sha256": hashlib.sha256(data).hexdigest(),
        "titles": list(module.table.titles),
    }
    atomic_write_text(directory / FILES[1], json.dumps(info, ensure_ascii=False) + "\n")


def load_stage(directory: Path) -> tuple[ItemTable, dict[str, torch.Tensor]]:
    """(table, trained proj) a stage saved; ValueError, one line naming the file, when they are
    missing, damaged or of another format."""
    from dmporec.config import ConfigError

    tensors_path, info_path = (Path(directory) / name for name in FILES)
    try:
        info = json.loads(info_path.read_text())
        data = tensors_path.read_bytes()
        if info.get("format") != FORMAT:
            raise ValueError(f"format {info.get('format')!r}, this dmporec reads {FORMAT}")
        if hashlib.sha256(data).hexdigest() != info.get("safetensors_sha256"):
            raise ValueError(f"{tensors_path.name} is not the file it names")
        tensors = load(data)
        table = ItemTable(tuple(info["titles"]), tensors["factors"])
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"{info_path}: the item tokens of a model.item_tokens=bpr stage are missing or "
            f"damaged ({e}); train the stage again"
        ) from None
    return table, {k: tensors[k] for k in ("proj.weight", "proj.bias")}


def restore(model: torch.nn.Module, tokenizer: Any, stage_dir: Path) -> ItemTokenEmbedding:
    """Put a finished stage's item tokens back on its loaded (merged) model and tokenizer."""
    table, proj = load_stage(stage_dir)
    add_tokens(tokenizer, table)
    module = attach(model, tokenizer, proj, trainable=False)
    module.eval()
    return module
