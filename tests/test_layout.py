"""The answer layout has one home (collate.answer_column / split_pairs): checked here against
the texts of a real group, so collate, training, evaluation and ranking cannot drift apart."""

import pytest
import torch

from dmporec.collate import GroupEncoder, answer_column, split_pairs
from dmporec.model import load_tokenizer
from dmporec.prompts import ChatFormat


@pytest.fixture(scope="module")
def encoder(tiny_cfg):
    tok = load_tokenizer(tiny_cfg)
    return GroupEncoder(tok, ChatFormat.from_tokenizer(tok)), tok


def _answers(group):
    return [answer for branch in group.branches for answer in branch.answers]


def _contexts(group):
    return [branch.context for branch in group.branches for _ in branch.answers]


def _first(text, a, b):
    return text.index(a) < text.index(b)


@pytest.mark.parametrize("orders", ["listed", "both"])
def test_answer_columns_hold_the_answers_they_name(encoder, demo, orders):
    enc, tok = encoder
    record = demo.train[0]
    k = 3
    group = enc.group(record, k=k, orders=orders)
    answers, contexts = _answers(group), _contexts(group)
    assert len(answers) == 2 * k * (2 if orders == "both" else 1)
    positive = record.positive.title
    for i in range(k):
        negative = record.negatives[i].title
        for swapped in [False, True] if orders == "both" else [False]:
            chosen = tok.decode(answers[answer_column(i, k=k, swapped=swapped)])
            rejected = tok.decode(answers[answer_column(i, k=k, swapped=swapped, rejected=True)])
            # The chosen answer ranks the positive first, the rejected one the negative.
            assert chosen.index(positive) < chosen.index(negative)
            assert rejected.index(negative) < rejected.index(positive)
            # Both answers of a pair hang off the same pair line.
            column = answer_column(i, k=k, swapped=swapped)
            assert contexts[column] == contexts[column + 1]
            if swapped:  # the same pair, listed the other way round
                line = tok.decode(contexts[column])
                listed = tok.decode(contexts[answer_column(i, k=k)])
                assert _first(line, positive, negative) != _first(listed, positive, negative)
    # split_pairs reads the same columns.
    scores = torch.arange(len(answers), dtype=torch.float32)[None]
    chosen, rejected = split_pairs(scores)
    for p in range(chosen.shape[1]):
        pair, swapped = p % k, p >= k
        assert chosen[0, p] == answer_column(pair, k=k, swapped=swapped)
        assert rejected[0, p] == answer_column(pair, k=k, swapped=swapped, rejected=True)


def test_chosen_only_groups_have_one_column_per_pair(encoder, demo):
    enc, tok = encoder
    record = demo.train[1]
    group = enc.group(record, k=2, answers="chosen", orders="both")
    answers = _answers(group)
    assert len(answers) == 4
    for i in range(2):
        for swapped in (False, True):
            text = tok.decode(answers[answer_column(i, k=2, swapped=swapped, answers="chosen")])
            assert text.index(record.positive.title) < text.index(record.negatives[i].title)
    with pytest.raises(ValueError, match="no rejected"):
        answer_column(0, k=2, rejected=True, answers="chosen")


@pytest.mark.parametrize("bad", [{"orders": "Both"}, {"orders": "swapped"}, {"answers": "all"}])
def test_unknown_orders_or_answers_are_refused(encoder, demo, bad):
    enc, _ = encoder
    with pytest.raises(ValueError, match="must be one of"):
        enc.group(demo.train[0], k=1, **bad)
