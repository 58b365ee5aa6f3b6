"""The learning curve's data: MovieLens-1M users built with the authors' rules, N training users each.

    .venv/bin/python benchmarks/learning_curve.py [--out runs/learning-curve/data]
        [--sizes 100,400,1000,1686] [--valid-users 60] [--list-users 100]
    .venv/bin/dmporec experiment --config configs/experiments/learning-curve-ml1m.yaml

The curve itself is an experiment file (configs/experiments/learning-curve-ml1m.yaml): its cells,
paired tests, extra evaluations, plot and publication are `dmporec experiment`'s. This script
builds what that file reads, from ../shared/data/raw/ml-1m-users-1-2999:

1. `dmporec prepare --rules authors`: the test pairs are the authors' 1000 (each test user's first
   negative, as their eval file has it: 929 of their records identical, the rest differing only
   in their U+FFFD titles), validation the next 100 users, and the training pool the first 100
   qualifying users plus the 1,586 after validation.
2. train_N.jsonl: the first N users of that pool, in id order (the N are prefixes of one pool).
3. valid_U.jsonl: the first U validation users, all their negatives (the learning-rate probe).
4. hybrid_valid.jsonl: the users the hybrid ranker is fitted on (#34): the 100 validation users
   and the training pool's users after its first 1000 (686; no cell with N <= 1000 trains on
   them, the 1,686-user cell would), each with its first negative only, as the test pairs have
   it (later negatives are harder: like-rate 0.618 on all five test negatives, 0.648 on the
   first).
5. test_list_U.jsonl: the first U test users, each with its first negative (the test pair) and the
   builder's sampled titles it never rated (`list_negatives`: a list's other candidates).
6. label_counts.json: what the training labels alone carry, per N: each test candidate scored by
   how often it was a training user's positive (no histories, no model; ties count half). An LLM
   trained on those N answers that learned no more than "this title was chosen" would score this.

Files already there are kept when they are what this build writes, and stop the script when they
are not (results made from them would be relabelled).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from dmporec.baselines import Popularity, users_chosen_rejected
from dmporec.build import BuildConfig, prepare
from dmporec.data import load_records
from dmporec.files import atomic_write_text
from dmporec.metrics import pair_correct
from dmporec.records import Record, TitleNormalization, read_records, records_text

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT.parent / "shared" / "data" / "raw" / "ml-1m-users-1-2999"
# The test pairs as the authors score them: each test user's first negative (1000 pairs).
EVAL = "rec_data_ml_1m_eval_ranking.json"
EVAL_PAIRS = 1000  # data.max_eval_pairs of the experiment file
HYBRID_AFTER = 1000  # hybrid_valid.jsonl takes the pool's users after the first 1000


def write_once(path: Path, records: list[Record]) -> None:
    """Write `records` to `path`, or check that the file there holds exactly them."""
    text = records_text(records)
    if path.is_file() and path.read_text() != text:
        raise SystemExit(
            f"{path}: holds other records than this build writes; results made from it would be "
            "relabelled: use another --out, or delete it (and the runs made from it)"
        )
    if not path.is_file():
        atomic_write_text(path, text)


def first(records: list[Record], n: int, what: str, flag: str) -> list[Record]:
    if not 1 <= n <= len(records):
        raise SystemExit(f"{flag}: 1 to {len(records)} {what} are available, not {n}")
    return records[:n]


def prepare_ml1m(data: Path, raw: Path, progress: bool = True) -> None:
    """The authors' rules over the raw MovieLens-1M ratings into `data`, once (stats.json marks
    a finished build)."""
    if not (data / "stats.json").is_file():
        prepare(
            BuildConfig(source="movielens", rules="authors", name="rec_data_ml_1m"),
            raw / "ratings.dat.gz",
            raw / "movies.dat",
            data,
            progress=progress,
        )


def build(data: Path, sizes: list[int], valid_users: int, list_users: int, raw: Path) -> None:
    prepare_ml1m(data, raw)
    pool = read_records(data / "train.jsonl") + read_records(data / "rest.jsonl")
    for n in sizes:
        write_once(data / f"train_{n}.jsonl", first(pool, n, "training users", "--sizes"))
    valid = read_records(data / "valid.jsonl")
    write_once(
        data / f"valid_{valid_users}.jsonl",
        first(valid, valid_users, "validation users", "--valid-users"),
    )
    write_once(
        data / "hybrid_valid.jsonl", [first_negative(r) for r in valid + pool[HYBRID_AFTER:]]
    )
    test = first(read_records(data / "test.jsonl"), list_users, "test users", "--list-users")
    lists = [first_negative(r) for r in test]
    write_once(data / f"test_list_{list_users}.jsonl", lists)


def first_negative(record: Record) -> Record:
    """The record with its first negative only (the authors' test pair; list_negatives kept)."""
    pf = record.positive_first
    return replace(record, negatives=record.negatives[:1], positive_first=pf and pf[:1])


def label_counts(data: Path, sizes: list[int]) -> list[dict]:
    """Per N: accuracy and share of tied test pairs when each candidate is scored by how often
    it was one of the N training users' positive."""
    test = load_records(data / EVAL, TitleNormalization())[:EVAL_PAIRS]
    rows = []
    for n in sizes:
        counts = Counter(r.positive.title for r in read_records(data / f"train_{n}.jsonl"))
        _, chosen, rejected = users_chosen_rejected(Popularity(counts), test)
        rows.append(
            {
                "n": n,
                "accuracy": float(np.mean(pair_correct(chosen, rejected))),
                "ties": float(np.mean(chosen == rejected)),
            }
        )
    return rows


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated user counts, got {text!r}")
    return sizes


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        default="runs/learning-curve/data",
        help="the data directory the experiment file names (default: %(default)s)",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[100, 400, 1000, 1686],
        help="training set sizes N (100,400,1000,1686: 1686 is the whole pool)",
    )
    parser.add_argument(
        "--valid-users", type=int, default=60, help="validation users of valid_U.jsonl (60)"
    )
    parser.add_argument(
        "--list-users", type=int, default=100, help="test users of test_list_U.jsonl (100)"
    )
    parser.add_argument("--raw", default=str(RAW), help="the raw MovieLens-1M ratings and movies")
    return parser


def written(args: argparse.Namespace) -> list[str]:
    """The files the experiment file reads that this build writes with these arguments."""
    return [
        EVAL,
        *(f"train_{n}.jsonl" for n in args.sizes),
        f"valid_{args.valid_users}.jsonl",
        "hybrid_valid.jsonl",
        f"test_list_{args.list_users}.jsonl",
    ]


def main() -> None:
    args = parser().parse_args()
    raw = Path(args.raw)
    if not (raw / "ratings.dat.gz").is_file():
        raise SystemExit(f"--raw: {raw} holds no ratings.dat.gz (see ../shared/data/raw/README)")
    data = Path(args.out)
    build(data, args.sizes, args.valid_users, args.list_users, raw)
    counts = label_counts(data, args.sizes)
    atomic_write_text(data / "label_counts.json", json.dumps(counts, indent=2) + "\n")
    print("What the training labels alone carry (test candidates scored by how often they were a")
    print("training positive; no histories, no model; ties count half):\n")
    print("| N | accuracy | test pairs tied |\n|---|---|---|")
    for r in counts:
        print(f"| {r['n']} | {r['accuracy']:.3f} | {r['ties']:.3f} |")
    print(
        f"\ndata in {data}; next: dmporec experiment -c configs/experiments/learning-curve-ml1m.yaml"
    )


if __name__ == "__main__":
    main()
