"""Build the paper's few-shot datasets from raw ratings: the rules and the splits (files: build_io).

Two rule sets (`BuildConfig.rules`); both share steps 1, 2, 5 and 6:

1. Interactions whose item has no title are dropped (counted; over `max_untitled_fraction` of
   them the build stops: the titles file is cut short or the wrong one). Each user's ratings are
   put in order (`window_order`: the ratings file's own order, the default for `movielens` with
   the authors' rules, or time with ties in file order, the default for every other source and
   MovieLens-100K's u.data); a user who rated the same item more than once keeps the last rating
   in that order.
2. A rating above `positive_above` (3) is positive, otherwise negative. Each user's **window** is
   their last `window` (40) ratings in that order; users qualify with at least `min_positives` (5)
   positives and `min_negatives` (5) negatives inside it. Ratings outside the window are not used.
3. `authors` (the default; what the authors' released files show, measured on real MovieLens-1M
   ratings: it reproduces 929 of their 1000 test records exactly): the target positive is the
   window's **first** positive, the `negatives` (5) targets its **first** negatives, and the
   history the window's **other positives** in order. Negatives never enter a history.
4. `temporal` (leakage-free; always time order): the target positive is the window's **last**
   positive, the negative targets its **last** negatives (most recent first), and the history the
   window's positives rated strictly **before** the earliest target, so nothing in a prompt
   happened after what it asks about.
   In both, negative targets whose titles repeat the positive's or each other's are passed over;
   a user left without enough distinct negatives or with an empty history is dropped (counted).
5. The split (`split`): `id` (the authors': users in id order, numeric when every id is a
   number; train = the first `train_users`, test = the next `test_users`, validation = the next
   `valid_users`, so the test users stay the authors' whatever validation is asked for) or
   `shuffle` (sorted by id, shuffled with `seed`: train, valid, test). Qualifying users in no split
   are written to `rest.jsonl` in split order (more training users for a learning curve).
6. Each user also gets `list_negatives` (19) titles sampled uniformly from the catalog (every titled
   item in the data), none of which the user rated, for listwise metrics (HR@k, NDCG@k): the
   positive plus these is a sampled-candidate ranking, not a full-catalog one.
The listing order of each candidate pair is a seeded coin stored in the record, so the records and
the alpaca files agree and the same seed gives the same bytes. Titles are cleaned the same way in
every split (the authors' MovieLens-1M training files cut titles at the first comma and drop the
year while their test file keeps both; our builds do not).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from dmporec.build_io import UNTITLED_WARNING as UNTITLED_WARNING  # re-exported, as before
from dmporec.build_io import (
    Columns,
    build_settings,
    check_contiguous,
    check_not_item_sorted,
    check_out,
    check_untitled,
    collect,
    previous_outputs,
    write_build,
)
from dmporec.listwise import sample_unrated
from dmporec.raw import SOURCES, LineErrors, readers
from dmporec.records import (
    DataError,
    Item,
    Record,
    TitleNormalization,
    normalize_title,
)
from dmporec.wording import Wording, resolve_wording

SPLITS = ("train", "valid", "test")
# The source whose ratings file the authors' window follows in file order: MovieLens-1M's
# ratings.dat lists each user's ratings together. A CSV defaults to time order: MovieLens-20M/25M's
# ratings.csv, for one, lists each user's ratings by movie id.
_FILE_ORDERED = ("movielens",)


class BuildConfig(BaseModel):
    """How raw ratings become few-shot records. Defaults reproduce the authors' files."""

    model_config = ConfigDict(extra="forbid")
    source: Literal[
        "amazon2014", "amazon2018", "amazon2023", "movielens", "movielens100k", "csv"
    ] = Field(description="Raw format: " + ", ".join(SOURCES) + ".")
    rules: Literal["authors", "temporal"] = Field(
        "authors",
        description="authors: first positive and negatives of the window, the other positives "
        "as history (the authors' files); temporal: last ones, history strictly before them.",
    )
    split: Literal["id", "shuffle"] | None = Field(
        None,
        description="id: train, test, valid in user-id order (the authors'); shuffle: seeded. "
        "Default: id for authors, shuffle for temporal.",
    )
    window_order: Literal["file", "time"] | None = Field(
        None,
        description="Order of each user's ratings for the window and 'first': file (needs each "
        "user's lines together) or time. Default: file for movielens (MovieLens-1M's "
        "ratings.dat, as the authors built theirs) with the authors' rules, else time; temporal "
        "needs time.",
    )
    domain: str = Field(
        "movies",
        description="Prompt wording: movies, games (the authors' Video Games wording), books, or "
        "five comma-separated words role,history,past,gerund,candidates.",
    )
    name: str = Field("rec", description="Prefix of the alpaca files: NAME_sft_ranking.json, ...")
    positive_above: float = Field(3.0, description="A rating above this is positive.")
    rating_scale: str = Field(
        "1-5",
        pattern=r"^(any|\d+(\.\d+)?-\d+(\.\d+)?)$",
        description="LOW-HIGH: ratings outside count as unusable lines; 'any' accepts all.",
    )
    window: int = Field(40, ge=2, description="Each user's last N ratings are the window.")
    min_positives: int = Field(5, ge=1, description="Users need this many positives in the window.")
    min_negatives: int = Field(5, ge=1, description="Users need this many negatives in the window.")
    negatives: int = Field(5, ge=1, description="Negative targets per user (DMPO's largest k).")
    list_negatives: int = Field(
        19, ge=1, description="Sampled negatives per listwise candidate set."
    )
    train_users: int = Field(100, ge=1, description="Users for SFT and DMPO training.")
    valid_users: int = Field(100, ge=0, description="Users for validation (settings sweeps).")
    test_users: int = Field(1000, ge=1, description="Users for the test pairs.")
    seed: int = Field(0, description="Seeds the shuffle, the listing order and the sampled lists.")
    title_normalization: TitleNormalization = Field(default_factory=TitleNormalization)
    max_bad_fraction: float = Field(
        0.05, ge=0, le=1, description="Fail when a larger share of a file's lines is unusable."
    )
    max_untitled_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Fail when a larger share of the interactions rates items the titles file "
        "has no title for (a titles file cut short or from another release); raise it for "
        "metadata that really leaves items untitled.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> BuildConfig:
        if self.negatives > self.min_negatives:
            raise ValueError(
                f"negatives ({self.negatives}) must not exceed min_negatives ({self.min_negatives})"
            )
        if self.min_positives + self.min_negatives > self.window:
            raise ValueError(
                f"min_positives + min_negatives ({self.min_positives + self.min_negatives}) "
                f"exceeds the window ({self.window})"
            )
        scale = self.scale()
        if scale is not None and scale[0] >= scale[1]:
            raise ValueError(f"rating_scale {self.rating_scale!r}: LOW must be below HIGH")
        try:
            resolve_wording(self.domain)
        except ValueError as e:
            raise ValueError(f"domain: {e}") from None
        if self.split is None:
            self.split = "id" if self.rules == "authors" else "shuffle"
        if self.window_order is None:
            by_file = self.rules == "authors" and self.source in _FILE_ORDERED
            self.window_order = "file" if by_file else "time"
        if self.rules == "temporal" and self.window_order != "time":
            raise ValueError("the temporal rules order ratings by time (window_order=time)")
        return self

    def scale(self) -> tuple[float, float] | None:
        if self.rating_scale == "any":
            return None
        low, high = self.rating_scale.split("-")
        return float(low), float(high)


def ordered_rows(cols: Columns, order: str) -> np.ndarray:
    """Row indices grouped by user, each user's rows in `order` ('file', or 'time' with ties in
    file order), an item rated again keeping only its last rating in that order.

    np.lexsort is stable, so equal keys keep file order.
    """
    line = np.arange(len(cols.user))
    rows = np.lexsort((line, cols.time if order == "time" else line, cols.user))
    u, i = cols.user[rows], cols.item[rows]
    by_item = np.lexsort((np.arange(len(rows)), i, u))  # (user, item) groups, in order
    last = np.ones(len(rows), dtype=bool)
    last[:-1] = (u[by_item][1:] != u[by_item][:-1]) | (i[by_item][1:] != i[by_item][:-1])
    return rows[np.sort(by_item[last])]


def _coin(seed: int, user: str, i: int) -> bool:
    return random.Random(f"{seed}:order:{user}:{i}").random() < 0.5


def _distinct(indices: Any, titles: list[str], taken: set[str], k: int) -> list[int]:
    """The first k of `indices` whose titles are not taken yet (each taken as it is picked)."""
    picked: list[int] = []
    for i in indices:
        if len(picked) == k:
            break
        if titles[i] not in taken:
            taken.add(titles[i])
            picked.append(i)
    return picked


def select_targets(
    window: list[tuple[str, float, int]], cfg: BuildConfig
) -> tuple[int, list[int], list[int]] | str:
    """(positive, negatives, history) as indices into a user's window under `cfg.rules`, or the
    reason the user is dropped ('collisions' or 'empty history')."""
    titles = [title for title, _, _ in window]
    pos = [i for i, (_, r, _) in enumerate(window) if r > cfg.positive_above]
    neg = [i for i, (_, r, _) in enumerate(window) if r <= cfg.positive_above]
    if cfg.rules == "authors":
        positive, neg_order = pos[0], neg
    else:
        positive, neg_order = pos[-1], neg[::-1]
    taken = {titles[positive]}
    negatives = _distinct(neg_order, titles, taken, cfg.negatives)
    if len(negatives) < cfg.negatives:
        return "collisions"
    if cfg.rules == "authors":
        history = [i for i in pos if titles[i] not in taken]
    else:
        first = min(window[i][2] for i in [positive, *negatives])
        history = [i for i in pos if window[i][2] < first and titles[i] not in taken]
    return (positive, negatives, history) if history else "empty history"


def user_record(
    user: str,
    window: list[tuple[str, float, int]],
    rated: set[str],
    cfg: BuildConfig,
    catalog: list[str],
    wording: Wording,
) -> Record | str:
    """The record of one qualifying user from their window of (title, rating, time), or the
    reason they are dropped; `rated` (every title they rated) keeps listwise samples unseen."""
    picked = select_targets(window, cfg)
    if isinstance(picked, str):
        return picked
    positive, negatives, history = picked
    return Record(
        user_id=user,
        history=[Item(window[i][0]) for i in history],
        positive=Item(window[positive][0]),
        negatives=[Item(window[i][0]) for i in negatives],
        wording=wording,
        positive_first=[_coin(cfg.seed, user, i) for i in range(len(negatives))],
        metadata={
            "list_negatives": sample_unrated(
                catalog, rated, cfg.list_negatives, random.Random(f"{cfg.seed}:list:{user}")
            ),
        },
    )


def _id_key(users: list[str]) -> Any:
    """Sort key for user ids: numeric when every id is an integer, else the text."""
    if all(u.isdigit() for u in users):
        return int
    return str


def split_records(
    records: list[Record], cfg: BuildConfig
) -> tuple[dict[str, list[Record]], list[Record]]:
    """{train, valid, test} and the qualifying users left over, by `cfg.split`."""
    key = _id_key([r.user_id for r in records])
    records = sorted(records, key=lambda rec: key(rec.user_id))
    a = cfg.train_users
    if cfg.split == "id":
        b = a + cfg.test_users
        c = b + cfg.valid_users
        return {"train": records[:a], "valid": records[b:c], "test": records[a:b]}, records[c:]
    random.Random(cfg.seed).shuffle(records)
    b = a + cfg.valid_users
    c = b + cfg.test_users
    return {"train": records[:a], "valid": records[a:b], "test": records[b:c]}, records[c:]


def build_records(
    cols: Columns, cfg: BuildConfig, progress: bool = True
) -> tuple[dict[str, list[Record]], dict[str, Any]]:
    """Apply rules 1-6 to collected interactions: records per split (and 'rest') and the counts."""
    rows = ordered_rows(cols, cfg.window_order or "time")
    n_users = len(cols.users)
    user = cols.user[rows]
    starts = np.searchsorted(user, np.arange(n_users + 1))
    from_end = starts[user + 1] - 1 - np.arange(len(rows))
    in_window = from_end < cfg.window
    positive = cols.rating[rows] > cfg.positive_above
    n_pos = np.bincount(user, weights=in_window & positive, minlength=n_users).astype(np.int64)
    n_neg = np.bincount(user, weights=in_window & ~positive, minlength=n_users).astype(np.int64)
    few_pos = n_pos < cfg.min_positives
    few_neg = ~few_pos & (n_neg < cfg.min_negatives)
    keep = ~(few_pos | few_neg)

    titles = [normalize_title(t, cfg.title_normalization) for t in cols.titles]
    catalog = sorted(set(titles))
    records: list[Record] = []
    dropped = {"collisions": 0, "empty history": 0}
    wording = resolve_wording(cfg.domain)
    for uid in tqdm(
        np.flatnonzero(keep),
        desc="users",
        unit="user",
        disable=None if progress else True,  # None: only on a terminal
        leave=False,
    ):
        span = rows[starts[uid] : starts[uid + 1]]
        last = span[-cfg.window :]
        window = [
            (titles[i], float(r), int(t))
            for i, r, t in zip(cols.item[last], cols.rating[last], cols.time[last], strict=True)
        ]
        rated = {titles[i] for i in cols.item[span]}
        record = user_record(cols.users[uid], window, rated, cfg, catalog, wording)
        if isinstance(record, str):
            dropped[record] += 1
        else:
            records.append(record)

    need = cfg.train_users + cfg.valid_users + 1
    if len(records) < need:
        raise DataError(
            f"only {len(records)} of {n_users} users pass the rules ({int(few_pos.sum())} with "
            f"fewer than {cfg.min_positives} positives in their window of {cfg.window}, "
            f"{int(few_neg.sum())} with fewer than {cfg.min_negatives} negatives, "
            f"{dropped['collisions']} without {cfg.negatives} distinct negative titles, "
            f"{dropped['empty history']} with an empty history); train_users + valid_users + 1 "
            f"test user need {need}; relax the rules or lower the split sizes"
        )
    splits, rest = split_records(records, cfg)
    counts = {
        "interactions_after_duplicates": len(rows),
        "duplicates_collapsed": len(cols.user) - len(rows),
        "users_seen": n_users,
        "users_dropped_few_positives": int(few_pos.sum()),
        "users_dropped_few_negatives": int(few_neg.sum()),
        "users_dropped_title_collisions": dropped["collisions"],
        "users_dropped_empty_history": dropped["empty history"],
        "users_kept": len(records),
        "users_unused": len(rest),
        "catalog_titles": len(catalog),
        **{f"{s}_users": len(v) for s, v in splits.items()},
    }
    short = [
        f"{len(splits[split])} {split} users instead of {asked}"
        for split, asked in (("test", cfg.test_users), ("valid", cfg.valid_users))
        if len(splits[split]) < asked
    ]
    if short:
        counts["warning"] = f"only {' and '.join(short)}: {len(records)} users pass the rules" + (
            " (the id split fills test before valid)" if cfg.split == "id" else ""
        )
    return {**splits, "rest": rest}, counts


def prepare(
    cfg: BuildConfig,
    reviews: str | os.PathLike,
    meta: str | os.PathLike,
    out: str | os.PathLike,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Read the raw files, apply the rules, write every output; returns the stats written.

    A rerun into the same `out` with the same settings writes the same files again; with other
    settings it stops before reading anything unless `overwrite`, which replaces the earlier
    build: its files the new one does not write are removed, so no stale split or alpaca file is
    left beside the new ones. The new files are written to `out/.partial` first and moved in
    with stats.json last, so a failed build leaves the earlier one whole."""
    out = Path(out)
    check_out(out)
    settings = build_settings(cfg, reviews, meta)
    previous = previous_outputs(out, settings, overwrite)
    read_ratings, read_titles = readers(cfg.source)
    meta_errors = LineErrors(str(meta))
    titles = read_titles(meta, meta_errors)
    meta_errors.check(cfg.max_bad_fraction)
    if not titles:
        raise DataError("no item has a title", file=meta)
    review_errors = LineErrors(str(reviews), rating_scale=cfg.scale())
    counts = {"read": 0, "dropped_no_title": 0}
    cols, items = collect(read_ratings(reviews, review_errors), titles, counts)
    review_errors.check(cfg.max_bad_fraction)
    if not len(cols.user):
        raise DataError(
            f"none of the {counts['read']} interactions has an item with a title in {meta}",
            file=reviews,
        )
    untitled = check_untitled(counts, items, cfg, reviews, meta)
    if cfg.window_order == "file":
        check_contiguous(cols, reviews)
        check_not_item_sorted(cols, reviews)
    splits, rules = build_records(cols, cfg, progress)
    shortfall = rules.pop("warning", None)
    left_out = (
        f"{meta}: {meta_errors.bad:,} unusable line(s) left out ("
        + "; ".join(meta_errors.examples)
        + ")"
        if meta_errors.bad
        else None
    )
    warnings = [meta_errors.mixed_encodings(), left_out, untitled, shortfall]
    stats = {
        "config": cfg.model_dump(mode="json"),
        "inputs": settings["inputs"],
        "files": {"reviews": review_errors.summary(), "meta": meta_errors.summary()},
        "items_with_title": len(titles),
        "interactions_read": counts["read"],
        "interactions_dropped_no_title": counts["dropped_no_title"],
        **items,
        **rules,
        "warnings": [w for w in warnings if w],
    }
    write_build(out, splits, cfg, stats, previous)
    return json.loads((out / "stats.json").read_text())
