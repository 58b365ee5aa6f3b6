import json
from dataclasses import replace
from pathlib import Path

import pytest

from dmporec.alpaca import read_alpaca, to_alpaca_rows, write_alpaca
from dmporec.records import DataError, TitleNormalization, read_records, write_records
from dmporec.wording import WORDINGS, resolve_wording

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dmpo"


def test_round_trip_through_alpaca(tmp_path, demo):
    for kind in ("sft", "dpo", "eval"):
        path = tmp_path / f"{kind}.json"
        write_alpaca(path, demo.train, kind, seed=3)
        back = read_alpaca(path, TitleNormalization.none())
        rows = json.loads(path.read_text())
        assert to_alpaca_rows(back, kind) == rows  # byte-exact prompts and answers
        # k consecutive rows of a user (same history, same positive) -> one record
        assert [r.k for r in back] == [5] * len(demo.train)
        assert [[i.title for i in r.negatives] for r in back] == [
            [i.title for i in r.negatives] for r in demo.train
        ]
        assert [r.positive.title for r in back] == [r.positive.title for r in demo.train]


@pytest.mark.parametrize("wording", ["movies", "games", "books", "music,songs,heard,hearing,songs"])
def test_every_file_kind_round_trips_for_every_wording(tmp_path, demo, wording):
    """sft rows, dpo_ranking_k rows and eval rows (list and string output) of any wording read
    back to the same records and write back to the same rows."""
    records = [replace(r, wording=resolve_wording(wording)) for r in demo.train]
    for kind in ("sft", "dpo", "eval"):
        path = tmp_path / f"{kind}.json"
        write_alpaca(path, records, kind, seed=1)
        back = read_alpaca(path, TitleNormalization.none())
        assert to_alpaca_rows(back, kind) == json.loads(path.read_text())
        assert {r.wording for r in back} == {resolve_wording(wording)}
        assert [(r.history, r.positive) for r in back] == [(r.history, r.positive) for r in records]
        if kind != "sft":
            assert [r.negatives for r in back] == [r.negatives for r in records]


# Two rows of the authors' rec_Amazon_Game_dpo_ranking_2.json layout (real wording; a title with a
# leading space and one with a comma, as their files have).
GAMES_ROWS = [
    {
        "instruction": "You are an assistant working on Video Games recommendations. Here is the "
        "user's history of Video Games they have shopped:  <Title:Halo 3 - Xbox 360>  <Title: "
        "Microsoft SideWinder X5 Mouse> . Rank the likelihood of the user shopping the two Video "
        "Games  <Title:Burnout Paradise - Playstation 3>  and  <Title:Crazy Taxi> .",
        "input": "",
        "output": [
            " <Title:Crazy Taxi> ,  <Title:Burnout Paradise - Playstation 3> ",
            " <Title:Burnout Paradise - Playstation 3> ,  <Title:Crazy Taxi> ",
        ],
    },
    {
        "instruction": "You are an assistant working on Video Games recommendations. Here is the "
        "user's history of Video Games they have shopped:  <Title:Halo 3 - Xbox 360>  <Title: "
        "Microsoft SideWinder X5 Mouse> . Rank the likelihood of the user shopping the two Video "
        "Games  <Title:Crazy Taxi>  and  <Title:Cable for Xbox 360, Wii, PS3> .",
        "input": "",
        "output": [
            " <Title:Crazy Taxi> ,  <Title:Cable for Xbox 360, Wii, PS3> ",
            " <Title:Cable for Xbox 360, Wii, PS3> ,  <Title:Crazy Taxi> ",
        ],
    },
]


def test_video_games_rows_read_as_one_user_and_write_back_byte_exact(tmp_path):
    path = tmp_path / "rec_Amazon_Game_dpo_ranking_2.json"
    path.write_text(json.dumps(GAMES_ROWS))
    (record,) = read_alpaca(path, TitleNormalization.none())
    assert record.wording == WORDINGS["games"] and record.wording.name == "games"
    assert [i.title for i in record.history] == [
        "Halo 3 - Xbox 360",
        " Microsoft SideWinder X5 Mouse",
    ]
    assert record.positive.title == "Crazy Taxi" and record.positive_first == [False, True]
    assert to_alpaca_rows([record], "dpo") == GAMES_ROWS
    # As canonical JSON lines the wording travels as its name.
    write_records(tmp_path / "r.jsonl", [record])
    assert json.loads((tmp_path / "r.jsonl").read_text())["domain"] == "games"
    assert read_records(tmp_path / "r.jsonl") == [record]


def test_string_output_eval_rows_like_ml1m(tmp_path, demo):
    rows = to_alpaca_rows(demo.test, "sft")  # output stored as the chosen string alone
    (tmp_path / "eval.json").write_text(json.dumps(rows))
    back = read_alpaca(tmp_path / "eval.json")
    assert [r.positive.title for r in back] == [r.positive.title for r in demo.test]


def _write(tmp_path, rows):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    return path


GOOD = {
    "instruction": "You are an assistant working on movie recommendations. Here is the user's history of movies "
    "they have watched:  <Title:A> . Rank the likelihood of the user watching the two movies  <Title:X>  and  <Title:Y> .",
    "input": "",
    "output": [" <Title:Y> ,  <Title:X> ", " <Title:X> ,  <Title:Y> "],
}


@pytest.mark.parametrize(
    "row,field,message",
    [
        (
            {**GOOD, "output": [" <Title:Z> ,  <Title:X> ", " <Title:X> ,  <Title:Z> "]},
            "output",
            "not among the prompt's candidates",
        ),
        ({k: v for k, v in GOOD.items() if k != "output"}, "output", "missing"),
        (
            {**GOOD, "instruction": GOOD["instruction"].replace(" <Title:A> ", "")},
            "instruction",
            "history",
        ),
        ({**GOOD, "instruction": "Rank these."}, "instruction", "paper's prompt template"),
        (
            {**GOOD, "instruction": GOOD["instruction"].replace("watched:", "watched: ok:")},
            "instruction",
            "expected '<Title:...>' items, got 'ok:  <Title:A> '",
        ),
        (
            {**GOOD, "output": [" <Title:Y> ,  <Title:X> ", " <Title:Y> ,  <Title:X> "]},
            "output[1]",
            "reversed",
        ),
    ],
)
def test_bad_rows_name_file_record_and_field(tmp_path, row, field, message):
    with pytest.raises(DataError) as e:
        read_alpaca(_write(tmp_path, [GOOD, row]))
    text = str(e.value)
    assert "rows.json" in text and "record 1" in text and field in text and message in text


def test_malformed_file(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("[{")
    with pytest.raises(DataError, match="rows.json.*malformed JSON"):
        read_alpaca(path)
    with pytest.raises(DataError, match="file not found"):
        read_alpaca(tmp_path / "missing.json")
    # Records (the .jsonl layout) in a .json file: the error says which layout goes where.
    record = {"user_id": "u", "history": ["A"], "positive": "P", "negatives": ["N"]}
    path.write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(
        DataError, match=r"Extra data.*JSON lines, one record each, go in a \.jsonl"
    ):
        read_alpaca(path)
    path.write_text(json.dumps([record]))
    with pytest.raises(DataError, match=r"record 0, field 'instruction': missing \(this row is a "):
        read_alpaca(path)


@pytest.mark.skipif(not SHARED.is_dir(), reason="the authors' files are not beside this checkout")
def test_authors_files_round_trip_exactly():
    for path in sorted(SHARED.glob("*.json")):
        rows = json.loads(path.read_text())
        records = read_alpaca(path, TitleNormalization.none())
        kind = "sft" if isinstance(rows[0]["output"], str) else "dpo"
        assert to_alpaca_rows(records, kind) == rows, path.name
        if "dpo_ranking_3" in path.name:
            assert {r.k for r in records} == {3} and len(records) == 100
