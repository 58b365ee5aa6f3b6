"""benchmarks/qwen3_8b_memory.py: its byte counter, and the whole script on a small-width Qwen3
with the real tokenizer and the authors' records (the published table runs the same code at the
real 8B widths)."""

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
QWEN3 = ROOT.parent / "shared" / "models" / "qwen3"
ML1M = ROOT.parent / "shared" / "data" / "dmpo" / "rec_data_ml_1m_dpo_ranking_1.json"


@pytest.fixture(scope="module")
def script(benchmark):
    return benchmark("qwen3_8b_memory")


def test_live_bytes_counts_storages_once_and_frees_them(script):
    counter = script.LiveBytes()
    with counter:
        a = torch.zeros(1000)  # 4000 bytes
        view = a[10:]  # same storage: not counted again
        b = torch.ones(500, dtype=torch.bfloat16)  # 1000 bytes
        assert counter.live == 5000 and view.numel() == 990
        del a, view
        assert counter.live == 1000
        c = torch.zeros(10)
        assert counter.live == 1040 and counter.peak == 5000
        del b, c
    assert counter.live == 0


@pytest.mark.skipif(not (QWEN3.is_dir() and ML1M.is_file()), reason="needs ../shared")
def test_memory_script_counts_what_a_real_run_allocates_and_extrapolates_exactly(script, tmp_path):
    raw = json.loads((QWEN3 / "config-Qwen3-8B.json").read_text())
    raw.update(
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, num_hidden_layers=4,
    )  # fmt: skip
    config = tmp_path / "config.json"
    config.write_text(json.dumps(raw))
    out = tmp_path / "memory.json"
    result = script.main(
        ["--config", str(config), "--tokenizer", str(QWEN3), "--ks", "1,3", "--batches", "1,2",
         "--eval-batch", "4", "--out", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    # The meta count equals a real fp32 run's (to 1e-5: a CPU kernel's scratch at tiny widths).
    assert result["check"]["ok"] and result["check"]["real_cpu_fp32"]["peak"] > 0
    rows = result["rows"]
    assert len(rows) == 2 * 2 * 2 + 2 + 1  # dmpo steps, reference passes, one evaluation
    for r in rows:
        # 4 layers extrapolated from 1 and 2 agree with 4 layers counted directly.
        assert r["extrapolated_peak_gib"] == pytest.approx(r["peak_gib"], rel=0.01)
        assert r["peak_gib"] > r["weights_gib"] > 0
    steps = {
        (r["k"], r["micro_batch"], r["checkpointing"]): r for r in rows if r["phase"] == "dmpo step"
    }
    for k in (1, 3):
        for b in (1, 2):
            assert steps[k, b, True]["per_layer_gib"] < steps[k, b, False]["per_layer_gib"]
        assert steps[k, 2, False]["peak_gib"] > steps[k, 1, False]["peak_gib"]
    assert steps[3, 1, False]["tokens"] > steps[1, 1, False]["tokens"]
