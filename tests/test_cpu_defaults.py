"""benchmarks/cpu_defaults.py on the tiny model: its cells time the same users at every
micro-batch size and budget, and the table names each."""

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dmpo"


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/dmpo")
def test_cells_and_table():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cpu_defaults

    args = argparse.Namespace(k=3, users=2, eval_pairs=4, model="builtin:tiny-qwen3")
    one, two = (cpu_defaults.cell("train", m, args) for m in (1, 2))
    assert one["users"] == two["users"] == 2  # the same timed users, after a warm-up step
    assert len(one["losses"]) == 2 and len(two["losses"]) == 1
    # The same users: one call encodes the stem all users share once, two calls twice.
    assert two["tokens"] < one["tokens"]
    evals = [cpu_defaults.cell("eval", b, args) for b in (256, 8192)]
    assert evals[0]["accuracy"] == evals[1]["accuracy"]  # the budget changes speed, not scores
    table = cpu_defaults.table([one, two, *evals])
    assert "| 1 | " in table and "| 2 | " in table and "| 8192 | " in table
    # Repeated rounds: each cell keeps its fastest round and shows every round's rate.
    slow = {**one, "users_per_s": one["users_per_s"] / 2, "round": 2}
    (best, _) = cpu_defaults.best_rounds([slow, one, two])[:2]
    assert best["users_per_s"] == one["users_per_s"] and best["rates"] == [
        slow["users_per_s"],
        one["users_per_s"],
    ]
    assert f"{slow['users_per_s']:.3f} / {one['users_per_s']:.3f}" in cpu_defaults.table(
        [slow, one, two]
    )
    with pytest.raises(SystemExit, match="not a multiple"):
        cpu_defaults.cell("train", 3, args)
