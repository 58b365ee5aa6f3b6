"""benchmarks/learning_curve.py end to end on the tiny model, so the script never rots."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT.parent / "shared" / "data" / "raw" / "ml-1m-users-1-2999"


@pytest.mark.skipif(not RAW.is_dir(), reason="../shared/data/raw is not beside this checkout")
def test_learning_curve_script_runs_and_plots(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "learning_curve.py"),
        "--sizes",
        "3,6",
        "--eval-pairs",
        "4",
        "--out",
        str(tmp_path / "curve"),
        "--publish",
        str(tmp_path / "published"),
        "model.name=builtin:tiny-qwen3",
        "sft.batch_size=3",
        "dmpo.batch_size=3",
        "eval.n_boot=10",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = json.loads((tmp_path / "published" / "curve.json").read_text())
    assert [n for n, *_ in curve["series"]["DMPO (k=3)"]] == [3, 6]
    assert [n for n, *_ in curve["series"]["SFT"]] == [3, 6]
    assert "popularity" in curve["series"] and "DPO (k=1)" in curve["series"]
    assert {(t["n"], t["b"]) for t in curve["paired_tests"]} == {
        (n, b) for n in (3, 6) for b in ("SFT", "zero-shot", "popularity")
    }
    assert (tmp_path / "published" / "curve.png").stat().st_size > 1000
    data = tmp_path / "curve" / "data"
    assert len((data / "train_6.jsonl").read_text().splitlines()) == 6
    # The test users are the authors': the build's first test user is their first eval record's.
    assert json.loads((data / "test.jsonl").read_text().splitlines()[0])["user_id"] == "109"
    # Diagnostics: every trained model scored on its own training users' pairs (all 5 negatives),
    # accuracy by position, and DMPO's reward statistics.
    diag = {d["cell"]: d for d in curve["diagnostics"]}
    assert set(diag) == {"zero-shot", "sft-3", "sft-6", "dmpo-k3-3", "dmpo-k3-6", "dpo-k1-6"}
    for cell in ("sft-3", "sft-6", "dmpo-k3-3", "dmpo-k3-6", "dpo-k1-6"):
        assert list(diag[cell]["train_accuracy_by_negative"]) == ["1", "2", "3", "4", "5"]
        assert 0 <= diag[cell]["train_accuracy"] <= 1
    assert (
        "reward_margin_last10" in diag["dmpo-k3-6"] and "reward_margin_last10" not in diag["sft-6"]
    )
    assert "| dmpo-k3-6 |" in (tmp_path / "published" / "diagnostics.md").read_text()
