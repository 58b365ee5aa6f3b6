import json
import re

import pytest

from dmporec.records import (
    DataError,
    Item,
    Record,
    TitleNormalization,
    clean_records,
    normalize_title,
    read_records,
    write_records,
)
from dmporec.wording import WORDINGS, resolve_wording


def test_title_normalization_choices():
    raw = "  R.I.P.D. Brigade fant&ocirc;me   Sous-titres  (1995) "
    assert (
        normalize_title(raw, TitleNormalization()) == "R.I.P.D. Brigade fantôme Sous-titres (1995)"
    )
    assert (
        normalize_title(raw, TitleNormalization(strip_year=True))
        == "R.I.P.D. Brigade fantôme Sous-titres"
    )
    assert normalize_title(raw, TitleNormalization.none()) == raw
    assert normalize_title("Toy Story ", TitleNormalization()) == normalize_title(
        "Toy Story (1995)", TitleNormalization(strip_year=True)
    )


def test_jsonl_round_trip(tmp_path):
    recs = [
        Record(
            "u1",
            [Item("A", "i1"), Item("B")],
            Item("P"),
            [Item("N")],
            WORDINGS["books"],
            [False],
            {"x": 1},
        ),
        Record("u2", [Item("A")], Item("P"), [Item("N")], resolve_wording("a,b,c,d,e")),
    ]
    write_records(tmp_path / "r.jsonl", recs)
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert lines[0]["domain"] == "books"
    assert lines[1]["domain"] == dict(role="a", history="b", past="c", gerund="d", candidates="e")
    assert read_records(tmp_path / "r.jsonl") == recs


@pytest.mark.parametrize(
    "line,field",
    [
        ({"user_id": "u", "history": [], "positive": "P", "negatives": ["N"]}, "history"),
        ({"user_id": "u", "history": ["A"], "positive": "P", "negatives": []}, "negatives"),
        ({"user_id": "u", "history": ["A"], "negatives": ["N"]}, "positive"),
        (
            {
                "user_id": "u",
                "history": ["A"],
                "positive": "P",
                "negatives": ["N"],
                "domain": "cars",
            },
            "domain",
        ),
        ({"user_id": "u", "history": "A", "positive": "P", "negatives": ["N"]}, "history"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "bad.jsonl"
    good = {"user_id": "g", "history": ["A"], "positive": "P", "negatives": ["N"]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(DataError) as e:
        read_records(path)
    msg = str(e.value)
    assert "bad.jsonl" in msg and "line 2" in msg and f"'{field}'" in msg


def test_malformed_json_and_missing_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"user_id": "u",\n')
    with pytest.raises(DataError, match=r"bad.jsonl.*line 1.*malformed JSON"):
        read_records(path)
    with pytest.raises(DataError, match="file not found"):
        read_records(tmp_path / "nope.jsonl")


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    write_records(path, [Record("u", [Item("A")], Item("P"), [Item("N")])])
    before = path.read_text()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr("dmporec.records.os.replace", crash)
    with pytest.raises(OSError):
        write_records(path, [Record("v", [Item("B")], Item("Q"), [Item("M")])])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]


def test_records_without_signal_are_cleaned_and_counted():
    r = Record(
        "u",
        [Item("A"), Item("P")],
        Item("P"),
        [Item("N"), Item("P"), Item("N"), Item("M")],
        positive_first=[True, False, True, False],
    )
    empty = Record("v", [Item("A")], Item("P"), [Item("P")])
    kept, counts = clean_records([r, empty])
    assert counts == {
        "negative_equals_positive": 2,
        "duplicate_negative": 1,
        "positive_in_history": 1,
        "records": 1,
    }
    (clean,) = kept
    assert [n.title for n in clean.negatives] == ["N", "M"] and clean.positive_first == [
        True,
        False,
    ]
    assert [h.title for h in clean.history] == ["A"]
    assert clean_records([clean])[1] == dict.fromkeys(counts, 0)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"user_id": null, "history": ["A"], "positive": "P", "negatives": ["N"]}'], "'user_id'"),
        (['{"user_id": "", "history": ["A"], "positive": "P", "negatives": ["N"]}'], "'user_id'"),
        (
            ['{"user_id": 1, "history": ["A"], "positive": "P", "negatives": ["N"]}'] * 2,
            "record 1, field 'user_id': user '1' appears again (first as record 0)",
        ),
    ],
)
def test_user_ids_are_real_and_unique(tmp_path, lines, message):
    path = tmp_path / "users.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(message)):
        read_records(path)
