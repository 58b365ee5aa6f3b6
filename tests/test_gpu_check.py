"""benchmarks/gpu_check.py runs on the CPU with a tiny config, so the GPU check never rots."""

import json

from dmporec.model import tiny_qwen3_dir


def test_gpu_check_runs_on_the_cpu_with_a_tiny_config(benchmark, tmp_path):
    gpu_check = benchmark("gpu_check")
    tiny, out = tiny_qwen3_dir(), tmp_path / "gpu_check.json"
    result = gpu_check.main(
        ["--device", "cpu", "--config", str(tiny / "config.json"), "--tokenizer", str(tiny),
         "--small", "--layers", "1", "--users", "2", "--attentions", "sdpa", "--out", str(out)]
    )  # fmt: skip
    assert result["all_ok"] and json.loads(out.read_text())["device"]
    assert {c["check"] for c in result["equality"]} == {
        "logps shared vs naive",
        "logps cached vs naive",
        "LoRA gradients shared vs naive",
    }
    rows = {(r["phase"], r["layout"]): r for r in result["timing"]}
    assert set(rows) == {
        (p, lay) for p in ("dmpo step", "evaluation") for lay in ("naive", "shared")
    }
    # The shared layout encodes fewer tokens than one row per answer, in training and evaluation.
    for phase in ("dmpo step", "evaluation"):
        assert rows[phase, "shared"]["tokens"] < rows[phase, "naive"]["tokens"]
