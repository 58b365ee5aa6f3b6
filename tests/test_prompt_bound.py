"""data.max_prompt_tokens / data.overlong: every prompt is bounded before any model work, in
training, evaluation, recommend and serve; history is cut from the oldest side or refused."""

import json
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from dmporec.cli import main
from dmporec.collate import GroupEncoder
from dmporec.config import DataConfig
from dmporec.model import load_tokenizer
from dmporec.prompt_bound import PromptBound, longest_sequence, newest_that_fit
from dmporec.prompts import ChatFormat
from dmporec.ranker import Ranker
from dmporec.records import DataError, Item, write_records
from dmporec.serve import Limits, create_app


@pytest.fixture(scope="module")
def enc(tiny_cfg):
    tok = load_tokenizer(tiny_cfg)
    return GroupEncoder(tok, ChatFormat.from_tokenizer(tok))


def test_newest_that_fit_is_the_largest_history_under_the_limit():
    calls = []

    def tokens(kept):
        calls.append(kept)
        return 10 + 3 * kept

    assert newest_that_fit(5, tokens, 100) == 5
    assert newest_that_fit(50, tokens, 40) == 10
    assert newest_that_fit(70_000, tokens, 40) == 10
    assert max(calls) <= 40  # never more items than tokens in the limit
    assert newest_that_fit(3, lambda kept: 50 + kept, 40) is None


def _long(record, n):
    titles = [f"Film number {i} of the long history" for i in range(n)]
    return replace(record, history=[Item(t) for t in titles])


def test_records_keep_their_newest_history_that_fits(enc, demo):
    record = _long(demo.train[0], 300)
    bound = PromptBound(400)
    (cut,) = bound.records([record], enc)
    assert 1 < len(cut.history) < 300
    assert cut.history == record.history[-len(cut.history) :]  # the newest ones, in order
    assert longest_sequence(enc.group(cut, orders="both")) <= 400
    one_more = replace(record, history=record.history[-len(cut.history) - 1 :])
    assert longest_sequence(enc.group(one_more, orders="both")) > 400
    assert bound.report("sft") == {
        "prompts_truncated": 1,
        "history_titles_dropped": 300 - len(cut.history),
    }
    short = demo.train[1]
    assert PromptBound(400).records([short], enc) == [short]  # untouched when it fits


def test_seventy_thousand_titles_are_cut_without_tokenizing_them_all(enc, demo):
    (cut,) = PromptBound(256).records([_long(demo.train[0], 70_000)], enc)
    assert 0 < len(cut.history) <= 256


def test_refuse_and_unfittable_candidates_name_the_record(enc, demo):
    record = _long(demo.train[0], 300)
    with pytest.raises(DataError, match=r"record .*history.*max_prompt_tokens=400.*overlong"):
        PromptBound(400, "refuse").records([record], enc, "train.jsonl")
    huge = replace(demo.train[0], positive=Item("word " * 3000))
    with pytest.raises(DataError, match=r"field 'candidates': the candidate titles alone make"):
        PromptBound(400).records([huge], enc, "train.jsonl")
    # A history title too long on its own is the history's fault.
    long_title = replace(demo.train[0], history=(*demo.train[0].history, Item("word " * 3000)))
    with pytest.raises(DataError, match=r"field 'history': even the newest history title"):
        PromptBound(400).records([long_title], enc, "train.jsonl")


def test_sft_counts_truncated_prompts_and_refuse_stops_with_one_line(tmp_path, demo, capsys):
    records = [_long(demo.train[0], 200), *demo.train[1:4]]
    data = tmp_path / "train.jsonl"
    write_records(data, records)
    args = [
        "model.name=builtin:tiny-qwen3",
        f"data.sft_train={data}",
        "sft.epochs=1",
        "sft.batch_size=2",
        "data.max_prompt_tokens=300",
    ]
    assert main(["sft", *args, f"output_dir={tmp_path / 'a'}"]) == 0
    summary = json.loads((tmp_path / "a/sft/summary.json").read_text())
    assert summary["prompts_truncated"] == 1 and summary["history_titles_dropped"] > 0
    assert "1 of 4 prompts were over data.max_prompt_tokens=300" in capsys.readouterr().out
    code = main(["sft", *args, "data.overlong=refuse", f"output_dir={tmp_path / 'b'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"record {records[0].user_id}" in err and "max_prompt_tokens=300" in err
    assert not (tmp_path / "b/sft/adapter").exists()


def test_recommend_and_serve_bound_the_history(tiny, tiny_cfg):
    history = [f"Film number {i} of the long history" for i in range(300)]
    ranker = Ranker.create(tiny[0], tiny[1], tiny_cfg, "tiny")
    ranker.data_cfg = DataConfig(max_prompt_tokens=300)
    request = ranker.request(history, ["Up", "Heat"])
    assert 0 < len(request.history) < 300 and request.history[-1] == history[-1]
    ranker.data_cfg = DataConfig(max_prompt_tokens=300, overlong="refuse")
    limits = Limits(max_body_bytes=1 << 20, max_history=1000)
    app = create_app(ranker, limits, max_batch=1, batch_wait_ms=0)
    with TestClient(app) as client:
        r = client.post("/v1/rank", json={"history": history, "candidates": ["Up", "Heat"]})
        assert r.status_code == 422 and "max_prompt_tokens=300" in r.text
        r = client.post(
            "/v1/explain", json={"history": history, "candidate": "Up", "versus": ["Heat"]}
        )
        assert r.status_code == 422 and "max_prompt_tokens=300" in r.text


def _listed(record, n_history, long_title):
    """A record whose pairs are short but whose list candidates are long sampled titles."""
    cut = _long(record, n_history)
    negatives = [f"{long_title} {i}" for i in range(3)]
    return replace(cut, metadata={**cut.metadata, "list_negatives": negatives})


def test_list_prompts_are_bounded_by_their_longest_pair(tiny, tiny_cfg, demo):
    from dmporec.config import EvalConfig
    from dmporec.evaluation import score_lists
    from dmporec.ranking import PairEncoder, RankRequest

    model, tok = tiny
    pair_enc = PairEncoder(tok, ChatFormat.from_tokenizer(tok))
    long_title = "A sampled title far longer than any of the user's own candidates"
    request = RankRequest(
        tuple(f"Film number {i} of the long history" for i in range(300)),
        ("Up", f"{long_title} 1", f"{long_title} 2"),
        demo.train[0].wording,
    )
    bound = PromptBound(800)
    cut = pair_enc.bounded(request, bound, record="u1")
    assert 0 < len(cut.history) < 300 and cut.history == request.history[-len(cut.history) :]
    longest = max(longest_sequence(g) for g in pair_enc.groups(cut, max_group_tokens=10**6))
    assert longest <= 800
    one_more = replace(cut, history=request.history[-len(cut.history) - 1 :])
    assert max(longest_sequence(g) for g in pair_enc.groups(one_more, 10**6)) > 800

    record = _listed(demo.test[0], 30, long_title)
    # The record's own pairs fit in 800 tokens with all 30 titles; its list prompts do not.
    assert longest_sequence(GroupEncoder(tok, pair_enc.chat).group(record, orders="both")) <= 800
    ec = EvalConfig(listwise=4)
    bound = PromptBound(800)
    (row,) = score_lists(model, tok, tiny_cfg, [record], ec, bound=bound, file="test.jsonl")
    assert bound.truncated == 1 and 0 < bound.dropped < 30
    assert len(row["scores"]) == 4 and sum(row["scores"]) == pytest.approx(2.0)
    with pytest.raises(DataError, match=r"test.jsonl.*record .*max_prompt_tokens=800"):
        score_lists(
            model, tok, tiny_cfg, [record], ec, bound=PromptBound(800, "refuse"), file="test.jsonl"
        )


def test_generated_prompts_leave_room_for_the_answer(tiny, demo):
    from dmporec.generation import generate_answers

    model, tok = tiny
    chat = ChatFormat.from_tokenizer(tok)
    record = _long(demo.test[0], 300)
    bound = PromptBound(400)
    rows = generate_answers(model, tok, chat, [record], 0, batch_size=8, bound=bound)
    assert len(rows) == record.k and bound.truncated == 1 and 0 < bound.dropped < 300
    with pytest.raises(DataError, match=r"record .*max_prompt_tokens=400"):
        generate_answers(model, tok, chat, [record], 0, bound=PromptBound(400, "refuse"))
