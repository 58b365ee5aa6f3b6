"""Building few-shot datasets from raw ratings: every input format, the paper's rules as properties,
determinism, the alpaca round trip, and bad input."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dmporec.alpaca import read_alpaca
from dmporec.build import BuildConfig, build_records, collect, prepare
from dmporec.cli import main
from dmporec.data import load_records
from dmporec.records import DataError, TitleNormalization

SMALL = {"train_users": 3, "valid_users": 2, "test_users": 4, "list_negatives": 4}


def world(n_users: int = 14, seed: int = 0) -> tuple[list[tuple[str, str, float, int]], dict]:
    """Interactions (user, item, rating, time) and titles: most users pass the paper's rules."""
    rng = random.Random(seed)
    titles = {f"I{i:03d}": f"Movie &amp; Title {i}" for i in range(60)}
    titles["I900"] = "Caf\u00e9 Society (2016)"
    rows = []
    for u in range(n_users):
        items = rng.sample(sorted(titles), rng.randint(12, 30))
        for j, item in enumerate(items):
            rating = rng.choice([4.0, 5.0]) if j % 2 else rng.choice([1.0, 2.0, 3.0])
            rows.append((f"U{u:02d}", item, rating, 1_000_000 + rng.randint(0, 10_000)))
    rows.append(("U99", "I001", 5.0, 5))  # a user with too few interactions
    rng.shuffle(rows)
    return rows, titles


def write_raw(tmp: Path, source: str, rows, titles) -> tuple[Path, Path]:
    """The same interactions in one raw format; Amazon files gzip-compressed."""
    if source in ("amazon2014", "amazon2018", "amazon2023"):
        new = source == "amazon2023"
        keys = (
            ("user_id", "parent_asin", "rating", "timestamp")
            if new
            else ("reviewerID", "asin", "overall", "unixReviewTime")
        )
        reviews, meta = tmp / "reviews.json.gz", tmp / "meta.json.gz"
        with gzip.open(reviews, "wt", encoding="utf-8") as f:
            for u, i, r, t in rows:
                obj = dict(zip(keys, (u, i, r, t * 1000 if new else t), strict=True))
                f.write(json.dumps({**obj, "reviewText": "fine"}) + "\n")
        with gzip.open(meta, "wt", encoding="utf-8") as f:
            for i, title in titles.items():
                obj = {keys[1]: i, "title": title, "categories": [["Movies & TV"]]}
                # The 2014 metadata dumps are Python literals, not JSON.
                f.write((str(obj) if source == "amazon2014" else json.dumps(obj)) + "\n")
            f.write(json.dumps({keys[1]: "I999"}) + "\n")  # an item without a title
        return reviews, meta
    if source == "movielens":
        ratings, movies = tmp / "ratings.dat", tmp / "movies.dat"
        ratings.write_text(
            "".join(f"{u}::{i}::{int(r)}::{t}\n" for u, i, r, t in rows), encoding="latin-1"
        )
        movies.write_text(
            "".join(f"{i}::{t}::Drama\n" for i, t in titles.items()), encoding="latin-1"
        )
        return ratings, movies
    ratings, items = tmp / "ratings.csv", tmp / "items.csv"
    ratings.write_text(
        "timestamp,user,item,rating\n" + "".join(f"{t},{u},{i},{r}\n" for u, i, r, t in rows)
    )
    items.write_text("item,title\n" + "".join(f'{i},"{t}"\n' for i, t in titles.items()))
    return ratings, items


@pytest.mark.parametrize("source", ["amazon2014", "amazon2018", "amazon2023", "movielens", "csv"])
def test_every_format_gives_the_same_dataset(tmp_path, source):
    rows, titles = world()
    reviews, meta = write_raw(tmp_path, source, rows, titles)
    stats = prepare(BuildConfig(source=source, **SMALL), reviews, meta, tmp_path / "out", False)
    assert stats["interactions_read"] == len(rows)
    assert stats["users_dropped_few_positives"] == 1  # U99
    assert stats["train_users"] == 3 and stats["valid_users"] == 2 and stats["test_users"] == 4
    records = {
        s: load_records(tmp_path / "out" / f"{s}.jsonl", TitleNormalization.none())
        for s in ("train", "valid", "test")
    }
    assert "Movie & Title" in records["train"][0].positive.title + "".join(
        i.title for r in records["train"] for i in r.history
    )  # entities decoded
    # Every format describes the same ratings, so every format gives the same bytes.
    reference = tmp_path.parent / "reference"
    if not reference.exists():
        ref_rows, ref_titles = world()
        ref_tmp = tmp_path.parent / "reference-raw"
        ref_tmp.mkdir(exist_ok=True)
        r, m = write_raw(ref_tmp, "amazon2018", ref_rows, ref_titles)
        prepare(BuildConfig(source="amazon2018", **SMALL), r, m, reference, False)
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == (
        reference / "train.jsonl"
    ).read_bytes()


def test_outputs_match_the_authors_layout_and_round_trip(tmp_path):
    rows, titles = world()
    reviews, meta = write_raw(tmp_path, "amazon2018", rows, titles)
    cfg = BuildConfig(source="amazon2018", name="rec_Test", **SMALL)
    stats = prepare(cfg, reviews, meta, tmp_path / "out", False)
    out = tmp_path / "out"
    expected = {
        "rec_Test_sft_ranking.json",
        "rec_Test_valid_ranking.json",
        "rec_Test_eval_ranking.json",
        "dataset_info.json",
        "stats.json",
        "train.jsonl",
        "valid.jsonl",
        "test.jsonl",
    }
    expected |= {f"rec_Test_dpo_ranking_{k}.json" for k in range(1, 6)}
    assert set(stats["outputs"]) == expected == {p.name for p in out.iterdir()}
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["rec_Test_dpo_ranking_3"]["ranking"] is True
    assert "ranking" not in info["rec_Test_sft_ranking"]

    train = load_records(out / "train.jsonl", TitleNormalization.none())
    for k in (1, 3, 5):
        rows_k = json.loads((out / f"rec_Test_dpo_ranking_{k}.json").read_text())
        assert len(rows_k) == k * len(train)
        assert isinstance(rows_k[0]["output"], list) and len(rows_k[0]["output"]) == 2
        back = read_alpaca(out / f"rec_Test_dpo_ranking_{k}.json")
        for a, b in zip(back, train, strict=True):
            assert a.history == b.history and a.positive == b.positive
            assert a.negatives == b.negatives[:k]
            assert a.positive_first == b.positive_first[:k]
    sft = json.loads((out / "rec_Test_sft_ranking.json").read_text())
    assert isinstance(sft[0]["output"], str)
    test = load_records(out / "rec_Test_eval_ranking.json", TitleNormalization.none())
    assert [r.positive for r in test] == [
        r.positive for r in load_records(out / "test.jsonl", TitleNormalization.none())
    ]


def test_same_seed_same_bytes_other_seed_other_split(tmp_path):
    rows, titles = world()
    reviews, meta = write_raw(tmp_path, "csv", rows, titles)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        prepare(
            BuildConfig(source="csv", seed=seed, **SMALL), reviews, meta, tmp_path / name, False
        )
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    assert (tmp_path / "a/train.jsonl").read_bytes() != (tmp_path / "c/train.jsonl").read_bytes()


# --- the rules, as properties over random rating sets ---------------------------------------

# Users of 3-12 ratings (many pass min 2 / min 2 / max 9, many do not), on 25 items with
# repeats (duplicates to collapse) and coarse times (ties), interleaved in random file order.
user_ratings = st.lists(
    st.tuples(
        st.integers(0, 24),  # item
        st.sampled_from([1.0, 2.0, 3.0, 3.5, 4.0, 5.0]),
        st.integers(0, 40),  # time: many ties
    ),
    min_size=3,
    max_size=12,
)
ratings = st.lists(user_ratings, min_size=3, max_size=10).flatmap(
    lambda users: st.permutations(
        [(u, i, r, t) for u, rows in enumerate(users) for i, r, t in rows]
    )
)


def reference_kept(rows, cfg: BuildConfig) -> dict[str, list[tuple[str, float, int]]]:
    """The users rules 1-2 keep, with their latest rating per item: a plain-Python reading."""
    latest: dict[tuple[str, str], tuple[int, int, float]] = {}
    for line, (u, i, r, t) in enumerate(rows):
        if (u, i) not in latest or (t, line) >= latest[(u, i)][:2]:
            latest[(u, i)] = (t, line, r)
    per_user: dict[str, list] = {}
    for (u, i), (t, line, r) in latest.items():
        per_user.setdefault(u, []).append((i, r, t, line))
    kept = {}
    for u, items in per_user.items():
        pos = sum(r > cfg.positive_above for _, r, _, _ in items)
        if (
            pos >= cfg.min_positives
            and len(items) - pos >= cfg.min_negatives
            and len(items) <= cfg.max_interactions
        ):
            kept[u] = sorted(items, key=lambda x: (x[2], x[3]))
    return kept


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=ratings, seed=st.integers(0, 3), shared_titles=st.booleans())
def test_rules_hold_for_any_ratings(raw, seed, shared_titles):
    # Items 0-24; with shared_titles two items carry one title (editions of one film).
    titles = {f"i{i}": f"T{i // 2 if shared_titles else i}" for i in range(25)}
    rows = [(f"u{u}", f"i{i}", r, t) for u, i, r, t in raw]
    cfg = BuildConfig(
        source="csv",
        min_positives=2,
        min_negatives=2,
        max_interactions=9,
        negatives=2,
        list_negatives=2,
        train_users=1,
        valid_users=1,
        test_users=3,
        seed=seed,
    )
    counts = {"read": 0, "dropped_no_title": 0}
    cols, _ = collect(iter(rows), titles, counts)
    kept = reference_kept(rows, cfg)
    try:
        splits, stats = build_records(cols, cfg, progress=False)
    except DataError as e:
        if "catalog" in str(e):  # a toy catalog too small to sample from: not what we test
            assume(False)
        passed = int(re.search(r"only (\d+) users pass", str(e)).group(1))
        assert passed <= len(kept) and passed < 3  # too few for train + valid + one test user
        return
    users = [r.user_id for s in splits.values() for r in s]
    assert len(users) == len(set(users))  # splits disjoint
    assert stats["users_kept"] + stats["users_dropped_title_collisions"] == len(kept)
    for record in (r for s in splits.values() for r in s):
        items = kept[record.user_id]  # thresholds respected
        targets = {record.positive.title} | {n.title for n in record.negatives}
        assert len(targets) == 1 + cfg.negatives
        assert not targets & {h.title for h in record.history}  # no target in its history
        ratings_of: dict[str, list[float]] = {}  # a title may be shared by two items
        for i, r, _, _ in items:
            ratings_of.setdefault(titles[i], []).append(r)
        assert max(ratings_of[record.positive.title]) > cfg.positive_above
        assert all(min(ratings_of[n.title]) <= cfg.positive_above for n in record.negatives)
        # The target positive is the latest positive; history keeps time order.
        latest_pos = [titles[i] for i, r, _, _ in items if r > cfg.positive_above][-1]
        assert record.positive.title == latest_pos
        in_time = [titles[i] for i, _, _, _ in items if titles[i] not in targets]
        assert [h.title for h in record.history] == in_time
        listed = record.metadata["list_negatives"]
        assert len(set(listed)) == cfg.list_negatives
        assert not set(listed) & set(ratings_of)
    # Deterministic: the same input and seed give the same records.
    again, _ = build_records(collect(iter(rows), titles, dict(counts))[0], cfg, progress=False)
    assert again == splits


# --- bad input -----------------------------------------------------------------------------


def test_bad_lines_are_counted_with_line_numbers_then_fatal_over_the_limit(tmp_path):
    rows, titles = world()
    reviews, meta = write_raw(tmp_path, "amazon2018", rows, titles)
    with gzip.open(reviews, "rt") as f:
        lines = f.read().splitlines()
    lines[2] = "{not json"
    lines[4] = json.dumps(
        {"reviewerID": "U01", "asin": "I001", "overall": "five", "unixReviewTime": 1}
    )
    lines[6] = json.dumps({"reviewerID": "U01", "overall": 5, "unixReviewTime": 1})
    reviews.write_text("\n".join(lines) + "\n")  # plain text now: read by content, not name
    stats = prepare(BuildConfig(source="amazon2018", **SMALL), reviews, meta, tmp_path / "o", False)
    bad = stats["files"]["reviews"]
    assert bad["bad"] == 3 and bad["lines"] == len(lines)
    assert bad["examples"] == [
        "line 3: not a JSON object",
        "line 5: non-numeric rating or timestamp",
        "line 7: missing field 'asin'",
    ]
    with pytest.raises(DataError, match=r"reviews.json.gz.*3 of \d+ lines are unusable"):
        prepare(
            BuildConfig(source="amazon2018", max_bad_fraction=0.001, **SMALL),
            reviews,
            meta,
            tmp_path / "p",
            False,
        )
    assert not (tmp_path / "p").exists()  # nothing half-written


def test_clear_errors_for_wrong_files(tmp_path, capsys):
    rows, titles = world()
    ratings, items = write_raw(tmp_path, "csv", rows, titles)
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("uid,item,rating,timestamp\nU1,I001,5,1\n")
    with pytest.raises(DataError, match=r"bad.csv, record header: .*lacks column\(s\) \['user'\]"):
        prepare(BuildConfig(source="csv", **SMALL), bad_header, items, tmp_path / "o", False)
    with pytest.raises(DataError, match=r"items.csv: none of its \d+ lines could be read"):
        prepare(BuildConfig(source="amazon2018", **SMALL), ratings, items, tmp_path / "o", False)
    with pytest.raises(DataError, match=r"only \d+ users pass the rules"):
        prepare(BuildConfig(source="csv", train_users=50), ratings, items, tmp_path / "o", False)
    code = main(
        [
            "prepare",
            "--source",
            "csv",
            "--reviews",
            str(tmp_path / "missing.csv"),
            "--meta",
            str(items),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
    code = main(
        [
            "prepare",
            "--source",
            "csv",
            "--reviews",
            str(ratings),
            "--meta",
            str(items),
            "--out",
            str(tmp_path / "o"),
            "--negatives",
            "7",
        ]
    )
    assert code == 2
    assert "negatives (7) must not exceed min_negatives (5)" in capsys.readouterr().err


def test_cli_prepare_end_to_end(tmp_path, capsys):
    rows, titles = world()
    ratings, movies = write_raw(tmp_path, "movielens", rows, titles)
    code = main(
        [
            "prepare",
            "--source",
            "movielens",
            "--ratings",
            str(ratings),
            "--movies",
            str(movies),
            "--out",
            str(tmp_path / "ml"),
            "--name",
            "rec_ml",
            "--train-users",
            "3",
            "--valid-users",
            "2",
            "--test-users",
            "4",
            "--list-negatives",
            "4",
            "--strip-year",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "train 3 / valid 2 / test 4" in out
    titles_out = (tmp_path / "ml" / "train.jsonl").read_text() + (
        tmp_path / "ml" / "test.jsonl"
    ).read_text()
    assert "(2016)" not in titles_out
