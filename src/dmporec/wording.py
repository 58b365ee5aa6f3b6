"""The nouns and verbs of the paper's prompt, which the authors' files vary by catalogue.

Every instruction of the authors' files follows one template (the braces are the wording):

    You are an assistant working on {role} recommendations. Here is the user's history of
    {history} they have {past}: <titles> . Rank the likelihood of the user {gerund} the two
    {candidates} <X> and <Y> .

Built in: `movies` (their Amazon Movies and MovieLens-1M files), `games` (their Video Games
files, byte for byte: "working on Video Games recommendations ... of Video Games they have
shopped ... the user shopping the two Video Games"), `books`. Any other catalogue gives its own
five words, e.g. `music,songs,listened to,listening to,songs`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Wording:
    role: str  # "movie" in "working on movie recommendations"
    history: str  # "movies" in "the user's history of movies"
    past: str  # "watched" in "they have watched"
    gerund: str  # "watching" in "the user watching the two"
    candidates: str  # "movies" in "the two movies"

    @property
    def name(self) -> str | None:
        """The built-in name of this wording, or None for a custom one."""
        return next((n for n, w in WORDINGS.items() if w == self), None)

    def to_json(self) -> str | dict[str, str]:
        """The built-in name, or the five words as an object."""
        return self.name or asdict(self)


WORDINGS = {
    "movies": Wording("movie", "movies", "watched", "watching", "movies"),
    "games": Wording("Video Games", "Video Games", "shopped", "shopping", "Video Games"),
    "books": Wording("book", "books", "read", "reading", "books"),
}
FIELDS = ("role", "history", "past", "gerund", "candidates")

# What the template puts between the words; a word containing one would not parse back.
_SEPARATORS = (" recommendations. ", " they have ", ": ", " the two ", "<Title:", ">", "\n")
_WORD = re.compile(r"^\S(?:.*\S)?$")


def check_wording(wording: Wording) -> Wording:
    """Raise ValueError unless every word is non-empty, trimmed and free of the template's seams."""
    for name in FIELDS:
        word = getattr(wording, name)
        if not isinstance(word, str) or not _WORD.match(word):
            raise ValueError(f"wording {name} {word!r} must be non-empty text without edge spaces")
        bad = [s for s in _SEPARATORS if s in word]
        if bad:
            raise ValueError(f"wording {name} {word!r} contains the template's {bad[0]!r}")
    return wording


def resolve_wording(spec: Any) -> Wording:
    """A Wording from a built-in name, 'role,history,past,gerund,candidates', a mapping of the
    five fields, or a Wording; ValueError names what is wrong."""
    if isinstance(spec, Wording):
        return check_wording(spec)
    if isinstance(spec, str):
        if spec in WORDINGS:
            return WORDINGS[spec]
        parts = [p.strip() for p in spec.split(",")]
        if len(parts) != len(FIELDS):
            raise ValueError(
                f"unknown wording {spec!r}: expected one of {sorted(WORDINGS)} or five "
                f"comma-separated words {','.join(FIELDS)} (e.g. 'music,songs,listened to,"
                "listening to,songs')"
            )
        return check_wording(Wording(*parts))
    if isinstance(spec, dict):
        missing = [f for f in FIELDS if f not in spec]
        extra = sorted(set(spec) - set(FIELDS))
        if missing or extra:
            raise ValueError(
                f"a wording object needs exactly the keys {list(FIELDS)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {extra}" if extra else "")
            )
        return check_wording(Wording(**{f: spec[f] for f in FIELDS}))
    raise ValueError(
        f"a wording is a name, five comma-separated words or an object, not {type(spec).__name__}"
    )
