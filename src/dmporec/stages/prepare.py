"""`dmporec prepare`: build the few-shot datasets from a raw dump (rules in dmporec.build)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from dmporec.build import UNTITLED_WARNING, BuildConfig, prepare
from dmporec.config import ConfigError
from dmporec.raw import MAX_TITLE_CHARS, SOURCES, off_scale
from dmporec.records import TitleNormalization

EXAMPLES = f"""examples:
  dmporec prepare --source movielens --ratings ml-1m/ratings.dat --movies ml-1m/movies.dat \\
      --out data/ml-1m --name rec_data_ml_1m          # the authors' rules and split (default)
  dmporec prepare --source movielens100k --ratings ml-100k/u.data --movies ml-100k/u.item \\
      --out data/ml-100k --name rec_ml_100k
  dmporec prepare --source amazon2018 --reviews Video_Games.json.gz --meta meta_Video_Games.json.gz \\
      --out data/games --name rec_Amazon_Game --domain games
  dmporec prepare --source csv --reviews ratings.csv --meta items.csv --out data/music \\
      --rules temporal --domain "music,songs,listened to,listening to,songs"

rules: authors (default) = each user's last --window ratings, in the ratings file's order for
--source movielens (MovieLens-1M's ratings.dat, as the authors took it) and in time order (ties
in file order) for every other source, movielens100k's u.data included; the window's first
positive and first negatives as targets, its other positives as history, split by user id (train,
then test, then valid); temporal = the window in time order, the last positive and negatives as
targets, history strictly before them, a seeded shuffle split. --window-order overrides the order.
Details: the docstring of dmporec.build.

bad input: unusable lines count against --max-bad-fraction per file (a title over {MAX_TITLE_CHARS:,}
characters makes its line unusable); interactions whose item has no title in the titles file
against --max-untitled-fraction (a warning above {UNTITLED_WARNING:.0%}).

inputs: amazon2014/2018 reviews (reviewerID, asin, overall, unixReviewTime) + metadata (asin, title;
JSON or Python-literal lines); amazon2023 reviews (user_id, parent_asin, rating, timestamp in ms) +
meta (parent_asin, title); movielens ratings.dat + movies.dat (MovieLens-1M; -10M with
--window-order time --rating-scale 0.5-5); movielens100k u.data + u.item; csv with headers
user,item,rating,timestamp and item,title (or userId,movieId,... as MovieLens-20M/25M write them).
Plain or gzip; UTF-8 (a byte-order mark is fine); .dat/u.item title lines that are not valid UTF-8
are read as latin-1, line by line (a file mixing both gets a warning with the counts).
"""


def _choices(annotation: Any) -> list[str] | None:
    """The values of a Literal field, optional or not; None for other fields."""
    literal = next(
        (a for a in (annotation, *get_args(annotation)) if get_origin(a) is Literal), None
    )
    return list(get_args(literal)) if literal is not None else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    fields = BuildConfig.model_fields
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--reviews", "--ratings", required=True, help="interactions file (plain or .gz)")
    p.add_argument(
        "--meta", "--movies", "--items", required=True, help="titles file (plain or .gz)"
    )
    p.add_argument("--out", required=True, help="output directory")
    for name in (
        "rules",
        "split",
        "window_order",
        "name",
        "domain",
        "positive_above",
        "rating_scale",
        "window",
        "min_positives",
        "min_negatives",
        "negatives",
        "list_negatives",
        "train_users",
        "valid_users",
        "test_users",
        "seed",
        "max_bad_fraction",
        "max_untitled_fraction",
    ):
        info = fields[name]
        choices = _choices(info.annotation)
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            **({"choices": choices} if choices else {"type": type(info.default)}),
            default=info.default,
            help=(info.description or "")
            + ("" if info.default is None else f" (default {info.default})"),
        )
    p.add_argument(
        "--strip-year", action="store_true", help="drop a trailing release year from titles"
    )
    p.add_argument("--keep-entities", action="store_true", help="do not decode HTML entities")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a build with other settings in --out (its files are removed once the new "
        "one is written); without it such a rerun stops, naming the settings that differ",
    )


def run(args: argparse.Namespace) -> int:
    options = {
        name: getattr(args, name)
        for name in BuildConfig.model_fields
        if name not in ("source", "title_normalization") and hasattr(args, name)
    }
    try:
        cfg = BuildConfig(
            source=args.source,
            title_normalization=TitleNormalization(
                strip_year=args.strip_year, html_entities=not args.keep_entities
            ),
            **options,
        )
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"prepare: {first['msg']}") from None
    start = time.perf_counter()
    stats = prepare(cfg, args.reviews, args.meta, args.out, overwrite=args.overwrite)
    out = Path(args.out)
    print(
        f"read {stats['interactions_read']:,} interactions "
        f"({stats['files']['reviews']['bad']:,} unusable lines, "
        f"{stats['interactions_dropped_no_title']:,} without a title); "
        f"{stats['users_kept']:,} of {stats['users_seen']:,} users pass the {cfg.rules} rules "
        f"(window of {cfg.window} in {cfg.window_order} order); {cfg.split} split: "
        f"train {stats['train_users']} / valid {stats['valid_users']} / test {stats['test_users']} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    for warning in stats["warnings"]:
        print(f"warning: {warning}")
    left_out = off_scale(stats["files"]["reviews"]["reasons"])
    if left_out:
        print(
            f"warning: {left_out:,} ratings outside the scale {cfg.rating_scale} were left out; "
            "--rating-scale LOW-HIGH widens it (0.5-5 for half stars)"
        )
    print(f"wrote {len(stats['outputs'])} files to {out} (counts in {out / 'stats.json'})")
    return 0
