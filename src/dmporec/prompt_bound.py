"""The prompt-length bound: data.max_prompt_tokens and data.overlong applied to records and ranking
requests before any model work (`PromptBound`): the oldest history titles are cut until the
longest prompt + answer fits, or the record is refused with a line naming it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from dmporec.records import DataError, Record
from dmporec.scoring import Group

if TYPE_CHECKING:
    from dmporec.collate import GroupEncoder
    from dmporec.config import DataConfig

Overlong = Literal["truncate", "refuse"]
H = TypeVar("H")  # anything with a `history` that dataclasses.replace can cut


def longest_sequence(group: Group) -> int:
    """Tokens of the group's longest prompt + answer (one naive row)."""
    return max(
        len(group.prefix) + len(b.context) + len(a) for b in group.branches for a in b.answers
    )


def newest_that_fit(n_history: int, tokens_with: Callable[[int], int], limit: int) -> int | None:
    """The most history items (kept from the newest end, at least one) for which
    `tokens_with(kept)` <= `limit`; None when even one is too many. Each item costs at least
    one token, so no more than `limit` are ever tokenized."""
    if n_history <= limit and tokens_with(n_history) <= limit:
        return n_history
    lo, hi = 1, min(n_history - 1, limit)
    if hi < lo or tokens_with(lo) > limit:
        return None
    while lo < hi:  # tokens_with grows with the items kept
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if tokens_with(mid) <= limit else (lo, mid - 1)
    return lo


@dataclass
class PromptBound:
    """data.max_prompt_tokens and data.overlong applied to records, before any model work."""

    max_tokens: int
    overlong: Overlong = "truncate"
    truncated: int = 0  # records whose history was cut
    dropped: int = 0  # history items cut, in all
    checked: int = 0

    @classmethod
    def of(cls, data: DataConfig) -> PromptBound:
        return cls(data.max_prompt_tokens, data.overlong)

    def _too_long(
        self,
        tokens: int,
        what: str,
        *,
        file: Any,
        record: Any,
        hint: str,
        field: str = "history",
    ) -> DataError:
        return DataError(
            f"{what} makes a sequence of {tokens} tokens, over data.max_prompt_tokens="
            f"{self.max_tokens}; {hint}",
            file=file,
            record=record,
            field=field,
        )

    def fit(
        self, n_history: int, tokens_with: Callable[[int], int], *, file: Any, record: Any
    ) -> int:
        """How many of the newest history items to keep (all when they fit)."""
        self.checked += 1
        if n_history <= self.max_tokens:
            full = tokens_with(n_history)
            if full <= self.max_tokens:
                return n_history
        if self.overlong == "refuse":
            tokens = full if n_history <= self.max_tokens else f"over {self.max_tokens}"
            raise self._too_long(
                tokens,
                f"a history of {n_history} titles",
                file=file,
                record=record,
                hint="shorten it, raise the limit, or set data.overlong=truncate",
            )
        kept = newest_that_fit(n_history, tokens_with, self.max_tokens)
        if kept is None:
            bare = tokens_with(0)
            if bare > self.max_tokens:  # no history at all: the candidates' fault
                raise self._too_long(
                    bare,
                    "the candidate titles alone",
                    file=file,
                    record=record,
                    hint="shorten them, or raise the limit",
                    field="candidates",
                )
            raise self._too_long(
                tokens_with(1),
                "even the newest history title with the candidates",
                file=file,
                record=record,
                hint="that title is too long, or raise the limit",
            )
        self.truncated += 1
        self.dropped += n_history - kept
        return kept

    def cut(self, item: H, tokens: Callable[[H], int], *, file: Any, record: Any) -> H:
        """`item` (a record or a ranking request: a dataclass with a `history`) with its
        history cut to the newest titles for which `tokens(item)` fits (itself when all fit)."""
        n = len(item.history)

        def tokens_with(kept: int) -> int:
            return tokens(replace(item, history=item.history[len(item.history) - kept :]))

        kept = self.fit(n, tokens_with, file=file, record=record)
        return item if kept == n else replace(item, history=item.history[-kept:])

    def records(
        self, records: Sequence[Record], enc: GroupEncoder, file: Any = None
    ) -> list[Record]:
        """`records` with each history cut to what fits (every negative, both listing orders)."""

        def tokens(record: Record) -> int:
            return longest_sequence(enc.group(record, orders="both"))

        return [self.cut(r, tokens, file=file, record=r.user_id) for r in records]

    def report(self, stage: str) -> dict[str, int]:
        """Prints what was cut (if anything); the counts for the stage's summary."""
        if self.truncated:
            print(
                f"{stage}: {self.truncated} of {self.checked} prompts were over "
                f"data.max_prompt_tokens={self.max_tokens}: {self.dropped} of their oldest "
                "history titles left out (data.overlong=refuse stops instead)"
            )
        return {"prompts_truncated": self.truncated, "history_titles_dropped": self.dropped}


def bound_records(
    records: Sequence[Record], enc: GroupEncoder, data: DataConfig, file: Any, stage: str
) -> tuple[list[Record], dict[str, int]]:
    """`records` under data.max_prompt_tokens / data.overlong, and what was cut (printed too)."""
    bound = PromptBound.of(data)
    bounded = bound.records(records, enc, file)
    return bounded, bound.report(stage)
