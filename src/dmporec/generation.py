"""Greedy generation of the ranking answer, parsed back to titles, as the peers measure it.

S-DPO and LLaRA report HitRatio@1 with a ValidRatio: the share of generated answers that are
well formed and name exactly the given candidates. Here each test pair is asked in its listed
order, the answer is generated greedily up to the end-of-turn token, and parsed with the paper's
answer format (` <Title:A> ,  <Title:B> `):

- valid: the answer parses, and its two titles are the pair's two candidates (in either order);
- correct: valid, with the positive ranked first. An invalid answer counts as wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dmporec.alpaca import parse_answer
from dmporec.item_tokens import tagger
from dmporec.metrics import bootstrap_ci
from dmporec.prompt_bound import PromptBound
from dmporec.prompts import ChatFormat, PairTexts, render_answer, render_pairs
from dmporec.records import DataError, Record

ANSWER_SLACK = 8  # new tokens allowed past the longest well-formed answer


def parse_generated(text: str, positive: str, negative: str) -> bool | None:
    """True when the answer ranks the positive first, False when the negative, None when it is
    not a ranking of exactly these two titles in the paper's format (surrounding space aside)."""
    try:
        first, second = parse_answer(" " + text.strip() + " ", where={})
    except DataError:
        return None
    if {first, second} != {positive, negative} or first == second:
        return None
    return first == positive


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    chat: ChatFormat,
    records: list[Record],
    prompt_seed: int,
    batch_size: int = 16,
    desc: str = "generate",
    bound: PromptBound | None = None,
    file: Any = None,
) -> list[dict[str, Any]]:
    """One row per (user, negative) in listed order: the generated text and what it says.
    With `bound`, a record's history is cut (or refused) so that its longest prompt plus the
    tokens it may generate stays within it."""

    tag = tagger(tokenizer)  # item tokens in the instruction, if the model has them

    def answer_tokens(record: Record, i: int) -> int:
        """The most new tokens a pair may generate: its longest answer, and some slack."""
        answer = render_answer(record.positive.title, record.negatives[i].title)
        return len(tokenizer(answer, add_special_tokens=False).input_ids) + ANSWER_SLACK

    def prompt(pair: PairTexts) -> str:
        return chat.prefix + pair.instruction.text + chat.suffix

    def tokens(record: Record) -> int:
        """The longest of the record's prompts plus the tokens it may generate."""
        return max(
            len(tokenizer(prompt(p), add_special_tokens=False).input_ids) + answer_tokens(record, i)
            for i, p in enumerate(render_pairs(record, prompt_seed, tag=tag))
        )

    if bound is not None:
        records = [bound.cut(r, tokens, file=file, record=r.user_id) for r in records]
    pairs = [
        (record, i, pair)
        for record in records
        for i, pair in enumerate(render_pairs(record, prompt_seed, tag=tag))
    ]
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    model.eval()
    rows = []
    try:
        for start in tqdm(range(0, len(pairs), batch_size), desc=desc, unit="batch"):
            chunk = pairs[start : start + batch_size]
            prompts = [prompt(p) for _, _, p in chunk]
            enc = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
            out = model.generate(
                input_ids=enc.input_ids.to(device),
                attention_mask=enc.attention_mask.to(device),
                max_new_tokens=max(answer_tokens(r, i) for r, i, _ in chunk),
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(
                out[:, enc.input_ids.shape[1] :], skip_special_tokens=True
            )
            for (record, i, pair), text in zip(chunk, texts, strict=True):
                verdict = parse_generated(text, record.positive.title, record.negatives[i].title)
                rows.append(
                    {
                        "user_id": record.user_id,
                        "positive": record.positive.title,
                        "negative": record.negatives[i].title,
                        "positive_listed_first": pair.positive_first,
                        "generated": text,
                        "valid": verdict is not None,
                        "correct": bool(verdict),
                    }
                )
    finally:
        tokenizer.padding_side = side
    return rows


def generation_report(
    rows: list[dict[str, Any]], seed: int = 0, n_boot: int = 1000
) -> dict[str, float]:
    """ValidRatio and the accuracy of the generated order (invalid = wrong), with 95% CIs, and
    the accuracy among valid answers."""
    valid = np.array([r["valid"] for r in rows], float)
    correct = np.array([r["correct"] for r in rows], float)
    report: dict[str, float] = {"generated_pairs": len(rows)}
    for name, x in (("valid_ratio", valid), ("generated_accuracy", correct)):
        low, high = bootstrap_ci(np.mean, x, n_boot=n_boot, seed=seed)
        report.update({name: float(x.mean()), f"{name}_ci_low": low, f"{name}_ci_high": high})
    ok = valid > 0
    first = np.array([r["positive_listed_first"] for r in rows], bool)
    report["generated_accuracy_of_valid"] = float(correct[ok].mean()) if ok.any() else float("nan")
    # Among valid answers: how often the first-listed candidate is ranked first (0.5 = no bias).
    report["generated_first_listed_rate"] = (
        float(((correct > 0) == first)[ok].mean()) if ok.any() else float("nan")
    )
    return report
