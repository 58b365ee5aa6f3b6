"""How far surface matching gets on the demo's test pairs: the ceilings a model is measured against.

    .venv/bin/python benchmarks/demo_heuristics.py [--config configs/demo.yaml]

- word overlap: rank first the candidate that shares a word with more history titles;
- genre oracle: rank first the candidate whose genre (the generator's own label) is
  more frequent in the history; the most any model can get from the titles' genres.
Ties count 1/2. Prints a table and writes benchmarks/results/demo_heuristics.json.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from dmporec.config import load_config
from dmporec.demo_data import make_demo_data
from dmporec.files import atomic_write_text
from dmporec.records import Record

RESULTS = Path(__file__).resolve().parent / "results" / "demo_heuristics.json"
_SUFFIXES = {"II", "2", "Reloaded", "Returns"}


def _words(title: str) -> set[str]:
    return set(title.replace(":", "").split()) - _SUFFIXES


def _accuracy(records: list[Record], score) -> float:
    points = []
    for r in records:
        for neg in r.negatives:
            a, b = score(r, r.positive.title), score(r, neg.title)
            points.append(1.0 if a > b else 0.5 if a == b else 0.0)
    return sum(points) / len(points)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/demo.yaml")
    args = parser.parse_args()
    demo = make_demo_data(load_config(args.config).data.demo)
    genre = demo.catalog  # title -> genre, as the generator drew it
    scores = {
        "word overlap": lambda r, t: sum(bool(_words(h.title) & _words(t)) for h in r.history),
        "genre oracle": lambda r, t: Counter(genre[h.title] for h in r.history)[genre[t]],
    }
    rows = {name: _accuracy(demo.test, f) for name, f in scores.items()}
    pairs = sum(r.k for r in demo.test)
    print(f"| heuristic | accuracy on the {pairs} demo test pairs |\n|---|---|")
    for name, acc in rows.items():
        print(f"| {name} | {acc:.3f} |")
    atomic_write_text(
        RESULTS, json.dumps({"config": args.config, "pairs": pairs, **rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
