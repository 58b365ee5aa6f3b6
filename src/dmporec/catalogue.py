"""The catalogue a run recommends from (the items of its training data, with interaction counts),
its file, and the classic retriever that draws a history's candidates from it.

A catalogue item is a title as the model reads it (cleaned as the run's data.title_normalization
cleans its data), the source's item id when its records have one, and its count: how many
distinct training users have it in their history or as their positive (a user of both training
files, as the authors' SFT and DPO files share users, counts once). Items seen only as negatives
are in the catalogue with a count of 0. Items are listed most counted first, ties in the order the
data first names them; that order also breaks the retriever's ties.

File (JSON lines, RUN/catalogue.jsonl, written atomically on first use, and beside an export):

    {"title": "Heat (1995)", "item_id": "6", "count": 412}

"title" is required, "item_id" (string or integer) and "count" (integer >= 0) are optional; any
other key, a blank title or two lines with the same title (after cleaning) is refused naming the
file, line and field.

Retrieval: a classic scorer of dmporec.baselines, fitted on the run's training records'
histories, scores every catalogue item for the history (folded in as the baselines fold in a user
they were not fitted on, or the learned vector of a training user given by id); the history's own
items are left out and the top M go on. A run's fitted BPR-MF and ALS are kept in RUN/retrievers/
(dmporec.retriever_cache) and read back while the records and settings are the same.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dmporec.baselines import (
    ALS,
    BPRMF,
    EmbeddingSimilarity,
    LikeRate,
    Popularity,
    Scorer,
    minilm_encoder,
)
from dmporec.config import ConfigError, RunConfig
from dmporec.files import atomic_write_text
from dmporec.records import (
    DataError,
    Item,
    Record,
    TitleNormalization,
    normalize_title,
    read_text_file,
)
from dmporec.retriever_cache import CACHED, cached_fit

CATALOGUE = "catalogue.jsonl"
# Retrievers, the default first: BPR-MF beat popularity on real MovieLens-1M users (pairwise
# accuracy 0.634 vs 0.602, docs/results.md), and needs no extra library.
RETRIEVERS = ("bpr-mf", "popularity", "als", "embedding")
DEFAULT_RETRIEVER = RETRIEVERS[0]
# The user id a history typed in is scored under: no data file has it (ids are non-empty).
QUERY_USER = ""


@dataclass(frozen=True)
class CatalogueItem:
    title: str  # as the model reads it
    item_id: str | None = None
    count: int = 0  # distinct training users with it in their history or as their positive


@dataclass(frozen=True)
class Catalogue:
    """Items in file order (most counted first), titles distinct; `source` says where from."""

    items: tuple[CatalogueItem, ...]
    source: str
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {item.title: i for i, item in enumerate(self.items)}
        if len(index) != len(self.items):
            raise ValueError(f"{self.source}: duplicate titles")
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def titles(self) -> list[str]:
        return [item.title for item in self.items]

    def index(self, title: str) -> int | None:
        return self._index.get(title)


def _user_key(record: Record) -> tuple[tuple[str, ...], str]:
    # The authors' SFT and DPO files share users, not user ids (as data.held_out_keys reads them).
    return tuple(item.title for item in record.history), record.positive.title


def distinct_users(records: Iterable[Record]) -> list[Record]:
    """`records` without a second record of the same user (same history and positive)."""
    seen: dict[tuple[tuple[str, ...], str], Record] = {}
    for record in records:
        seen.setdefault(_user_key(record), record)
    return list(seen.values())


def catalogue_from_records(records: Iterable[Record], source: str) -> Catalogue:
    """The catalogue of `records` (titles as they are: records come cleaned): every history item,
    positive and negative, counted as the module docstring says; the first item id seen wins."""
    ids: dict[str, str | None] = {}
    counts: Counter[str] = Counter()
    for record in distinct_users(records):
        for item in [*record.history, record.positive, *record.negatives]:
            if ids.get(item.title) is None:
                ids[item.title] = item.item_id
        counts.update({item.title for item in [*record.history, record.positive]})
    order = sorted(ids, key=lambda t: -counts[t])  # stable: first named first among ties
    return Catalogue(tuple(CatalogueItem(t, ids[t], counts[t]) for t in order), source)


def catalogue_text(catalogue: Catalogue) -> str:
    lines = []
    for item in catalogue.items:
        obj: dict[str, Any] = {"title": item.title}
        if item.item_id is not None:
            obj["item_id"] = item.item_id
        obj["count"] = item.count
        lines.append(json.dumps(obj, ensure_ascii=False))
    return "".join(f"{line}\n" for line in lines)


def write_catalogue(path: str | os.PathLike, catalogue: Catalogue) -> None:
    atomic_write_text(path, catalogue_text(catalogue))


_KEYS = ("title", "item_id", "count")


def read_catalogue(path: str | os.PathLike, norm: TitleNormalization) -> Catalogue:
    """A catalogue file (see the module docstring), titles cleaned by `norm`; DataError naming the
    file, line and field of the first thing wrong."""
    path = Path(path)
    items: list[CatalogueItem] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(read_text_file(path).split("\n"), 1):
        if not line.strip():
            continue
        where: dict[str, Any] = {"file": path, "record": f"on line {lineno}"}
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", **where) from None
        if not isinstance(obj, dict):
            raise DataError(
                f'expected an object like {{"title": ...}}, got {type(obj).__name__}', **where
            )
        for key in obj:
            if key not in _KEYS:
                raise DataError(f"unknown key (allowed: {', '.join(_KEYS)})", **where, field=key)
        if "title" not in obj:
            raise DataError("missing", **where, field="title")
        title = obj["title"]
        if not isinstance(title, str) or not title.strip():
            raise DataError(f"expected a non-empty string, got {title!r}", **where, field="title")
        title = normalize_title(title, norm)
        if title in first_line:
            raise DataError(
                f"duplicate title {title!r} (also on line {first_line[title]}, after title "
                "cleaning); list each item once",
                **where,
                field="title",
            )
        item_id = obj.get("item_id")
        if item_id is not None and (
            isinstance(item_id, bool) or not isinstance(item_id, str | int)
        ):
            raise DataError(
                f"expected a string or integer, got {item_id!r}", **where, field="item_id"
            )
        count = obj.get("count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise DataError(f"expected an integer >= 0, got {count!r}", **where, field="count")
        first_line[title] = lineno
        items.append(CatalogueItem(title, None if item_id is None else str(item_id), count))
    if not items:
        raise DataError("no items; a catalogue file has one JSON object per line", file=path)
    return Catalogue(tuple(items), str(path))


def training_records(cfg: RunConfig) -> list[Record]:
    """The run's training records (data.sft_train and data.dmpo_train, held-out validation users
    left out, one record per user), titles cleaned as the run cleans them."""
    from dmporec.data import stage_records

    files = [name for name in ("sft_train", "dmpo_train") if getattr(cfg.data, name)]
    if not files:
        raise ConfigError("the run's config names no training data (data.sft_train, dmpo_train)")
    paths = {getattr(cfg.data, name): name for name in files}  # one read of a shared file
    return distinct_users(r for name in paths.values() for r in stage_records(cfg.data, name))


def run_catalogue(
    run_dir: Path,
    records: Sequence[Record],
    norm: TitleNormalization,
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
) -> Catalogue:
    """RUN_DIR/catalogue.jsonl; when absent, built from `records` (the run's training records)
    and written (atomically), or kept in memory, said, where the directory cannot be written."""
    path = run_dir / CATALOGUE
    if path.is_file():
        return read_catalogue(path, norm)
    catalogue = catalogue_from_records(records, str(path))
    try:
        write_catalogue(path, catalogue)
    except OSError as e:
        say(f"catalogue: not saved ({e}); built from the run's training data for this run only")
        return Catalogue(catalogue.items, "the run's training data")
    say(f"catalogue: wrote {path} ({len(catalogue):,} titles from the run's training data)")
    return catalogue


# ---------------------------------------------------------------- retrieval


def query_record(history: Sequence[str], user_id: str | None = None) -> Record:
    """The record a scorer reads for a history (scorers read only the history and user id)."""
    return Record(
        QUERY_USER if user_id is None else user_id, [Item(t) for t in history], Item(""), []
    )


def fit_scorer(
    name: str,
    records: Sequence[Record],
    catalogue: Catalogue,
    seed: int = 0,
    embedding: Callable[[], Callable[[list[str]], np.ndarray]] = minilm_encoder,
    *,
    cache: Path | None = None,
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
    labelled: Sequence[Record] = (),
) -> Scorer:
    """The classic scorer `name` (RETRIEVERS) fitted on `records`' histories. Popularity with no
    records counts the catalogue's counts; BPR-MF and ALS need records (ConfigError otherwise),
    ALS the implicit library and embedding MiniLM (ConfigError saying how to install them).
    `cache`: a directory (RUN/retrievers) where BPR-MF and ALS fits are kept and read back
    (dmporec.retriever_cache), what it does said by `say`; None fits every call. "like-rate",
    a hybrid component rather than a retriever (it ranks what was liked once rated, not what
    will be watched), is fitted on `labelled`, the training users' records with their labels
    (data.training_labels)."""
    if name == LikeRate.name:
        if not labelled:
            raise ConfigError(
                "like-rate is fitted on a run's labelled training records and none are at hand"
            )
        return LikeRate.fit(labelled)
    if name == "popularity":
        if records:
            return Popularity.fit(records)
        return Popularity(Counter({item.title: item.count for item in catalogue.items}))
    if name in ("bpr-mf", "als") and not records:
        raise ConfigError(
            f"retriever {name} is fitted on a run's training records and none are at hand "
            "(an exported model or a model name); use --retriever popularity or embedding, "
            "or --model RUN_DIR"
        )
    try:
        if name in CACHED and cache is not None:
            return cached_fit(name, records, cache, seed=seed, say=say)
        if name == "bpr-mf":
            return BPRMF.fit(records, seed=seed)
        if name == "als":
            return ALS.fit(records, seed=seed)
        if name == "embedding":
            return EmbeddingSimilarity(embedding())
    except ImportError as e:
        raise ConfigError(f"retriever {name}: {e}") from None
    raise ConfigError(f"unknown retriever {name!r}; choose from {', '.join(RETRIEVERS)}")


@dataclass(frozen=True)
class Retrieved:
    """Catalogue indices of the top candidates, best first, with the retriever's scores."""

    indices: list[int]
    scores: list[float]


def retrieve(
    scorer: Scorer,
    catalogue: Catalogue,
    history: Sequence[str],
    m: int,
    user_id: str | None = None,
    among: Iterable[int] | None = None,
) -> Retrieved:
    """The `m` catalogue items `scorer` ranks highest for `history`, its own items left out;
    ties keep the catalogue's order (most counted first). `among`: the catalogue indices to
    draw from instead of the whole catalogue (an evaluation's candidate set)."""
    pool = list(range(len(catalogue))) if among is None else sorted(set(among))
    titles = [catalogue.items[i].title for i in pool]
    scores = np.asarray(scorer.score(query_record(history, user_id), titles), float)
    seen = {i for t in history if (i := catalogue.index(t)) is not None}
    order = [int(j) for j in np.argsort(-scores, kind="stable") if pool[j] not in seen][:m]
    return Retrieved([pool[j] for j in order], [float(scores[j]) for j in order])
