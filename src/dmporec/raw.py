"""Streaming readers for raw rating dumps: Amazon 2014/2018/2023, MovieLens-1M and -100K, and a CSV.

Every reader yields `(user, item, rating, timestamp)` one line at a time and counts the lines it
cannot use in a `LineErrors`, with a few examples by line number, so a 10M-line dump is read in
bounded memory and a handful of broken lines never stops a build. Title readers return
`{item id: title}`; items without a title are left out (the builder counts what that drops), and
a title over `MAX_TITLE_CHARS` makes its line unusable. Opening, decoding and counting lines, the
same for every format, is dmporec.raw_lines.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

from dmporec.raw_lines import UTF8_OR_LATIN1, LineErrors, numbered_lines, open_text, separated
from dmporec.raw_lines import off_scale as off_scale  # re-exported, as before
from dmporec.records import DataError

SOURCES = ("amazon2014", "amazon2018", "amazon2023", "movielens", "movielens100k", "csv")

Interaction = tuple[str, str, float, int]  # user, item, rating, unix time (seconds)

# A title longer than this is not a title (a swallowed description, a broken export): its line is
# counted unusable. The longest in the authors' released files has 352 characters.
MAX_TITLE_CHARS = 1000


def _parse_object(line: str) -> dict[str, Any]:
    """A JSON object, or a Python dict literal (the 2014 metadata dumps are written that way)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        obj = ast.literal_eval(line)
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    return obj


def _objects(
    path: str | os.PathLike, errors: LineErrors, what: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line that parses; the others are counted."""
    with open_text(path) as f:
        for line_no, line in numbered_lines(f, path, errors):
            if not line.strip():
                continue
            errors.lines += 1
            try:
                yield line_no, _parse_object(line)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                errors.add(line_no, f"not {what}")


def _json_lines(
    path: str | os.PathLike,
    errors: LineErrors,
    fields: tuple[str, str, str, str],
    time_scale: float,
) -> Iterator[Interaction]:
    user_key, item_key, rating_key, time_key = fields
    for line_no, obj in _objects(path, errors, "a JSON object"):
        parsed = _interaction(
            obj.get(user_key),
            obj.get(item_key),
            obj.get(rating_key),
            obj.get(time_key),
            errors.rating_scale,
            time_scale,
        )
        if isinstance(parsed, str):
            missing = [k for k in fields if k not in obj]
            errors.add(line_no, f"missing field '{missing[0]}'" if missing else parsed)
            continue
        yield parsed


# Unix seconds from year 1 to 9999 (as int64); anything else is not a time.
_TIME_RANGE = (-62_135_596_800, 253_402_300_799)


def _interaction(
    user: Any,
    item: Any,
    rating: Any,
    t: Any,
    scale: tuple[float, float] | None = None,
    time_scale: float = 1,
) -> Interaction | str:
    """The parsed interaction (time in seconds: `t / time_scale`), or the reason it cannot be
    used: a missing or empty field, a non-numeric or infinite value, a rating outside `scale`, a
    time outside years 1-9999."""
    if user is None or item is None or rating is None or t is None:
        return "missing field"
    user, item = str(user).strip(), str(item).strip()
    if not user or not item:
        return "empty user or item id"
    try:
        rating, t = float(rating), float(t)
    except (TypeError, ValueError):
        return "non-numeric rating or timestamp"
    if not (math.isfinite(rating) and math.isfinite(t)):
        return "non-numeric rating or timestamp"
    if scale is not None and not scale[0] <= rating <= scale[1]:
        return f"rating {rating:g} outside the scale {scale[0]:g}-{scale[1]:g}"
    t = t / time_scale
    if not _TIME_RANGE[0] <= t <= _TIME_RANGE[1]:
        return f"timestamp {t:g} is not a date"
    return user, item, rating, int(t)


def read_amazon_reviews(
    path: str | os.PathLike, source: str, errors: LineErrors
) -> Iterator[Interaction]:
    """Amazon reviews JSON lines: 2014/2018 `reviewerID, asin, overall, unixReviewTime`;
    2023 `user_id, parent_asin, rating, timestamp` (milliseconds)."""
    if source == "amazon2023":
        yield from _json_lines(path, errors, ("user_id", "parent_asin", "rating", "timestamp"), 1e3)
    else:
        yield from _json_lines(path, errors, ("reviewerID", "asin", "overall", "unixReviewTime"), 1)


def read_amazon_titles(path: str | os.PathLike, source: str, errors: LineErrors) -> dict[str, str]:
    """`{asin: title}` from a metadata dump (JSON or Python-literal lines); untitled items left out."""
    key = "parent_asin" if source == "amazon2023" else "asin"
    titles: dict[str, str] = {}
    for line_no, obj in _objects(path, errors, "a JSON object or Python dict literal"):
        item = obj.get(key)
        if item is None:
            errors.add(line_no, f"missing field '{key}'")
            continue
        title = _usable_title(obj.get("title"), line_no, errors)
        if title is not None:
            titles[str(item).strip()] = title
    return titles


def _valid(rows: Iterator[tuple[int, list[str]]], errors: LineErrors) -> Iterator[Interaction]:
    """The interactions of (line number, [user, item, rating, time]) rows; the others counted."""
    for line_no, values in rows:
        parsed = _interaction(*values, errors.rating_scale)
        if isinstance(parsed, str):
            errors.add(line_no, parsed)
        else:
            yield parsed


def _ratings(
    path: str | os.PathLike, sep: str, what: str, errors: LineErrors
) -> Iterator[Interaction]:
    """The interactions of a latin-1 file of `user<sep>item<sep>rating<sep>time` lines."""

    def four_fields() -> Iterator[tuple[int, list[str]]]:
        for line_no, parts in separated(path, sep, "latin-1", errors):
            if len(parts) == 4:
                yield line_no, parts
            else:
                errors.add(line_no, f"expected 4 {what}-separated fields, got {len(parts)}")

    yield from _valid(four_fields(), errors)


def read_movielens_ratings(path: str | os.PathLike, errors: LineErrors) -> Iterator[Interaction]:
    """MovieLens-1M `ratings.dat`: `UserID::MovieID::Rating::Timestamp`, latin-1, by user."""
    yield from _ratings(path, "::", "'::'", errors)


def _usable_title(title: Any, line_no: int, errors: LineErrors) -> str | None:
    """The title, or None for a missing or blank one (the item has no title) and for one over
    `MAX_TITLE_CHARS` (its line counted unusable)."""
    if not isinstance(title, str) or not title.strip():
        return None
    if len(title) > MAX_TITLE_CHARS:
        errors.add(line_no, f"a title of {len(title):,} characters (over {MAX_TITLE_CHARS:,})")
        return None
    return title


def _titles(path: str | os.PathLike, sep: str, layout: str, errors: LineErrors) -> dict[str, str]:
    """`{id: title}` from a file of `id<sep>title<sep>...` lines (`layout` names them), each
    line UTF-8 when it decodes as UTF-8, else latin-1 (`UTF8_OR_LATIN1`)."""
    titles = {}
    for line_no, parts in separated(path, sep, UTF8_OR_LATIN1, errors):
        if len(parts) < 2:
            errors.add(line_no, f"expected '{layout}', got {len(parts)} field(s)")
            continue
        title = _usable_title(parts[1], line_no, errors)
        if title is not None:
            titles[parts[0].strip()] = title
    return titles


def read_movielens_titles(path: str | os.PathLike, errors: LineErrors) -> dict[str, str]:
    """MovieLens `movies.dat`: `MovieID::Title::Genres` (1M: latin-1; 10M: UTF-8)."""
    return _titles(path, "::", "MovieID::Title::Genres", errors)


def read_movielens100k_ratings(
    path: str | os.PathLike, errors: LineErrors
) -> Iterator[Interaction]:
    """MovieLens-100K `u.data`: `user item rating timestamp`, tab-separated, in random order."""
    yield from _ratings(path, "\t", "tab", errors)


def read_movielens100k_titles(path: str | os.PathLike, errors: LineErrors) -> dict[str, str]:
    """MovieLens-100K `u.item`: `movie id|title|release date|...`."""
    return _titles(path, "|", "movie id|title|...", errors)


# Header names accepted for each column (case-insensitive): MovieLens-20M/25M's ratings.csv says
# userId,movieId,rating,timestamp and its movies.csv movieId,title,genres.
_CSV_NAMES = {
    "user": ("user", "userid", "user_id"),
    "item": ("item", "itemid", "item_id", "movieid", "movie_id"),
    "rating": ("rating",),
    "timestamp": ("timestamp", "time"),
    "title": ("title",),
}


def _csv_rows(
    path: str | os.PathLike, columns: tuple[str, ...], errors: LineErrors
) -> Iterator[tuple[int, list[str]]]:
    """(line number, the named columns) of each CSV record; a record whose quoted field runs
    over several lines (a stray quote swallowing the lines after it) is counted unusable, with
    every line it took."""
    with open_text(path) as f:
        taken: list[int] = []  # line numbers the reader consumed since its last record

        def lines() -> Iterator[str]:
            for line_no, line in numbered_lines(f, path, errors):
                taken.append(line_no)
                yield line

        reader = csv.reader(lines())
        try:
            header = [h.strip() for h in next(reader, [])]
            lowered = [h.lower() for h in header]
            index, missing = [], []
            for c in columns:
                found = next((lowered.index(n) for n in _CSV_NAMES[c] if n in lowered), None)
                if found is None:
                    missing.append(c)
                else:
                    index.append(found)
            if missing:
                accepted = "; ".join(f"{c}: {', '.join(_CSV_NAMES[c])}" for c in missing)
                raise DataError(
                    f"the header {header} lacks column(s) {missing}; expected {list(columns)} "
                    f"(names accepted, any case: {accepted})",
                    file=path,
                    record="header",
                )
            taken.clear()
            for row in reader:
                first, last, n = (taken[0], taken[-1], len(taken)) if taken else (0, 0, 1)
                taken.clear()
                if not row:
                    continue
                errors.lines += n
                if n > 1 and any("\n" in v or "\r" in v for v in row):
                    errors.add(first, f"a quote opened here runs to line {last} ({n} lines taken)")
                    errors.bad += n - 1
                    continue
                if len(row) < len(header):
                    errors.add(first, f"expected {len(header)} fields, got {len(row)}")
                    continue
                yield first, [row[i] for i in index]
        except csv.Error as e:
            line = taken[0] if taken else "?"
            raise DataError(
                f"line {line}: {e} (a quote opened there and never closed?)", file=path
            ) from None


def read_csv_ratings(path: str | os.PathLike, errors: LineErrors) -> Iterator[Interaction]:
    """A CSV with a header naming `user,item,rating,timestamp` (any order, extra columns ignored;
    other names `_CSV_NAMES` accepts, e.g. MovieLens-20M's userId,movieId)."""
    yield from _valid(_csv_rows(path, ("user", "item", "rating", "timestamp"), errors), errors)


def read_csv_titles(path: str | os.PathLike, errors: LineErrors) -> dict[str, str]:
    """A CSV with a header naming `item,title` (or movieId,title, ...: `_CSV_NAMES`)."""
    titles = {}
    for line_no, (item, title) in _csv_rows(path, ("item", "title"), errors):
        usable = _usable_title(title, line_no, errors)
        if usable is not None:
            titles[item.strip()] = usable
    return titles


def readers(
    source: str,
) -> tuple[
    Callable[[str | os.PathLike, LineErrors], Iterator[Interaction]],
    Callable[[str | os.PathLike, LineErrors], dict[str, str]],
]:
    """The (ratings reader, titles reader) pair for a source name."""
    if source.startswith("amazon"):
        return (
            lambda p, e: read_amazon_reviews(p, source, e),
            lambda p, e: read_amazon_titles(p, source, e),
        )
    if source == "movielens":
        return read_movielens_ratings, read_movielens_titles
    if source == "movielens100k":
        return read_movielens100k_ratings, read_movielens100k_titles
    if source == "csv":
        return read_csv_ratings, read_csv_titles
    raise DataError(f"unknown source {source!r}; expected one of {SOURCES}")
