"""Turn canonical records into token groups for the scorer (prefix -> pair line -> answers), and
groups into DMPO's training batches (`collate_preferences`).

Worked example, one record with k=2 negatives and the ChatML template:

    prefix   = "<|im_start|>user\\nYou are ... watched:  <Title:Heat>"
    branch 0 = context " . Rank ... <Title:Up>  and  <Title:Jaws> .<|im_end|>\\n<|im_start|>assistant\\n"
               answers [" <Title:Up> ,  <Title:Jaws> <|im_end|>",  (chosen: the positive first)
                        " <Title:Jaws> ,  <Title:Up> <|im_end|>"]  (rejected)
    branch 1 = the same for negative 1

Each segment is tokenized on its own and the pieces are concatenated, so every scorer layout
sees exactly the same token ids.

The answer layout (`answer_column`, `split_pairs`): a group's scores are one column per answer,
branch by branch; with answers='both' column 2p is pair p's chosen answer and 2p+1 its rejected
one. Pairs are the k negatives as listed, then with orders='both' the same k listed the other way
round (pair k+i is pair i swapped). Training, evaluation and ranking read scores only through
these two functions.

A DMPO batch (`PreferenceBatch`) is B users' groups and the reference model's log-probs of their
answers, scored once before training (reference.py), in the same columns as the policy's scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Literal, get_args

import torch

from dmporec.config import ConfigError
from dmporec.item_tokens import has_item_tokens, tagger
from dmporec.model_config import ModelConfig
from dmporec.prompts import ChatFormat, render_pairs
from dmporec.records import Record
from dmporec.scoring import Branch, Group, Tokens

Orders = Literal["listed", "both"]
Answers = Literal["both", "chosen"]


def _check(name: str, value: str, allowed: Any) -> None:
    if value not in get_args(allowed):
        raise ValueError(f"{name} must be one of {get_args(allowed)}, got {value!r}")


def answer_column(
    pair: int, *, k: int, swapped: bool = False, rejected: bool = False, answers: Answers = "both"
) -> int:
    """Column of pair `pair`'s chosen (or `rejected`) answer in the scores of a group built
    with `k` pairs; `swapped`: the same pair listed the other way round (orders='both')."""
    if not 0 <= pair < k:
        raise IndexError(f"pair {pair} out of range for k={k}")
    branch = pair + (k if swapped else 0)
    if answers == "chosen":
        if rejected:
            raise ValueError("a group built with answers='chosen' holds no rejected answers")
        return branch
    return 2 * branch + int(rejected)


def split_pairs(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., 2P] scores of a group built with answers='both' -> (chosen, rejected), [..., P] each,
    pairs in branch order (the listed pairs, then the swapped ones)."""
    return scores[..., 0::2], scores[..., 1::2]


@dataclass(frozen=True)
class PreferenceBatch:
    """One DMPO micro-batch: B users' prompt trees (answers='both') and the reference model's
    summed log-prob of each of their answers, [B, M] in the columns of the policy's scores
    (M = the most answers of a group in the batch; 0 where a group has fewer)."""

    groups: list[Group]
    ref_logps: torch.Tensor


def collate_preferences(examples: Sequence[tuple[Group, torch.Tensor]]) -> PreferenceBatch:
    """DMPO's collate function: (group, its reference log-probs [2P]) per user -> one batch.

    Worked example, k=2, two users, the second with one negative only (P = 2 pairs):

        examples  = [(g0, [-4.1, -6.0, -3.9, -5.2]),   g0: 4 answers (2 pairs)
                     (g1, [-4.4, -5.8,  0.0,  0.0])]   g1: 2 answers, zeros where none
        -> groups    [g0, g1]
           ref_logps [[-4.1, -6.0, -3.9, -5.2],
                      [-4.4, -5.8,  0.0,  0.0]]      [2, 4]

    With g0 a one-negative user too, ref_logps would be [2, 2]: the scorer's width for these
    groups, so the reference lines up with the policy column by column."""
    groups = [group for group, _ in examples]
    width = max(group.n_answers for group in groups)  # score_groups' width for these groups
    ref_logps = torch.stack([ref for _, ref in examples])[:, :width]
    return PreferenceBatch(groups, ref_logps)


class GroupEncoder:
    """Tokenizes records into Groups; `answers` picks 'both' (chosen, rejected) or 'chosen'.
    The instruction's titles carry item tokens when the tokenizer has them (item_tokens.tagger)."""

    def __init__(self, tokenizer: Any, chat: ChatFormat, seed: int = 0) -> None:
        self.tokenizer, self.chat, self.seed = tokenizer, chat, seed
        self.tag = tagger(tokenizer)
        self._encode = lru_cache(maxsize=65536)(self._encode_uncached)

    def _encode_uncached(self, text: str) -> Tokens:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def group(
        self,
        record: Record,
        *,
        k: int | None = None,
        answers: Answers = "both",
        orders: Orders = "listed",
    ) -> Group:
        """One branch per negative; with `orders='both'` a second k branches list each pair the
        other way round (same history prefix), for order-debiased scoring. The module docstring
        gives the layout of the answers."""
        _check("answers", answers, Answers)
        _check("orders", orders, Orders)
        pairs = render_pairs(record, self.seed, tag=self.tag)[: k or None]
        if not pairs:
            raise ValueError(f"record {record.user_id} has no negatives")
        if orders == "both":
            swapped = replace(
                record,
                negatives=record.negatives[: len(pairs)],
                positive_first=[not p.positive_first for p in pairs],
            )
            pairs += render_pairs(swapped, self.seed, tag=self.tag)
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


def model_encoder(tokenizer: Any, model_cfg: ModelConfig, prompt_seed: int) -> GroupEncoder:
    """The GroupEncoder of a run: the tokenizer's chat template as the model config asks; with
    model.item_tokens, the tokenizer must have them (a stage loaded by model.load_stage_model)."""
    if model_cfg.item_tokens != "none" and not has_item_tokens(tokenizer):
        raise ConfigError(
            f"model.item_tokens={model_cfg.item_tokens}: prompts need the item tokens of a "
            "trained stage, and this tokenizer has none"
        )
    chat = ChatFormat.from_tokenizer(
        tokenizer,
        use_chat_template=model_cfg.use_chat_template,
        template_kwargs=model_cfg.chat_template_kwargs,
    )
    return GroupEncoder(tokenizer, chat, prompt_seed)
