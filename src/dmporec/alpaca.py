"""Convert between canonical records and the LLaMA-Factory alpaca JSON the paper's authors released.

Three row kinds share one prompt: `sft` rows carry the chosen answer as `output` (a string);
`dpo` and `eval` rows carry `output: [chosen, rejected]`. In `*_dpo_ranking_k.json` a user with k
negatives has k consecutive rows with the same history; they are grouped back into one record.
The authors' MovieLens-1M eval file stores `output` as the chosen string alone: read as the
chosen answer, the rejected one being the same two titles in the other order.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from dmporec.files import atomic_write_text
from dmporec.prompts import render_instruction, render_pairs
from dmporec.records import (
    DataError,
    Item,
    Record,
    TitleNormalization,
    normalize_record,
    read_text_file,
)
from dmporec.wording import Wording, resolve_wording

_OPEN = " <Title:"
# The template up to the history, and from the history's end to the first candidate: the five
# words of a Wording are the groups (each without the template's seams, see dmporec.wording).
_HEAD = re.compile(
    r"You are an assistant working on (?P<role>.+?) recommendations\. "
    r"Here is the user's history of (?P<history>.+?) they have (?P<past>.+?): "
)
_RANK = "> . Rank the likelihood of the user "
_LEAD = re.compile(r"(?P<gerund>.+?) the two (?P<candidates>.+?) (?= <Title:)")


def _titles(text: str, sep: str, end: str, *, where: dict[str, Any]) -> list[str]:
    """Split ' <Title:A>' + sep + '<Title:B>' ... + end into titles; tolerant of '>' inside titles."""
    if not (text.startswith(_OPEN) and text.endswith(end)):
        raise DataError(f"expected '<Title:...>' items, got {text[:80]!r}", **where)
    return text[len(_OPEN) : len(text) - len(end)].split(sep)


def parse_instruction(text: str, *, where: dict[str, Any]) -> tuple[Wording, list[str], list[str]]:
    """(wording, history titles, the two candidates in listed order) from an instruction of the
    paper's template, whatever its nouns and verbs; rendering them back gives `text` again."""
    head = _HEAD.match(text)
    if head is None:
        raise DataError(
            "does not follow the paper's prompt template (\"You are an assistant working on "
            "... recommendations. Here is the user's history of ... they have ...: \")",
            **where,
        )
    if text[head.end() :].lstrip().startswith(". Rank the likelihood"):
        raise DataError("history is empty", **{**where, "field": "instruction (history)"})
    cut = text.rfind(_RANK)
    if cut < head.end():
        raise DataError("does not follow the paper's prompt template", **where)
    history_text = text[head.end() : cut + 2]  # keep the '> ' that closes the last title
    history = _titles(history_text, ">  <Title:", "> ", where=where)
    tail = text[cut + len(_RANK) :]
    lead = _LEAD.match(tail)
    if lead is None:
        raise DataError("does not follow the paper's prompt template", **where)
    try:
        wording = resolve_wording({**head.groupdict(), **lead.groupdict()})
    except ValueError as e:
        raise DataError(str(e), **where) from None
    candidates = _titles(
        tail[lead.end() :],
        ">  and  <Title:",
        "> .",
        where={**where, "field": "instruction (candidates)"},
    )
    if len(candidates) != 2:
        raise DataError(
            f"expected two candidates, found {len(candidates)}",
            **{**where, "field": "instruction (candidates)"},
        )
    if render_instruction(history, *candidates, wording).text != text:
        raise DataError("does not render back to itself from the paper's template", **where)
    return wording, history, candidates


def parse_answer(text: Any, *, where: dict[str, Any]) -> tuple[str, str]:
    """(first, second) from ' <Title:A> ,  <Title:B> '."""
    if not isinstance(text, str):
        raise DataError(f"expected an answer string, got {type(text).__name__}", **where)
    titles = _titles(text, "> ,  <Title:", "> ", where=where)
    if len(titles) != 2:
        raise DataError(f"expected a ranking of two titles, got {text[:80]!r}", **where)
    return titles[0], titles[1]


def _row_to_pair(row: Any, index: int, path: Path) -> tuple[Wording, list[str], str, str, bool]:
    """(wording, history, positive, negative, positive listed first) of one alpaca row."""
    where: dict[str, Any] = {"file": path, "record": index}
    if not isinstance(row, dict):
        raise DataError(f"expected an object, got {type(row).__name__}", **where)
    for key in ("instruction", "output"):
        if key not in row:
            hint = (
                " (this row is a dmporec record: records go in a .jsonl file; a .json file is "
                "read as the authors' alpaca layout)"
                if {"history", "positive"} <= row.keys()
                else ""
            )
            raise DataError("missing" + hint, **where, field=key)
    if not isinstance(row["instruction"], str):
        raise DataError("expected a string", **where, field="instruction")
    wording, history, candidates = parse_instruction(
        row["instruction"], where={**where, "field": "instruction"}
    )
    output = row["output"]
    out_where = {**where, "field": "output"}
    if isinstance(output, list):
        if len(output) != 2:
            raise DataError(f"expected [chosen, rejected], got {len(output)} entries", **out_where)
        positive, negative = parse_answer(output[0], where={**where, "field": "output[0]"})
        if parse_answer(output[1], where={**where, "field": "output[1]"}) != (negative, positive):
            raise DataError(
                "rejected answer is not the chosen one reversed", **{**where, "field": "output[1]"}
            )
    else:
        positive, negative = parse_answer(output, where=out_where)
    if sorted(candidates) != sorted([positive, negative]):
        missing = [t for t in (positive, negative) if t not in candidates]
        raise DataError(
            f"answer title(s) {missing} are not among the prompt's candidates {candidates}",
            **out_where,
        )
    return wording, history, positive, negative, candidates[0] == positive


def read_alpaca(path: str | os.PathLike, norm: TitleNormalization | None = None) -> list[Record]:
    """Records from an authors' alpaca file (sft, dpo_ranking_k or eval rows).

    Consecutive rows with the same history and positive become one record with several
    negatives (the dpo_ranking_k files); titles are normalized with `norm` afterwards.
    """
    path = Path(path)
    text = read_text_file(path)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        hint = (
            "; a .json file holds one JSON list (the authors' alpaca layout): JSON lines, one "
            "record each, go in a .jsonl file"
            if e.msg == "Extra data"
            else ""
        )
        raise DataError(
            f"malformed JSON ({e.msg} at line {e.lineno}, column {e.colno}){hint}", file=path
        ) from None
    if not isinstance(rows, list):
        raise DataError(f"expected a JSON list of rows, got {type(rows).__name__}", file=path)
    records: list[Record] = []
    last_key: tuple | None = None
    for index, row in enumerate(rows):
        wording, history, positive, negative, pos_first = _row_to_pair(row, index, path)
        key = (wording, tuple(history), positive)
        if key == last_key:
            rec = records[-1]
            rec.negatives.append(Item(negative))
            assert rec.positive_first is not None
            rec.positive_first.append(pos_first)
            rec.metadata["rows"].append(index)
            continue
        records.append(
            Record(
                user_id=f"{path.stem}:{index}",
                history=[Item(t) for t in history],
                positive=Item(positive),
                negatives=[Item(negative)],
                wording=wording,
                positive_first=[pos_first],
                metadata={"source": path.name, "rows": [index]},
            ).validate(file=path, index=index)
        )
        last_key = key
    if norm is not None:
        records = [normalize_record(r, norm) for r in records]
    return records


def to_alpaca_rows(records: list[Record], kind: str, seed: int = 0) -> list[dict[str, Any]]:
    """LLaMA-Factory rows: `sft` (output = chosen) or `dpo`/`eval` (output = [chosen, rejected])."""
    if kind not in ("sft", "dpo", "eval"):
        raise ValueError(f"kind must be 'sft', 'dpo' or 'eval', got {kind!r}")
    rows = []
    for i, record in enumerate(records):
        for name, items in (
            ("history", record.history),
            ("positive", [record.positive]),
            ("negatives", record.negatives),
        ):
            for item in items:
                if "<Title:" in item.title:
                    raise DataError(
                        f"title {item.title!r} holds the template's own '<Title:', "
                        "so the alpaca text could not be read back as written",
                        record=i,
                        field=name,
                    )
        for pair in render_pairs(record, seed):
            output: Any = pair.chosen if kind == "sft" else [pair.chosen, pair.rejected]
            rows.append({"instruction": pair.instruction.text, "input": "", "output": output})
    return rows


def write_alpaca(path: str | os.PathLike, records: list[Record], kind: str, seed: int = 0) -> None:
    rows = to_alpaca_rows(records, kind, seed)
    atomic_write_text(path, json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
