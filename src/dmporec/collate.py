"""Turn canonical records into token groups for the scorer (prefix -> pair line -> answers).

Worked example, one record with k=2 negatives and the ChatML template:

    prefix   = "<|im_start|>user\\nYou are ... watched:  <Title:Heat>"
    branch 0 = context " . Rank ... <Title:Up>  and  <Title:Jaws> .<|im_end|>\\n<|im_start|>assistant\\n"
               answers [" <Title:Up> ,  <Title:Jaws> <|im_end|>",  (chosen: the positive first)
                        " <Title:Jaws> ,  <Title:Up> <|im_end|>"]  (rejected)
    branch 1 = the same for negative 1

Each segment is tokenized on its own and the pieces are concatenated, so every scorer layout
sees exactly the same token ids.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any

from dmporec.prompts import ChatFormat, render_pairs
from dmporec.records import Record
from dmporec.scoring import Branch, Group, Tokens


class GroupEncoder:
    """Tokenizes records into Groups; `answers` picks 'both' (chosen, rejected) or 'chosen'."""

    def __init__(self, tokenizer: Any, chat: ChatFormat, seed: int = 0) -> None:
        self.tokenizer, self.chat, self.seed = tokenizer, chat, seed
        self._encode = lru_cache(maxsize=65536)(self._encode_uncached)

    def _encode_uncached(self, text: str) -> Tokens:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def group(
        self,
        record: Record,
        *,
        k: int | None = None,
        answers: str = "both",
        orders: str = "listed",
    ) -> Group:
        """One branch per negative; with `orders='both'` a second k branches list each pair the
        other way round (same history prefix), for order-debiased scoring."""
        pairs = render_pairs(record, self.seed)[: k or None]
        if not pairs:
            raise ValueError(f"record {record.user_id} has no negatives")
        if orders == "both":
            swapped = replace(
                record,
                negatives=record.negatives[: len(pairs)],
                positive_first=[not p.positive_first for p in pairs],
            )
            pairs += render_pairs(swapped, self.seed)
        prefix = self._encode(self.chat.prefix + pairs[0].instruction.shared)
        branches = []
        for pair in pairs:
            texts = [pair.chosen] if answers == "chosen" else [pair.chosen, pair.rejected]
            branches.append(
                Branch(
                    context=self._encode(pair.instruction.pair + self.chat.suffix),
                    answers=tuple(self._encode(t + self.chat.answer_end) for t in texts),
                )
            )
        return Group(prefix, tuple(branches))
