"""Order-debiased evaluation: both listing orders scored with one history prefix, summed."""

import json
from dataclasses import replace

import pytest

from dmporec.config import EvalConfig
from dmporec.evaluation import score_lists, score_pairs, write_eval
from dmporec.prompts import positive_listed_first


def test_both_orders_add_the_swapped_listing(tiny, tiny_cfg, demo, tmp_path):
    model, tokenizer = tiny
    records = demo.test[:3]
    both = score_pairs(model, tokenizer, tiny_cfg, records, EvalConfig(orders="both"), 0)
    listed = score_pairs(model, tokenizer, tiny_cfg, records, EvalConfig(orders="listed"), 0)
    swapped_records = [
        replace(r, positive_first=[not positive_listed_first(r, i, 0) for i in range(r.k)])
        for r in records
    ]
    swapped = score_pairs(
        model, tokenizer, tiny_cfg, swapped_records, EvalConfig(orders="listed"), 0
    )
    assert len(both) == len(listed) == sum(r.k for r in records)
    for b, a, s in zip(both, listed, swapped, strict=True):
        assert b["chosen_logp"] == pytest.approx(a["chosen_logp"], abs=1e-4)
        assert b["chosen_logp_swapped"] == pytest.approx(s["chosen_logp"], abs=1e-4)
        assert b["rejected_logp_swapped"] == pytest.approx(s["rejected_logp"], abs=1e-4)
        assert b["positive_listed_first"] != s["positive_listed_first"]

    m = write_eval(both, EvalConfig(orders="both", n_boot=20), tmp_path, "tiny")
    wins = [
        r["chosen_logp"] + r["chosen_logp_swapped"]
        > r["rejected_logp"] + r["rejected_logp_swapped"]
        for r in both
    ]
    assert m["orders"] == "both" and m["accuracy"] == pytest.approx(sum(wins) / len(wins))
    listed_m = write_eval(listed, EvalConfig(orders="listed", n_boot=20), tmp_path, "tiny")
    # The position diagnostics describe the listed order either way.
    assert m["first_listed_rate"] == listed_m["first_listed_rate"]
    assert m["accuracy_listed_order"] == listed_m["accuracy"]


def test_lists_scored_several_users_per_call_equal_one_at_a_time(tiny, tiny_cfg, demo):
    model, tok = tiny
    records = demo.test[:5]
    one = score_lists(model, tok, tiny_cfg, records, EvalConfig(listwise=4, batch_size=1))
    many = score_lists(model, tok, tiny_cfg, records, EvalConfig(listwise=4, batch_size=3))
    assert [r["user_id"] for r in many] == [r.user_id for r in records]
    for a, b in zip(one, many, strict=True):
        assert a["candidates"] == b["candidates"] and a["positive_index"] == b["positive_index"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)


def test_valid_split_holds_users_out_of_training(tmp_path):
    from dmporec.config import DataConfig
    from dmporec.data import demo_files, stage_records
    from dmporec.demo_data import DemoDataConfig
    from dmporec.records import DataError

    demo = DemoDataConfig(train_users=8, valid_users=0, test_users=3, negatives=3)
    data, files = demo_files(DataConfig(demo=demo, valid_users=3), tmp_path)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    train = stage_records(data, "sft_train")
    valid = stage_records(data, "valid")
    assert len(train) == 5 and len(valid) == 3
    assert not {r.user_id for r in train} & {r.user_id for r in valid}
    assert all(r.k == 3 for r in valid)  # every negative of dmpo_train is a validation pair
    assert [r.user_id for r in stage_records(data, "valid")] == [r.user_id for r in valid]
    assert len(stage_records(data, "eval")) == 3  # the test file is untouched
    with pytest.raises(DataError, match="valid_users=8 leaves no training users"):
        stage_records(data.model_copy(update={"valid_users": 8}), "sft_train")


def test_pipeline_on_the_valid_split(tmp_path, capsys):
    from dmporec.cli import main

    out = tmp_path / "run"
    args = [
        "model.name=builtin:tiny-qwen3",
        "data.demo={train_users: 6, valid_users: 0, test_users: 2, negatives: 2}",
        "data.valid_users=2",
        "eval.split=valid",
        "eval.orders=both",
        "sft.orders=both",
        "dmpo.orders=both",
        "eval.n_boot=20",
        "sft.epochs=1",
        "dmpo.epochs=1",
        "dmpo.k=2",
        "sft.batch_size=2",
        "dmpo.batch_size=2",
        f"output_dir={out}",
    ]
    assert main(["run", *args]) == 0
    assert "| DMPO (k=2) | 4 |" in capsys.readouterr().out  # 2 held-out users x 2 negatives
    assert (out / "zero_shot/valid/eval.json").is_file()
    assert (out / "dmpo/eval-valid/eval.json").is_file()
    assert not (out / "dmpo/eval").exists()
    summary = json.loads((out / "dmpo/summary.json").read_text())
    assert summary["users"] == 4 and summary["final_loss"] > 0  # 6 - 2 held out


def test_listwise_evaluation_ranks_sampled_candidate_sets(tmp_path, capsys):
    from dmporec.cli import main

    out = tmp_path / "run"
    args = [
        "model.name=builtin:tiny-qwen3",
        "data.demo={train_users: 2, valid_users: 0, test_users: 4, negatives: 1}",
        "eval.listwise=4",
        "eval.n_boot=20",
        f"output_dir={out}",
    ]
    assert main(["evaluate", "--stage", "zero_shot", *args]) == 0
    ev = json.loads((out / "zero_shot/eval.json").read_text())
    assert ev["list4_users"] == 4 and 0 <= ev["list4_hr@1"] <= ev["list4_hr@5"] == 1.0
    assert 1 <= ev["list4_mean_rank"] <= 4 and 0 <= ev["grouped_auc"] <= 1
    summary = json.loads((out / "zero_shot/summary.json").read_text())
    assert summary["lists_prompts_truncated"] == 0  # list prompts were checked against the bound
    lists = [json.loads(x) for x in (out / "zero_shot/lists.jsonl").read_text().splitlines()]
    for row in lists:
        assert len(row["candidates"]) == 4 and len(set(row["candidates"])) == 4
        assert sum(row["scores"]) == pytest.approx(2.0)  # N/2: every prompt hands out 1
    capsys.readouterr()
    assert main(["evaluate", "--stage", "zero_shot", *args]) == 0  # reused, not rescored
    assert "metrics from the 4 pairs scored" in capsys.readouterr().out

    # --out: the same model on other settings into its own directory; never over another's.
    other = tmp_path / "lists3"
    assert (
        main(["evaluate", "--stage", "zero_shot", *args, "eval.listwise=3", "--out", str(other)])
        == 0
    )
    assert json.loads((other / "eval.json").read_text())["list3_users"] == 4
    assert json.loads((out / "zero_shot/eval.json").read_text())["list4_users"] == 4  # untouched
    more = [*args, "eval.listwise=3", "data.max_eval_pairs=2", "--out", str(other)]
    code = main(["evaluate", "--stage", "zero_shot", *more])
    assert code == 2 and "data.max_eval_pairs" in capsys.readouterr().err
