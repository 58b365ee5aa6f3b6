"""Raw dumps read line by line, whatever their format: plain or gzip text with a progress bar,
lines whose bytes do not decode counted unusable, UTF-8 or latin-1 decided per line for title files
that may mix them, and `LineErrors`, the count of a file's unusable lines (per-format readers:
dmporec.raw).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from dmporec.records import DataError


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


def numbered_lines(
    f: TextIO, path: str | os.PathLike, errors: LineErrors
) -> Iterator[tuple[int, str]]:
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


def separated(
    path: str | os.PathLike, sep: str, encoding: str, errors: LineErrors
) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line; `encoding` may be `UTF8_OR_LATIN1`."""
    per_line = encoding == UTF8_OR_LATIN1
    with open_text(path, encoding="latin-1" if per_line else encoding) as f:
        for line_no, line in numbered_lines(f, path, errors):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            errors.lines += 1
            if per_line:
                line = _utf8_or_latin1(line, errors)
            yield line_no, line.split(sep)
