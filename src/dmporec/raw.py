"""Streaming readers for raw rating dumps: Amazon 2014/2018/2023, MovieLens-1M and -100K, and a CSV.

Every reader yields `(user, item, rating, timestamp)` one line at a time and counts the lines it
cannot use in a `LineErrors`, with a few examples by line number, so a 10M-line dump is read in
bounded memory and a handful of broken lines never stops a build. Title readers return
`{item id: title}`; items without a title are left out (the builder counts what that drops), and
a title over `MAX_TITLE_CHARS` makes its line unusable.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from dmporec.records import DataError

SOURCES = ("amazon2014", "amazon2018", "amazon2023", "movielens", "movielens100k", "csv")

Interaction = tuple[str, str, float, int]  # user, item, rating, unix time (seconds)

# A title longer than this is not a title (a swallowed description, a broken export): its line is
# counted unusable. The longest in the authors' released files has 352 characters.
MAX_TITLE_CHARS = 1000


@dataclass
class LineErrors:
    """Unusable lines of one file: how many, why, and the first few by line number."""

    file: str
    rating_scale: tuple[float, float] | None = None  # ratings outside [low, high] are unusable
    lines: int = 0
    bad: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    # Lines with non-ASCII bytes in a file decoded line by line (`UTF8_OR_LATIN1`): how many
    # were valid UTF-8, and how many were not and so were read as latin-1.
    utf8_lines: int = 0
    latin1_lines: int = 0

    def add(self, line_no: int, reason: str, max_examples: int = 5) -> None:
        self.bad += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.examples) < max_examples:
            self.examples.append(f"line {line_no}: {reason}")

    def check(self, max_bad_fraction: float) -> None:
        """Raise DataError when the file has no data lines, none was usable, or the bad share
        exceeds the user's limit."""
        if not self.lines:
            raise DataError("holds no data lines (an empty file?)", file=self.file)
        if self.bad == self.lines:
            raise DataError(
                f"none of its {self.lines} lines could be read; first problems: "
                + "; ".join(self.examples)
                + self.scale_hint(),
                file=self.file,
            )
        if self.bad / self.lines > max_bad_fraction:
            raise DataError(
                f"{self.bad} of {self.lines} lines are unusable "
                f"({self.bad / self.lines:.1%} > max_bad_fraction {max_bad_fraction:.1%}); "
                "first problems: " + "; ".join(self.examples) + self.scale_hint(),
                file=self.file,
            )

    def scale_hint(self) -> str:
        if not off_scale(self.reasons):
            return ""
        return (
            "; --rating-scale LOW-HIGH widens the scale (0.5-5 for half stars; 'any' accepts "
            "every rating)"
        )

    def mixed_encodings(self) -> str | None:
        """A warning when a file decoded line by line held both UTF-8 and latin-1 lines."""
        if not (self.utf8_lines and self.latin1_lines):
            return None
        return (
            f"{self.file} mixes encodings: {self.latin1_lines:,} of its "
            f"{self.utf8_lines + self.latin1_lines:,} lines with non-ASCII characters are not "
            f"valid UTF-8 and were read as latin-1, the other {self.utf8_lines:,} as UTF-8; "
            "check their titles (or convert the file to UTF-8)"
        )

    def summary(self) -> dict[str, Any]:
        out = {
            "file": self.file,
            "lines": self.lines,
            "bad": self.bad,
            "reasons": dict(sorted(self.reasons.items())),
            "examples": self.examples,
        }
        if self.utf8_lines or self.latin1_lines:
            out["non_ascii_lines"] = {"utf-8": self.utf8_lines, "latin-1": self.latin1_lines}
        return out


def off_scale(reasons: dict[str, int]) -> int:
    """Lines left out for a rating outside the rating scale, from a file's reasons (a
    `LineErrors`' or its summary's)."""
    return sum(n for reason, n in reasons.items() if " outside the scale " in reason)


def open_text(path: str | os.PathLike, encoding: str = "utf-8") -> TextIO:
    """Open plain or gzip text (told apart by magic bytes, not the name), with a byte progress bar
    when the console is a terminal."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw: Any = open(path, "rb")  # noqa: SIM115 - closed through the returned wrapper
    gz = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    # The bar follows compressed bytes read, which is what the file size measures.
    bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, disable=None)
    raw = _ProgressReader(raw, bar)
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
    # Undecodable bytes become lone surrogates, so a line holding them is told apart (and counted)
    # from one that merely contains U+FFFD.
    # utf-8-sig reads UTF-8 and drops a leading byte-order mark (spreadsheet "CSV UTF-8" exports).
    encoding = "utf-8-sig" if encoding.lower().replace("_", "-") == "utf-8" else encoding
    return io.TextIOWrapper(stream, encoding=encoding, errors="surrogateescape", newline="")


def _lines(f: TextIO, path: str | os.PathLike, errors: LineErrors) -> Iterator[tuple[int, str]]:
    """(line number, line) of a file opened with open_text; a line with bytes that are not valid
    in the file's encoding is counted unusable; a truncated or corrupt gzip stream is a DataError."""
    line_no = 0
    try:
        for line_no, line in enumerate(f, 1):
            if line_no == 1 and line.startswith(_LATIN1_BOM):  # utf-8-sig drops it for UTF-8
                line = line[len(_LATIN1_BOM) :]
            if _UNDECODABLE.search(line):
                if line.strip():
                    errors.lines += 1
                    errors.add(line_no, f"bytes that are not valid {f.encoding}")
                continue
            yield line_no, line
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(
            f"the gzip stream is truncated or corrupt after line {line_no} ({e})", file=path
        ) from None


_UNDECODABLE = re.compile("[\udc80-\udcff]")
_LATIN1_BOM = "\ufeff".encode().decode("latin-1")  # a UTF-8 byte-order mark read as latin-1


class _ProgressReader(io.RawIOBase):
    """A binary file that advances a tqdm bar by the bytes read and closes it with the file."""

    def __init__(self, f: Any, bar: tqdm) -> None:
        self.f, self.bar = f, bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.f.readinto(buffer)
        self.bar.update(n)
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self.bar.close()
        self.f.close()
        super().close()


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
        for line_no, line in _lines(f, path, errors):
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


# The encoding of title files that may be UTF-8 or latin-1, decided line by line: MovieLens-1M
# and -100K write titles in latin-1, later releases in UTF-8, and an edited file may hold both.
UTF8_OR_LATIN1 = "utf-8, else latin-1"


def _utf8_or_latin1(line: str, errors: LineErrors) -> str:
    """A line read as latin-1, decoded again as UTF-8 when its bytes are valid UTF-8 (latin-1
    maps every byte to one character, so encoding it back gives the bytes as they were); the
    choice is counted in `errors` for lines that are not plain ASCII."""
    if line.isascii():
        return line
    try:
        decoded = line.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        errors.latin1_lines += 1
        return line
    errors.utf8_lines += 1
    return decoded


def _separated(
    path: str | os.PathLike, sep: str, encoding: str, errors: LineErrors
) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line; `encoding` may be `UTF8_OR_LATIN1`."""
    per_line = encoding == UTF8_OR_LATIN1
    with open_text(path, encoding="latin-1" if per_line else encoding) as f:
        for line_no, line in _lines(f, path, errors):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            errors.lines += 1
            if per_line:
                line = _utf8_or_latin1(line, errors)
            yield line_no, line.split(sep)


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
        for line_no, parts in _separated(path, sep, "latin-1", errors):
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
    for line_no, parts in _separated(path, sep, UTF8_OR_LATIN1, errors):
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
            for line_no, line in _lines(f, path, errors):
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
