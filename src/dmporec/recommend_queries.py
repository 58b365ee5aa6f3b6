"""What `recommend` ranks: users from --history/--candidates or a --users file, checked before
any model loads (blank or duplicate titles, an empty history, a candidate already in the history,
more than --max-candidates), each failure one DataError naming the file, record and field."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dmporec.ranker import Ranker, clean_request
from dmporec.ranking import RankRequest, check_unseen
from dmporec.records import DataError, TitleNormalization, read_text_file

# recommend's default --max-candidates: 870 prompts per user.
MAX_CANDIDATES = 30
# Seconds of scoring before recommend shows its progress bar: quick answers print nothing more.
PROGRESS_DELAY_S = 2.0


@dataclass(frozen=True)
class UserQuery:
    user: str
    candidates: list[str]  # as given, for display
    request: RankRequest  # cleaned titles, for the model
    record: int | None = None  # its index in the --users file


def n_prompts(n_candidates: int) -> int:
    """Prompts a list of n candidates costs: every pair in both listing orders."""
    return n_candidates * (n_candidates - 1)


def check_query(
    request: RankRequest,
    max_candidates: int,
    *,
    file: str | Path | None = None,
    record: int | None = None,
) -> RankRequest:
    """`request`, unless it has more than `max_candidates` candidates or one of its history's
    titles (ranking.check_unseen): DataError naming the field."""
    n = len(request.candidates)
    if n > max_candidates:
        raise DataError(
            f"{n} candidates ({n_prompts(n)} prompts) is over --max-candidates={max_candidates} "
            f"({n_prompts(max_candidates)} prompts); raise --max-candidates to rank them all",
            file=file,
            record=record,
            field="candidates",
        )
    return check_unseen(request, file=file, record=record)


def titles_of(value: Any, file: Path, index: int, key: str) -> list[str]:
    """`value`, a record's list of titles (DataError naming the field otherwise)."""
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise DataError("expected a list of title strings", file=file, record=index, field=key)
    return value


def read_users_file(path: Path) -> list[dict[str, Any]]:
    """The --users file's records: a non-empty JSON list of objects (DataError otherwise)."""
    text = read_text_file(path)
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg} at line {e.lineno})", file=path) from None
    if not isinstance(entries, list) or not entries:
        raise DataError("expected a non-empty JSON list of users", file=path)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"expected an object, got {type(entry).__name__}", file=path, record=i)
    return entries


def ranks_candidates(entries: list[dict[str, Any]]) -> bool:
    """Whether a --users file ranks given candidates (any record has them) or asks for top-K
    from the catalogue (none has)."""
    return any("candidates" in entry for entry in entries)


def read_users(
    path: Path,
    norm: TitleNormalization,
    domain: str,
    max_candidates: int = MAX_CANDIDATES,
    entries: list[dict[str, Any]] | None = None,
) -> list[UserQuery]:
    """The --users file (its `entries`, if already read): a JSON list of {"user", "history",
    "candidates"[, "domain"]}, every record checked (`clean_request`, `check_query`); no model
    needed."""
    entries = read_users_file(path) if entries is None else entries
    queries = []
    for i, entry in enumerate(entries):
        for key in ("history", "candidates"):
            if key not in entry:
                raise DataError("missing", file=path, record=i, field=key)
        history = titles_of(entry["history"], path, i, "history")
        candidates = titles_of(entry["candidates"], path, i, "candidates")
        request = clean_request(
            history, candidates, entry.get("domain", domain), norm, file=path, record=i
        )
        request = check_query(request, max_candidates, file=path, record=i)
        queries.append(UserQuery(str(entry.get("user", i)), candidates, request, i))
    return queries


def read_queries(
    args: argparse.Namespace,
    norm: TitleNormalization,
    entries: list[dict[str, Any]] | None = None,
) -> list[UserQuery]:
    """The users to rank, from --users (its `entries`, if already read) or --history and
    --candidates, checked before any model loads."""
    if args.users:
        return read_users(Path(args.users), norm, args.domain, args.max_candidates, entries)
    request = clean_request(args.history, args.candidates, args.domain, norm)
    return [UserQuery("-", list(args.candidates), check_query(request, args.max_candidates))]


def bound_query(ranker: Ranker, query: UserQuery, file: Path | None) -> UserQuery:
    """`query` with its history cut to data.max_prompt_tokens, saying so on stderr (as training
    and evaluation count what they cut)."""
    request = ranker.bounded(query.request, file=file, record=query.record)
    kept, given = len(request.history), len(query.request.history)
    if kept < given:
        who = "the history" if file is None else f"user {query.user}'s history"
        print(
            f"recommend: {who} is over data.max_prompt_tokens={ranker.data_cfg.max_prompt_tokens} "
            f"tokens with its candidates: kept its newest {kept} of {given} titles "
            "(data.overlong=refuse stops instead)",
            file=sys.stderr,
        )
    return replace(query, request=request)
