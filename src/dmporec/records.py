"""The canonical record every data source converts to, title normalization, and reading and
writing record files (JSON lines)."""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dmporec.files import atomic_write_text
from dmporec.wording import WORDINGS, Wording, resolve_wording


class DataError(ValueError):
    """Bad input data; the message names the file, the record and the field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike | None = None,
        record: int | str | None = None,
        field: str | None = None,
    ) -> None:
        where = []
        if file is not None:
            where.append(str(file))
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")
        self.file, self.record, self.field = file, record, field


@dataclass(frozen=True)
class Item:
    """One catalog item as the model sees it: a title, and an id when the source has one."""

    title: str
    item_id: str | None = None


@dataclass
class Record:
    """One user and one prediction target: a history, the positive and k >= 1 negatives.

    `positive_first[i]` says whether the positive is listed before negative i in the prompt; it
    keeps a source's own candidate order (the authors' files) so prompts are reproduced exactly.
    When None, the order is drawn from the prompt seed, so position gives nothing away.
    `wording` holds the prompt's nouns and verbs (`dmporec.wording`); JSON lines write it as
    `"domain"`: a built-in name or an object of the five words.
    """

    user_id: str
    history: list[Item]
    positive: Item
    negatives: list[Item]
    wording: Wording = WORDINGS["movies"]
    positive_first: list[bool] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.negatives)

    def validate(
        self, *, file: str | os.PathLike | None = None, index: int | str | None = None
    ) -> Record:
        """Check the invariants every stage relies on; raise DataError naming what is wrong."""
        rec = index if index is not None else self.user_id
        if not self.history:
            raise DataError(
                "history is empty; a record needs at least one history item",
                file=file,
                record=rec,
                field="history",
            )
        if not self.negatives:
            raise DataError(
                "no negatives; a record needs at least one",
                file=file,
                record=rec,
                field="negatives",
            )
        for name, items in (
            ("history", self.history),
            ("negatives", self.negatives),
            ("positive", [self.positive]),
        ):
            for i, item in enumerate(items):
                if not item.title or not item.title.strip():
                    raise DataError(
                        f"item {i} has an empty title", file=file, record=rec, field=name
                    )
        if not isinstance(self.wording, Wording):
            raise DataError(
                f"expected a Wording, got {type(self.wording).__name__}",
                file=file,
                record=rec,
                field="domain",
            )
        if self.positive_first is not None and len(self.positive_first) != len(self.negatives):
            raise DataError(
                f"has {len(self.positive_first)} entries for {len(self.negatives)} negatives",
                file=file,
                record=rec,
                field="positive_first",
            )
        return self


class TitleNormalization(BaseModel):
    """How titles are cleaned when data is read. Applied identically to every split.

    The authors' Amazon titles carry HTML entities (`&ocirc;`) and stray spaces, and their
    MovieLens-1M train files drop the release year that the test file keeps. `none()` keeps
    titles byte-exact, which reproduces the authors' prompt strings.
    """

    model_config = ConfigDict(extra="forbid")
    html_entities: bool = Field(True, description="Decode HTML entities: '&amp;' -> '&'.")
    whitespace: bool = Field(True, description="Strip ends and collapse runs of whitespace.")
    strip_year: bool = Field(
        False, description="Drop a trailing release year: 'Heat (1995)' -> 'Heat'."
    )

    @classmethod
    def none(cls) -> TitleNormalization:
        return cls(html_entities=False, whitespace=False, strip_year=False)


_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_SPACES = re.compile(r"\s+")


def normalize_title(title: str, norm: TitleNormalization) -> str:
    if norm.html_entities:
        title = html.unescape(title)
    if norm.strip_year:
        title = _YEAR.sub("", title)
    if norm.whitespace:
        title = _SPACES.sub(" ", title).strip()
    return title


def normalize_record(record: Record, norm: TitleNormalization) -> Record:
    def fix(item: Item) -> Item:
        return Item(normalize_title(item.title, norm), item.item_id)

    return Record(
        record.user_id,
        [fix(i) for i in record.history],
        fix(record.positive),
        [fix(i) for i in record.negatives],
        record.wording,
        record.positive_first,
        dict(record.metadata),
    )


# ---------------------------------------------------------------- JSONL I/O


def record_to_dict(record: Record) -> dict[str, Any]:
    out = asdict(record)
    del out["wording"]
    out["domain"] = record.wording.to_json()
    return out


def record_from_dict(
    obj: Any, *, file: str | os.PathLike | None = None, index: int | str | None = None
) -> Record:
    if not isinstance(obj, dict):
        raise DataError(
            f"expected a JSON object, got {type(obj).__name__}", file=file, record=index
        )

    def need(key: str) -> Any:
        if key not in obj:
            raise DataError("missing", file=file, record=index, field=key)
        return obj[key]

    def item(value: Any, key: str) -> Item:
        if isinstance(value, str):
            return Item(value)
        if isinstance(value, dict) and isinstance(value.get("title"), str):
            item_id = value.get("item_id")
            return Item(value["title"], None if item_id is None else str(item_id))
        raise DataError(
            "expected a title string or an object with a 'title'",
            file=file,
            record=index,
            field=key,
        )

    def items(key: str) -> list[Item]:
        value = need(key)
        if not isinstance(value, list):
            raise DataError("expected a list", file=file, record=index, field=key)
        return [item(v, key) for v in value]

    positive_first = obj.get("positive_first")
    if positive_first is not None and not (
        isinstance(positive_first, list) and all(isinstance(b, bool) for b in positive_first)
    ):
        raise DataError(
            "expected a list of booleans", file=file, record=index, field="positive_first"
        )
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise DataError("expected an object", file=file, record=index, field="metadata")
    try:
        wording = resolve_wording(obj.get("domain", "movies"))
    except ValueError as e:
        raise DataError(str(e), file=file, record=index, field="domain") from None
    user_id = need("user_id")
    if not isinstance(user_id, (str, int)) or isinstance(user_id, bool) or str(user_id) == "":
        raise DataError(
            f"expected a non-empty string or integer, got {user_id!r}",
            file=file,
            record=index,
            field="user_id",
        )
    record = Record(
        user_id=str(user_id),
        history=items("history"),
        positive=item(need("positive"), "positive"),
        negatives=items("negatives"),
        wording=wording,
        positive_first=positive_first,
        metadata=metadata,
    )
    return record.validate(file=file, index=index)


def read_text_file(path: str | os.PathLike) -> str:
    """A data file's text; DataError (naming the file, and the line for bad bytes) if it is
    missing, a directory, or not UTF-8."""
    path = Path(path)
    if path.is_dir():
        raise DataError("is a directory, not a data file", file=path)
    if not path.is_file():
        raise DataError("file not found", file=path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"not valid UTF-8 (byte 0x{data[e.start]:02x} at line {line}, column {column}); "
            "re-encode the file as UTF-8",
            file=path,
        ) from None


def records_text(records: Iterable[Record]) -> str:
    """Records as the JSON lines `write_records` writes."""
    lines = [json.dumps(record_to_dict(r), ensure_ascii=False) for r in records]
    return "\n".join(lines) + ("\n" if lines else "")


def write_records(path: str | os.PathLike, records: Iterable[Record]) -> None:
    atomic_write_text(path, records_text(records))


def iter_records(path: str | os.PathLike) -> Iterator[Record]:
    path = Path(path)
    for lineno, line in enumerate(read_text_file(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"malformed JSON ({e.msg} at column {e.colno})",
                file=path,
                record=f"on line {lineno}",
            ) from None
        yield record_from_dict(obj, file=path, index=f"on line {lineno}")


def read_records(path: str | os.PathLike) -> list[Record]:
    records = list(iter_records(path))
    seen: dict[str, int] = {}
    for i, record in enumerate(records):
        if record.user_id in seen:
            raise DataError(
                f"user {record.user_id!r} appears again (first as record {seen[record.user_id]}); "
                "one record per user",
                file=path,
                record=i,
                field="user_id",
            )
        seen[record.user_id] = i
    return records


def clean_records(records: list[Record]) -> tuple[list[Record], dict[str, int]]:
    """Records without pairs that carry no signal, and what was dropped (title normalization can
    make two titles one): a negative equal to its positive or to an earlier negative is dropped,
    the positive is removed from its own history, and a record left without negatives or
    history is dropped. Counts by kind; zeros when nothing was wrong."""
    counts = dict.fromkeys(
        ("negative_equals_positive", "duplicate_negative", "positive_in_history", "records"), 0
    )
    kept = []
    for r in records:
        negatives, first, seen = [], [], {r.positive.title}
        for i, neg in enumerate(r.negatives):
            if neg.title in seen:
                kind = (
                    "negative_equals_positive"
                    if neg.title == r.positive.title
                    else "duplicate_negative"
                )
                counts[kind] += 1
                continue
            seen.add(neg.title)
            negatives.append(neg)
            if r.positive_first is not None:
                first.append(r.positive_first[i])
        history = [h for h in r.history if h.title != r.positive.title]
        counts["positive_in_history"] += len(history) < len(r.history)
        if not negatives or not history:
            counts["records"] += 1
            continue
        if len(negatives) < len(r.negatives) or len(history) < len(r.history):
            r = replace(
                r,
                history=history,
                negatives=negatives,
                positive_first=first if r.positive_first is not None else None,
            )
        kept.append(r)
    return kept, counts
