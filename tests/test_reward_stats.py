"""benchmarks/reward_stats.py: held-out reward accuracy and the chosen / rejected shifts against
the reference, worked out by hand on two pairs, and its refusals."""

import json

import pytest


def row(user: str, c: float, r: float, cs: float, rs: float) -> dict:
    return {"user_id": user, "positive": "P", "negative": "N", "chosen_logp": c,
            "rejected_logp": r, "positive_listed_first": True, "chosen_logp_swapped": cs,
            "rejected_logp_swapped": rs}  # fmt: skip


def write(path, rows):
    path.mkdir()
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rewards_by_hand_and_the_table(benchmark, tmp_path, capsys):
    script = benchmark("reward_stats")
    ref = write(tmp_path / "ref", [row("u1", -1, -2, -1, -2), row("u2", -1, -1, -1, -1)])
    # u1: chosen -3 - (-1) = -2 both orders, rejected -6 - (-2) = -4: right, both shifts down.
    # u2: order 1 chosen +1, rejected +2 (wrong); order 2 chosen 0, rejected -1 (right): 0.5.
    policy = write(tmp_path / "dpo", [row("u1", -3, -6, -3, -6), row("u2", 0, 1, -1, -2)])
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "chosen_reward": -s / 10,
                                           "reward_accuracy": 0.5, "loss": 0.7}) + "\n"
                               for s in (1, 2, 3)))  # fmt: skip
    with metrics.open("a") as f:  # a resumed run logs step 2 again: the latest row counts
        f.write(json.dumps({"step": 2, "chosen_reward": -0.4, "reward_accuracy": 0.5}) + "\n")
    out = tmp_path / "out"
    argv = ["--reference", str(ref), "--cell", f"dpo={policy},{metrics}", "--out", str(out)]
    assert script.main([*argv, "--window", "2"]) == 0
    doc = json.loads((out / "reward_stats.json").read_text())
    cell = doc["cells"]["dpo"]
    assert cell["correct"]["mean"] == pytest.approx(0.75)
    assert cell["chosen"]["mean"] == pytest.approx((-2 + 0.5) / 2)
    assert cell["rejected"]["mean"] == pytest.approx((-4 + 0.5) / 2)
    assert doc["training"]["dpo"]["chosen_reward"] == pytest.approx([-0.25, -0.35])
    assert (out / "reward_stats.png").is_file() and "| dpo | 2 |" in capsys.readouterr().out


def test_other_pairs_are_refused(benchmark, tmp_path):
    script = benchmark("reward_stats")
    ref = write(tmp_path / "ref", [row("u1", -1, -2, -1, -2)])
    other = write(tmp_path / "other", [row("u9", -1, -2, -1, -2)])
    with pytest.raises(SystemExit, match="do not hold the same pairs"):
        script.main(["--reference", str(ref), "--cell", f"x={other}", "--out", str(tmp_path)])
    swapped = write(
        tmp_path / "swapped", [{**row("u1", -1, -2, -1, -2), "positive_listed_first": False}]
    )
    with pytest.raises(SystemExit, match="another data.prompt_seed"):
        script.main(["--reference", str(ref), "--cell", f"x={swapped}", "--out", str(tmp_path)])
    one_order = write(
        tmp_path / "one", [{**row("u1", -1, -2, -1, -2), "chosen_logp_swapped": None}]
    )
    with pytest.raises(SystemExit, match="record 1 has no chosen_logp_swapped"):
        script.main(["--reference", str(one_order), "--cell", f"x={ref}", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no such file"):
        script.main(["--reference", str(tmp_path / "nope"), "--cell", f"x={other}"])
