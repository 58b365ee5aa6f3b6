"""The paper's prompt and answer strings, and the model's chat template around them."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dmporec.records import Record
from dmporec.wording import WORDINGS, Wording


def title_tag(title: str) -> str:
    """An item as the prompt writes it, with the spaces the authors put around it."""
    return f" <Title:{title}> "


@dataclass(frozen=True)
class Instruction:
    """An instruction split where a user's prompts part: `shared + pair` is the full text.

    `shared` (role line and history) is the same for every candidate pair of a user; `pair`
    names the two candidates. The split sits before a space so each part tokenizes naturally.
    """

    shared: str
    pair: str

    @property
    def text(self) -> str:
        return self.shared + self.pair


Tag = Callable[[str], str]  # how the instruction writes a title: title_tag, or with its item token


def history_text(history: list[str], wording: Wording, *, tag: Tag = title_tag) -> str:
    """The role line and the history: what every candidate pair of a user shares."""
    return (
        f"You are an assistant working on {wording.role} recommendations. "
        f"Here is the user's history of {wording.history} they have {wording.past}: "
        + "".join(tag(t) for t in history)
    )


def render_instruction(
    history: list[str],
    first: str,
    second: str,
    wording: Wording = WORDINGS["movies"],
    *,
    tag: Tag = title_tag,
) -> Instruction:
    """The paper's task input, byte for byte as in the authors' files. `tag` writes each title
    (history and candidates; dmporec.item_tokens' adds an item token after it); it ends with a
    space, as title_tag does.

    >>> render_instruction(["Heat"], "Up", "Jaws").text
    "You are an assistant working on movie recommendations. Here is the user's history of movies they have watched:  <Title:Heat> . Rank the likelihood of the user watching the two movies  <Title:Up>  and  <Title:Jaws> ."
    >>> render_instruction(["Halo 3"], "Up", "Jaws", WORDINGS["games"]).text
    "You are an assistant working on Video Games recommendations. Here is the user's history of Video Games they have shopped:  <Title:Halo 3> . Rank the likelihood of the user shopping the two Video Games  <Title:Up>  and  <Title:Jaws> ."
    """
    head = history_text(history, wording, tag=tag)
    tail = (
        f". Rank the likelihood of the user {wording.gerund} the two {wording.candidates} "
        + tag(first)
        + " and "
        + tag(second)
        + "."
    )
    # head ends with the space after the last title: move it to the pair part.
    return Instruction(head[:-1], " " + tail)


def render_answer(first: str, second: str) -> str:
    """The ranked answer: `first` is the one the user is more likely to pick."""
    return title_tag(first) + ", " + title_tag(second)


def positive_listed_first(record: Record, index: int, seed: int) -> bool:
    """Whether the positive is listed first in the prompt for negative `index`.

    The record's own order wins (the authors' files); otherwise a fair coin seeded by
    (seed, user, index), so the order is random but the same on every run.
    """
    if record.positive_first is not None:
        return record.positive_first[index]
    return random.Random(f"{seed}:{record.user_id}:{index}").random() < 0.5


@dataclass(frozen=True)
class PairTexts:
    """Everything the model reads and writes for one (positive, negative_i) pair."""

    instruction: Instruction
    chosen: str  # positive ranked first
    rejected: str  # negative ranked first
    positive_first: bool  # listing order in the prompt


def render_pairs(record: Record, seed: int = 0, *, tag: Tag = title_tag) -> list[PairTexts]:
    """One PairTexts per negative of the record, in the record's negative order; `tag` writes
    the instruction's titles (render_instruction), never the answers'."""
    history = [item.title for item in record.history]
    pos = record.positive.title
    out = []
    for i, neg in enumerate(record.negatives):
        pos_first = positive_listed_first(record, i, seed)
        first, second = (pos, neg.title) if pos_first else (neg.title, pos)
        out.append(
            PairTexts(
                instruction=render_instruction(history, first, second, record.wording, tag=tag),
                chosen=render_answer(pos, neg.title),
                rejected=render_answer(neg.title, pos),
                positive_first=pos_first,
            )
        )
    return out


_SENTINEL = "\u2063DMPOREC_SENTINEL\u2063"


@dataclass(frozen=True)
class ChatFormat:
    """What the model's chat template puts around a user message and after an answer.

    `prefix + instruction + suffix` is exactly what `apply_chat_template(..., add_generation_prompt=True)`
    renders; `answer_end` is appended to every answer (the end-of-turn token) so the model also learns
    to stop. Without a chat template, the instruction is followed by a newline, and starts with
    the tokenizer's BOS token when the tokenizer adds one to plain text (Gemma does: a base model
    scores text without its BOS far worse).
    """

    prefix: str
    suffix: str
    answer_end: str

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        *,
        use_chat_template: bool = True,
        template_kwargs: dict[str, Any] | None = None,
    ) -> ChatFormat:
        eos = tokenizer.eos_token or ""
        if not use_chat_template or not getattr(tokenizer, "chat_template", None):
            bos = tokenizer.bos_token
            adds_bos = bos is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
            return cls(bos if adds_bos else "", "\n", eos)
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}],
            tokenize=False,
            add_generation_prompt=True,
            **(template_kwargs or {}),
        )
        if rendered.count(_SENTINEL) != 1:
            raise ValueError(
                "the tokenizer's chat template does not render the user message verbatim"
            )
        prefix, suffix = rendered.split(_SENTINEL)
        return cls(prefix, suffix, eos)
