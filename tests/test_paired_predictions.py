"""benchmarks/paired_predictions.py: two evaluations of the same pairs, paired."""

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def script(benchmark):
    return benchmark("paired_predictions")


def write(path: Path, right: list[bool]) -> Path:
    rows = [
        {
            "user_id": f"u{i // 2}",
            "positive": f"p{i}",
            "negative": f"n{i}",
            "chosen_logp": -1.0 if ok else -2.0,
            "rejected_logp": -2.0 if ok else -1.0,
            "positive_listed_first": i % 2 == 0,
            "chosen_logp_swapped": -1.0 if ok else -2.0,
            "rejected_logp_swapped": -2.0 if ok else -1.0,
        }
        for i, ok in enumerate(right)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_counts_the_discordant_pairs_and_writes_json(script, tmp_path, capsys):
    a = write(tmp_path / "a.jsonl", [True] * 30 + [True] * 10 + [False] * 10)
    b = write(tmp_path / "b.jsonl", [True] * 30 + [False] * 10 + [False] * 10)
    out = tmp_path / "out.json"
    assert script.main([str(a), str(b), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    acc = result["test"]
    assert (acc["a_better"], acc["b_better"]) == (10, 0)
    assert acc["difference"] == pytest.approx(0.2) and acc["p_value"] < 0.01
    assert "| accuracy | 0.800 | 0.600 | +0.200" in capsys.readouterr().out


def test_other_pairs_are_refused(script, tmp_path):
    a = write(tmp_path / "a.jsonl", [True] * 4)
    b = write(tmp_path / "b.jsonl", [True] * 5)
    with pytest.raises(SystemExit, match="do not hold the same pairs"):
        script.main([str(a), str(b)])
    with pytest.raises(SystemExit, match="no such file"):
        script.main([str(tmp_path / "nope"), str(b)])


def test_gains_over_each_base(script, tmp_path, capsys):
    """--base-a / --base-b: A gains 0.4 over its base, B nothing over its own (B is its base):
    the difference of the gains, 0.4, with its interval and p; a base of other pairs is named."""
    n = 50
    a = write(tmp_path / "a.jsonl", [True] * n)
    base_a = write(tmp_path / "base_a.jsonl", [True] * 30 + [False] * 20)
    b = write(tmp_path / "b.jsonl", [True] * 35 + [False] * 15)
    out = tmp_path / "out.json"
    argv = [str(a), str(b), "--base-a", str(base_a), "--base-b", str(b), "--out", str(out)]
    assert script.main(argv) == 0
    gain = json.loads(out.read_text())["gain"]
    assert gain["gain_a"] == pytest.approx(0.4) and gain["gain_b"] == 0
    assert gain["gain_difference"] == pytest.approx(0.4)
    assert gain["gain_difference_ci_low"] > 0.1 and gain["gain_p_value"] < 0.01
    assert "| accuracy | +0.400 | +0.000 | +0.400" in capsys.readouterr().out
    short = write(tmp_path / "short.jsonl", [True] * (n - 1))
    with pytest.raises(SystemExit, match="short.jsonl does not hold the same pairs"):
        script.main([str(a), str(b), "--base-a", str(short), "--base-b", str(b)])
    with pytest.raises(SystemExit):  # one base without the other: argparse's error
        script.main([str(a), str(b), "--base-a", str(base_a)])
