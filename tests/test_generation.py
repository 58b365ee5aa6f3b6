"""Greedy generation parsed back to titles: the parser, the report, and a run on the tiny model."""

import math

import pytest

from dmporec.generation import generate_answers, generation_report, parse_generated
from dmporec.prompts import ChatFormat


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        (" <Title:Up> ,  <Title:Jaws> ", True),
        ("<Title:Up> ,  <Title:Jaws>", True),  # surrounding space aside
        (" <Title:Jaws> ,  <Title:Up> ", False),
        (" <Title:Up> ,  <Title:Heat> ", None),  # not the pair's candidates
        (" <Title:Up> ,  <Title:Up> ", None),
        ("I would pick Up.", None),
        (" <Title:Up> ,  <Title:Jaws> ,  <Title:Heat> ", None),
        ("", None),
    ],
)
def test_parse_generated(text, verdict):
    assert parse_generated(text, "Up", "Jaws") is verdict


def test_report_counts_invalid_answers_as_wrong():
    rows = [
        {"valid": True, "correct": True, "positive_listed_first": True},
        {"valid": True, "correct": False, "positive_listed_first": True},
        {"valid": False, "correct": False, "positive_listed_first": False},
        {"valid": True, "correct": True, "positive_listed_first": False},
    ]
    r = generation_report(rows, n_boot=50)
    assert r["valid_ratio"] == 0.75 and r["generated_accuracy"] == 0.5
    assert r["generated_accuracy_of_valid"] == pytest.approx(2 / 3)
    # Of the three valid answers only row 0 ranks the first-listed title first.
    assert r["generated_first_listed_rate"] == pytest.approx(1 / 3)
    assert r["valid_ratio_ci_low"] <= 0.75 <= r["valid_ratio_ci_high"]
    assert math.isnan(generation_report([rows[2]], n_boot=10)["generated_accuracy_of_valid"])


def test_generation_on_the_tiny_model(tiny, demo):
    model, tokenizer = tiny
    chat = ChatFormat.from_tokenizer(tokenizer)
    side = tokenizer.padding_side
    rows = generate_answers(model, tokenizer, chat, demo.test[:3], prompt_seed=0, batch_size=2)
    assert tokenizer.padding_side == side  # restored
    assert [(r["user_id"], r["negative"]) for r in rows] == [
        (rec.user_id, n.title) for rec in demo.test[:3] for n in rec.negatives
    ]
    for r in rows:
        assert isinstance(r["generated"], str)
        assert r["valid"] == (
            parse_generated(r["generated"], r["positive"], r["negative"]) is not None
        )
