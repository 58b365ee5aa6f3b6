"""Build the paper's few-shot datasets from raw ratings: the rules, the splits and the output files.

Rules (defaults are the paper's; each is a `BuildConfig` field):
1. Interactions whose item has no title are dropped (counted). A user who rated the same item more
   than once keeps the latest rating.
2. A rating above `positive_above` (3) is positive, otherwise negative. Users are kept with at least
   `min_positives` (5) positives, `min_negatives` (5) negatives and at most `max_interactions` (40)
   interactions.
3. In time order, the target positive is the user's latest positive and the `negatives` (5) targets
   are the latest negatives (most recent first) whose titles differ from the positive's and from
   each other. The history is every other interaction, in time order, minus any item sharing a
   target's title, so no target ever appears in its user's history. A user left without enough
   distinct negatives or with an empty history is dropped (counted).
4. The kept users, sorted by id and shuffled with `seed`, are split into train / valid / test.
5. Each user also gets `list_negatives` (19) titles sampled uniformly from the catalog (every titled
   item in the data), none of which the user rated, for listwise metrics (HR@k, NDCG@k): the
   positive plus these is a sampled-candidate ranking, not a full-catalog one.
The listing order of each candidate pair is a seeded coin stored in the record, so the records and
the alpaca files agree and the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import os
import random
from array import array
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from dmporec.alpaca import write_alpaca
from dmporec.listwise import sample_unrated
from dmporec.raw import SOURCES, LineErrors, readers
from dmporec.records import (
    DOMAINS,
    DataError,
    Item,
    Record,
    TitleNormalization,
    atomic_write_text,
    normalize_title,
    write_records,
)

SPLITS = ("train", "valid", "test")


class BuildConfig(BaseModel):
    """How raw ratings become few-shot records. Defaults follow the paper."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["amazon2014", "amazon2018", "amazon2023", "movielens", "csv"] = Field(
        description="Raw format: " + ", ".join(SOURCES) + "."
    )
    domain: Literal["movies", "games", "books"] = Field(
        "movies", description="Prompt wording: " + ", ".join(DOMAINS) + "."
    )
    name: str = Field("rec", description="Prefix of the alpaca files: NAME_sft_ranking.json, ...")
    positive_above: float = Field(3.0, description="A rating above this is positive.")
    min_positives: int = Field(5, ge=1, description="Keep users with at least this many positives.")
    min_negatives: int = Field(5, ge=1, description="Keep users with at least this many negatives.")
    max_interactions: int = Field(
        40, ge=2, description="Keep users with at most this many interactions."
    )
    negatives: int = Field(5, ge=1, description="Negative targets per user (DMPO's largest k).")
    list_negatives: int = Field(
        19, ge=1, description="Sampled negatives per listwise candidate set."
    )
    train_users: int = Field(100, ge=1, description="Users for SFT and DMPO training.")
    valid_users: int = Field(100, ge=0, description="Users for validation (settings sweeps).")
    test_users: int = Field(1000, ge=1, description="Users for the test pairs.")
    seed: int = Field(0, description="Seeds the split, the listing order and the sampled lists.")
    title_normalization: TitleNormalization = Field(default_factory=TitleNormalization)
    max_bad_fraction: float = Field(
        0.05, ge=0, le=1, description="Fail when a larger share of a file's lines is unusable."
    )

    @model_validator(mode="after")
    def _targets_fit(self) -> BuildConfig:
        if self.negatives > self.min_negatives:
            raise ValueError(
                f"negatives ({self.negatives}) must not exceed min_negatives ({self.min_negatives})"
            )
        if self.min_positives + self.min_negatives > self.max_interactions:
            raise ValueError("min_positives + min_negatives exceeds max_interactions")
        return self


@dataclass
class Columns:
    """Interactions as compact columns (ids index `users` / `items`), in file order."""

    users: list[str]
    titles: list[str]  # of each item id, as read
    user: np.ndarray  # int32 [n]
    item: np.ndarray  # int32 [n]
    rating: np.ndarray  # float32 [n]
    time: np.ndarray  # int64 [n]


def collect(
    interactions: Any, titles: dict[str, str], stats: dict[str, int]
) -> tuple[Columns, dict[str, int]]:
    """Stream interactions into columns, dropping (and counting) those whose item has no title."""
    user_ids: dict[str, int] = {}
    item_ids: dict[str, int] = {}
    u, it, r, t = array("i"), array("i"), array("f"), array("q")
    untitled: set[str] = set()
    for user, item, rating, time in interactions:
        stats["read"] += 1
        if item not in titles:
            stats["dropped_no_title"] += 1
            untitled.add(item)
            continue
        u.append(user_ids.setdefault(user, len(user_ids)))
        it.append(item_ids.setdefault(item, len(item_ids)))
        r.append(rating)
        t.append(time)
    cols = Columns(
        users=list(user_ids),
        titles=[titles[item] for item in item_ids],
        user=np.frombuffer(u, dtype=np.int32),
        item=np.frombuffer(it, dtype=np.int32),
        rating=np.frombuffer(r, dtype=np.float32),
        time=np.frombuffer(t, dtype=np.int64),
    )
    return cols, {"items_without_title": len(untitled)}


def latest_per_item(cols: Columns) -> np.ndarray:
    """Row indices keeping each (user, item)'s latest rating, sorted by user, time, file order.

    np.lexsort is stable, so equal timestamps keep file order and 'latest' means the later line.
    """
    order = np.lexsort((cols.time, cols.item, cols.user))
    u, i = cols.user[order], cols.item[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    keep = np.sort(order[last])  # back to file order, so ties below break by line
    return keep[np.lexsort((cols.time[keep], cols.user[keep]))]


def _coin(seed: int, user: str, i: int) -> bool:
    return random.Random(f"{seed}:order:{user}:{i}").random() < 0.5


def user_record(
    user: str,
    rows: list[tuple[str, float, int]],
    cfg: BuildConfig,
    catalog: list[str],
) -> Record | None:
    """The record of one kept user from (title, rating, time) in time order; None if rule 3 fails."""
    positive = next(
        (i for i in range(len(rows) - 1, -1, -1) if rows[i][1] > cfg.positive_above), None
    )
    if positive is None:
        return None
    pos_title = rows[positive][0]
    taken = {pos_title}
    negatives: list[int] = []
    for i in range(len(rows) - 1, -1, -1):
        if len(negatives) == cfg.negatives:
            break
        title, rating, _ = rows[i]
        if rating <= cfg.positive_above and title not in taken:
            taken.add(title)
            negatives.append(i)
    if len(negatives) < cfg.negatives:
        return None
    history = [Item(title) for title, _, _ in rows if title not in taken]
    if not history:
        return None
    rated = {title for title, _, _ in rows}
    return Record(
        user_id=user,
        history=history,
        positive=Item(pos_title),
        negatives=[Item(rows[i][0]) for i in negatives],
        domain=cfg.domain,
        positive_first=[_coin(cfg.seed, user, i) for i in range(len(negatives))],
        metadata={
            "list_negatives": sample_unrated(
                catalog, rated, cfg.list_negatives, random.Random(f"{cfg.seed}:list:{user}")
            ),
        },
    )


def build_records(
    cols: Columns, cfg: BuildConfig, progress: bool = True
) -> tuple[dict[str, list[Record]], dict[str, Any]]:
    """Apply rules 1-5 to collected interactions: records per split and the counts of each rule."""
    rows = latest_per_item(cols)
    n_users = len(cols.users)
    user, rating = cols.user[rows], cols.rating[rows]
    positive = rating > cfg.positive_above
    n_pos = np.bincount(user, weights=positive, minlength=n_users).astype(np.int64)
    n_all = np.bincount(user, minlength=n_users)
    n_neg = n_all - n_pos
    few_pos = n_pos < cfg.min_positives
    few_neg = ~few_pos & (n_neg < cfg.min_negatives)
    too_many = ~few_pos & ~few_neg & (n_all > cfg.max_interactions)
    keep = ~(few_pos | few_neg | too_many)

    titles = [normalize_title(t, cfg.title_normalization) for t in cols.titles]
    catalog = sorted(set(titles))
    starts = np.searchsorted(user, np.arange(n_users + 1))
    records: list[Record] = []
    collisions = 0
    kept_ids = np.flatnonzero(keep)
    for uid in tqdm(kept_ids, desc="users", unit="user", disable=not progress, leave=False):
        span = rows[starts[uid] : starts[uid + 1]]
        user_rows = [
            (titles[i], float(r), int(t))
            for i, r, t in zip(cols.item[span], cols.rating[span], cols.time[span], strict=True)
        ]
        record = user_record(cols.users[uid], user_rows, cfg, catalog)
        if record is None:
            collisions += 1
        else:
            records.append(record)

    need = cfg.train_users + cfg.valid_users + 1
    if len(records) < need:
        raise DataError(
            f"only {len(records)} users pass the rules; train_users + valid_users + 1 test user "
            f"need {need}; relax the rules or lower the split sizes"
        )
    records.sort(key=lambda rec: rec.user_id)
    random.Random(cfg.seed).shuffle(records)
    a, b = cfg.train_users, cfg.train_users + cfg.valid_users
    splits = {"train": records[:a], "valid": records[a:b], "test": records[b : b + cfg.test_users]}
    counts = {
        "interactions_after_duplicates": len(rows),
        "duplicates_collapsed": len(cols.user) - len(rows),
        "users_seen": n_users,
        "users_dropped_few_positives": int(few_pos.sum()),
        "users_dropped_few_negatives": int(few_neg.sum()),
        "users_dropped_too_many_interactions": int(too_many.sum()),
        "users_dropped_title_collisions": collisions,
        "users_kept": len(records),
        "users_unused": max(0, len(records) - b - cfg.test_users),
        "catalog_titles": len(catalog),
        **{f"{s}_users": len(v) for s, v in splits.items()},
    }
    if len(splits["test"]) < cfg.test_users:
        counts["warning"] = (
            f"only {len(splits['test'])} test users instead of {cfg.test_users}: too few users pass"
        )
    return splits, counts


def _first_k(records: list[Record], k: int) -> list[Record]:
    return [
        replace(r, negatives=r.negatives[:k], positive_first=(r.positive_first or [])[:k] or None)
        for r in records
    ]


def write_outputs(
    out: Path, splits: dict[str, list[Record]], cfg: BuildConfig, stats: dict[str, Any]
) -> list[str]:
    """Records (JSONL), the authors' alpaca layout, LLaMA-Factory's dataset_info.json, stats.json."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, records in splits.items():
        write_records(out / f"{split}.jsonl", records)
        written.append(f"{split}.jsonl")
    alpaca = [("sft_ranking", "train", 1, "sft")]
    alpaca += [(f"dpo_ranking_{k}", "train", k, "dpo") for k in range(1, cfg.negatives + 1)]
    alpaca += [("valid_ranking", "valid", 1, "eval"), ("eval_ranking", "test", 1, "eval")]
    info = {}
    for suffix, split, k, kind in alpaca:
        if not splits[split]:
            continue
        file_name = f"{cfg.name}_{suffix}.json"
        write_alpaca(out / file_name, _first_k(splits[split], k), kind)
        written.append(file_name)
        entry: dict[str, Any] = {"file_name": file_name}
        if kind != "sft":
            entry["ranking"] = True  # output = [chosen, rejected], as the authors' fork reads it
        entry["columns"] = {"prompt": "instruction", "query": "input", "response": "output"}
        info[f"{cfg.name}_{suffix}"] = entry
    atomic_write_text(out / "dataset_info.json", json.dumps(info, indent=2) + "\n")
    written.append("dataset_info.json")
    stats = {**stats, "outputs": sorted(written + ["stats.json"])}
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return stats["outputs"]


def prepare(
    cfg: BuildConfig,
    reviews: str | os.PathLike,
    meta: str | os.PathLike,
    out: str | os.PathLike,
    progress: bool = True,
) -> dict[str, Any]:
    """Read the raw files, apply the rules, write every output; returns the stats written."""
    read_ratings, read_titles = readers(cfg.source)
    meta_errors = LineErrors(str(meta))
    titles = read_titles(meta, meta_errors)
    meta_errors.check(cfg.max_bad_fraction)
    if not titles:
        raise DataError("no item has a title", file=meta)
    review_errors = LineErrors(str(reviews))
    counts = {"read": 0, "dropped_no_title": 0}
    cols, items = collect(read_ratings(reviews, review_errors), titles, counts)
    review_errors.check(cfg.max_bad_fraction)
    if not len(cols.user):
        raise DataError(
            f"none of the {counts['read']} interactions has an item with a title in {meta}",
            file=reviews,
        )
    splits, rules = build_records(cols, cfg, progress)
    stats = {
        "config": cfg.model_dump(mode="json"),
        "files": {"reviews": review_errors.summary(), "meta": meta_errors.summary()},
        "items_with_title": len(titles),
        "interactions_read": counts["read"],
        "interactions_dropped_no_title": counts["dropped_no_title"],
        **items,
        **rules,
    }
    write_outputs(Path(out), splits, cfg, stats)
    return json.loads((Path(out) / "stats.json").read_text())
