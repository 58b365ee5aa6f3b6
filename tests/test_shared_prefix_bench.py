"""benchmarks/shared_prefix.py's training cells on the tiny model: the same losses in both
layouts (after a warm-up step), the naive step's split into policy and reference that the "limit"
column uses, shared's one-time reference pass in the one-epoch speed-up, and the profiled cell's
op tables."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dmpo"


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/dmpo")
def test_training_cells_and_their_limit(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import shared_prefix
    from shared_prefix_tables import epoch_rate, speedup_table

    naive, shared = (
        shared_prefix.cell(
            "train",
            m,
            3,
            2,
            2,
            0,
            model_name="builtin:tiny-qwen3",
            warmup=1,
            profile=tmp_path / f"{m}.txt" if m == "shared" else None,
        )
        for m in ("naive", "shared")
    )
    assert naive["losses"] == pytest.approx(shared["losses"], abs=1e-5)
    assert len(shared["losses"]) == 2 and shared["warmup_steps"] == 1
    # the profiled cell: its op tables; its matmuls and attention within its CPU time
    assert "aten::mm" in (tmp_path / "shared.txt").read_text() and naive["profile"] is None
    prof = shared["profile"]
    assert prof["attention_s"] > 0 and prof["matmul_s"] > 0
    assert prof["attention_s"] + prof["matmul_s"] < prof["total_s"]
    # naive runs the reference forward on the policy's own rows: half its tokens, part of its time
    assert naive["tokens"] == 2 * naive["policy_tokens"]
    assert 0 < naive["reference_in_step_s"] < naive["wall_s"]
    assert shared["tokens"] == shared["policy_tokens"] and shared["reference_in_step_s"] == 0
    # shared's reference pass, once for the warm-up and timed users: the one-epoch rate pays it
    assert shared["reference_users"] == 6 and shared["reference_once_s"] > 0
    assert epoch_rate(shared) < shared["users_per_s"]
    assert epoch_rate(naive) == naive["users_per_s"]
    table = speedup_table([naive, shared])
    row = next(line for line in table.splitlines() if line.startswith("| DMPO train step | 3 |"))
    step, epoch, limit = (float(row.split("|")[i].strip().rstrip("x")) for i in (5, 6, 7))
    assert (
        epoch == pytest.approx(epoch_rate(shared) / naive["users_per_s"], abs=0.01) and epoch < step
    )
    # The reference tokens are cheaper than the policy's, so the limit is below the token ratio.
    assert 1 < limit < naive["tokens"] / shared["tokens"]
