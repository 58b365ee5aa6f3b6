"""End to end on the tiny random Qwen3: SFT -> DMPO -> evaluate in seconds, resumable."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dmporec.alpaca import write_alpaca
from dmporec.cli import main
from dmporec.config import load_config
from dmporec.demo_data import DemoDataConfig, make_demo_data
from dmporec.wording import WORDINGS

TINY = [
    "model.name=builtin:tiny-qwen3",
    "data.demo={train_users: 6, valid_users: 0, test_users: 5, negatives: 3}",
    "sft.epochs=1",
    "sft.batch_size=3",
    "dmpo.epochs=1",
    "dmpo.batch_size=3",
    "dmpo.k=2",
    "eval.n_boot=20",
]


def test_run_end_to_end_and_skip_finished_stages(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, "eval.generate=true", f"output_dir={out}"]) == 0
    table = capsys.readouterr().out
    assert "| zero-shot | 5 |" in table and "| SFT | 5 |" in table and "| DMPO (k=2) | 5 |" in table
    assert "ValidRatio" in table and "| DMPO (k=2) vs SFT |" in table and "McNemar p" in table
    assert len((out / "dmpo/eval/generations.jsonl").read_text().splitlines()) == 5
    tests = json.loads((out / "summary.json").read_text())["paired_tests"]
    assert [(t["a"], t["b"]) for t in tests] == [
        ("zero-shot", "popularity"),
        ("SFT", "popularity"),
        ("DMPO (k=2)", "popularity"),
        ("zero-shot", "bpr-mf"),
        ("SFT", "bpr-mf"),
        ("DMPO (k=2)", "bpr-mf"),
        ("zero-shot", "like-rate"),
        ("SFT", "like-rate"),
        ("DMPO (k=2)", "like-rate"),
        ("zero-shot", "als"),
        ("SFT", "als"),
        ("DMPO (k=2)", "als"),
        ("zero-shot", "embedding"),
        ("SFT", "embedding"),
        ("DMPO (k=2)", "embedding"),
        ("SFT", "zero-shot"),
        ("DMPO (k=2)", "zero-shot"),
        ("DMPO (k=2)", "SFT"),
    ]
    # The classic baselines are scored on the same pairs, in the same table; AUCs are paired too.
    assert "| popularity | 5 |" in table and "| bpr-mf | 5 |" in table and "| random | 5 |" in table
    assert "| als | 5 |" in table and "coin-flip AUC difference" in table
    assert {"auc_difference", "auc_p_value", "auc_stable_p_value"} <= tests[0].keys()
    for path in (
        "config.yaml",
        "data/train.jsonl",
        "sft/adapter/adapter_model.safetensors",
        "sft/curves.png",
        "dmpo/adapter/adapter_model.safetensors",
        "dmpo/metrics.jsonl",
        "dmpo/curves.png",
        "dmpo/eval/eval.json",
        "dmpo/eval/predictions.jsonl",
        "zero_shot/eval.json",
        "summary.md",
    ):
        assert (out / path).is_file(), path
    metrics = [json.loads(x) for x in (out / "dmpo/metrics.jsonl").read_text().splitlines()]
    assert metrics and {"loss", "reward_margin", "reward_accuracy", "lr"} <= metrics[0].keys()
    ev = json.loads((out / "dmpo/eval/eval.json").read_text())
    assert ev["pairs"] == 5 and 0 <= ev["accuracy"] <= 1
    assert len((out / "dmpo/eval/predictions.jsonl").read_text().splitlines()) == 5

    assert main(["run", *TINY, "eval.generate=true", f"output_dir={out}"]) == 0  # all skipped
    rerun = capsys.readouterr().out
    assert "is finished" in rerun and "metrics from the 5 pairs scored" in rerun

    # Same SFT model, same users: the reference log-probs come from the on-disk cache.
    again = tmp_path / "again"
    assert (
        main(
            [
                "dmpo",
                "--sft-dir",
                str(out / "sft"),
                *TINY,
                "dmpo.loss=sdpo",
                "dmpo.sft_weight=1.0",
                f"output_dir={again}",
            ]
        )
        == 0
    )
    assert "reference log-probs from cache" in capsys.readouterr().out
    summary = json.loads((again / "dmpo/summary.json").read_text())
    assert summary["loss"] == "sdpo" and summary["final_loss"] > 0
    assert (again / "dmpo/adapter/adapter_model.safetensors").is_file()

    # The evaluate command alone, on a finished stage.
    (out / "sft/eval/eval.json").unlink()
    (out / "sft/eval/predictions.jsonl").unlink()
    assert main(["evaluate", "--stage", "sft", *TINY, f"output_dir={out}"]) == 0
    assert "| sft | 5 |" in capsys.readouterr().out


def test_training_resumes_from_a_checkpoint(tmp_path, stop_training, capsys):
    args = [
        *TINY,
        "sft.epochs=2",
        "sft.batch_size=2",
        "sft.save_every_steps=1",
        "sft.learning_rate=1e-2",
    ]
    assert main(["sft", *args, f"output_dir={tmp_path / 'a'}"]) == 0
    full = load_file(tmp_path / "a/sft/adapter/adapter_model.safetensors")

    stop_training(4, ["sft", *args, f"output_dir={tmp_path / 'b'}"])
    # As if killed while removing the old checkpoint, before renaming the new one into place: the
    # rerun still resumes from the new one (tests/test_distributed.py kills a real run at a random
    # point).
    ckpt = tmp_path / "b/sft/checkpoint"
    ckpt.rename(tmp_path / "b/sft/checkpoint.tmp")
    (ckpt / "adapter").mkdir(parents=True)  # what is left of the old one: no position.json
    (ckpt / "optimizer.pt").write_bytes(b"partly removed")
    capsys.readouterr()
    assert main(["sft", *args, f"output_dir={tmp_path / 'b'}"]) == 0
    assert "sft: resuming from" in capsys.readouterr().out  # not a fresh start
    resumed = load_file(tmp_path / "b/sft/adapter/adapter_model.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.allclose(full[key], resumed[key], atol=1e-6), key
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "b/sft/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_video_games_files_run_like_the_movies_files(tmp_path, capsys):
    """Alpaca files in the authors' Video Games wording (sft, dpo_ranking_3, eval) through `run`."""
    demo = make_demo_data(DemoDataConfig(train_users=6, valid_users=0, test_users=4, negatives=3))
    games = WORDINGS["games"]
    data = tmp_path / "data"
    data.mkdir()
    train = [replace(r, wording=games) for r in demo.train]
    write_alpaca(data / "rec_Amazon_Game_sft_ranking.json", train, "sft")
    write_alpaca(data / "rec_Amazon_Game_dpo_ranking_3.json", train, "dpo")
    write_alpaca(
        data / "rec_Amazon_Game_eval_ranking.json",
        [replace(r, wording=games) for r in demo.test],
        "eval",
    )
    out = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("data.demo")] + [
        f"data.sft_train={data / 'rec_Amazon_Game_sft_ranking.json'}",
        f"data.dmpo_train={data / 'rec_Amazon_Game_dpo_ranking_3.json'}",
        f"data.eval={data / 'rec_Amazon_Game_eval_ranking.json'}",
        "dmpo.k=3",
        f"output_dir={out}",
    ]
    assert main(["run", *overrides]) == 0, capsys.readouterr().err
    predictions = (out / "dmpo/eval/predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 4
    assert json.loads((out / "dmpo/summary.json").read_text())["users"] == 6


def test_clear_errors_for_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user_id": "u", "history": [], "positive": "P", "negatives": ["N"]}\n')
    code = main(
        [
            "evaluate",
            "--stage",
            "zero_shot",
            "model.name=builtin:tiny-qwen3",
            f"data.eval={bad}",
            f"output_dir={tmp_path / 'o'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "bad.jsonl" in err and "'history'" in err and "Traceback" not in err
    assert main(["run", "dmpo.k=banana"]) == 2
    assert "dmpo.k" in capsys.readouterr().err
    assert main(["dmpo", *TINY, f"output_dir={tmp_path / 'nosft'}"]) == 2
    assert "not a finished stage" in capsys.readouterr().err
    assert main(["evaluate", "--stage", "dmop", *TINY, f"output_dir={tmp_path / 'nosft'}"]) == 2
    assert "no stage dmop: --stage takes zero_shot, sft, dmpo" in capsys.readouterr().err


def test_non_finite_settings_and_losses_stop_the_run(tmp_path, capsys):
    for bad in ("sft.learning_rate=.inf", "dmpo.beta=.nan", "sft.max_grad_norm=-.inf"):
        assert main(["sft", *TINY, bad, f"output_dir={tmp_path / 'a'}"]) == 2
        err = capsys.readouterr().err
        assert bad.split("=")[0] in err and "Traceback" not in err
    # A finite learning rate so large that the weights overflow: the loss turns NaN.
    out = tmp_path / "b"
    code = main(["sft", *TINY, "sft.learning_rate=1e30", "sft.batch_size=1", f"output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2 and "sft: the loss became nan at step" in err and "Traceback" not in err
    assert not (out / "sft" / "lineage.json").exists()  # never marked finished
    rows = (out / "sft" / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(r)["loss"] == json.loads(r)["loss"] for r in rows)  # no NaN logged


def test_validation_every_n_steps_gives_a_learning_curve(tmp_path):
    out = tmp_path / "run"
    demo = "data.demo={train_users: 6, valid_users: 3, test_users: 2, negatives: 3}"
    args = [o for o in TINY if not o.startswith("data.demo")] + [demo, "sft.batch_size=2"]
    assert main(["sft", *args, "sft.eval_every_steps=2", f"output_dir={out}"]) == 0
    rows = [json.loads(x) for x in (out / "sft/metrics.jsonl").read_text().splitlines()]
    scored = [r["step"] for r in rows if "valid_accuracy" in r]
    assert scored == [2, 3]  # every 2 steps and after the last of 3
    assert all(0 <= r["valid_accuracy"] <= 1 for r in rows if "valid_accuracy" in r)
    cfg = load_config(None, [*args, f"output_dir={out}"])
    assert cfg.sft.eval_every_steps == 0  # off unless asked


def test_a_rerun_with_other_settings_stops_and_relabels_nothing(tmp_path, capsys):
    """The three reproductions of the rerun bug: finished stages, saved predictions, a checkpoint."""
    out = tmp_path / "run"
    assert main(["run", *TINY, f"output_dir={out}"]) == 0
    capsys.readouterr()
    config = (out / "config.yaml").read_text()
    # 1. Finished stages: another k and loss stop before anything is reused or rewritten.
    assert main(["run", *TINY, "dmpo.k=3", "dmpo.loss=sdpo", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "dmpo: " in err and "dmpo.k: 2 then, 3 now" in err and "dmpo.loss: 'dmpo' then" in err
    assert "delete" in err and "Traceback" not in err
    assert (out / "config.yaml").read_text() == config  # not relabelled
    # 2. Saved predictions: a zero-shot evaluation with another prompt format stops.
    code = main(
        ["evaluate", "--stage", "zero_shot", *TINY, "data.prompt_seed=5", f"output_dir={out}"]
    )
    assert code == 2 and "data.prompt_seed: 0 then, 5 now" in capsys.readouterr().err
    # The same settings reuse, and the table's label comes from what was trained.
    assert main(["run", *TINY, f"output_dir={out}"]) == 0
    assert "| DMPO (k=2) | 5 |" in capsys.readouterr().out
    # A k no user's data reaches would train a smaller k under its label: refused.
    k4 = ["dmpo", "--sft-dir", str(out / "sft"), *TINY, "dmpo.k=4", f"output_dir={out / 'k4'}"]
    assert main(k4) == 2
    assert "dmpo.k=4, but no user of" in capsys.readouterr().err
    # 4. Other demo data: refused before the run's data files are rewritten.
    data = {p.name: p.read_bytes() for p in (out / "data").iterdir()}
    other_demo = "data.demo={train_users: 6, valid_users: 0, test_users: 3, negatives: 3, seed: 1}"
    for command in (["run"], ["evaluate", "--stage", "dmpo", "--out", str(tmp_path / "e")]):
        assert main([*command, *TINY, other_demo, f"output_dir={out}"]) == 2
        err = capsys.readouterr().err
        assert "data.demo: the demo data these settings make differs from" in err, err
        assert {p.name: p.read_bytes() for p in (out / "data").iterdir()} == data
    # 5. An evaluation on another test file, even one that fails, leaves the run's config.yaml
    # as training wrote it (export's model card and recommend read it).
    resolved = ["-c", str(out / "config.yaml")]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = ["evaluate", *resolved, "--stage", "dmpo", f"data.eval={empty}", "--out"]
    assert main([*args, str(tmp_path / "e1")]) == 2 and "no records" in capsys.readouterr().err
    other = tmp_path / "other.jsonl"
    other.write_text("".join((out / "data/test.jsonl").read_text().splitlines(True)[:2]))
    assert (
        main(
            [
                "evaluate",
                *resolved,
                "--stage",
                "dmpo",
                f"data.eval={other}",
                "--out",
                str(tmp_path / "e2"),
            ]
        )
        == 0
    )
    assert (out / "config.yaml").read_text() == config
    capsys.readouterr()
    # 3. A checkpoint: an unfinished SFT resumes only with the settings it started with.
    half = tmp_path / "half"
    assert main(["sft", *TINY, "sft.epochs=2", f"output_dir={half}"]) == 0
    (half / "sft" / "lineage.json").unlink()  # as if stopped after a checkpoint
    (half / "sft" / "adapter").rename(half / "sft" / "checkpoint")
    assert main(["sft", *TINY, "sft.epochs=2", "sft.learning_rate=0.05", f"output_dir={half}"]) == 2
    assert "sft.learning_rate: 0.0001 then, 0.05 now" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.name=builtin:nope", "unknown builtin model 'builtin:nope'"),
        ("model.dtype=float8", "model.dtype"),
        ("model.name=/tmp", "is not a model directory"),
        ("model.lora_target_modules=[nothing]", "its linear modules are"),
        ("sft.seed=-1", "sft.seed"),
        ("sft.epochs=0", "sft.epochs"),
    ],
)
def test_settings_that_fail_at_load_time_get_one_line(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["sft", *TINY, override, f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # A stage that stopped before training holds nothing to protect: the fixed run goes ahead.
    assert main(["sft", *TINY, f"output_dir={out}"]) == 0


def test_demo_config_is_the_documented_one():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "demo.yaml")
    assert (
        cfg.model.name == "builtin:smollm2-135m" and cfg.dmpo.k == 3 and cfg.data.demo is not None
    )


def test_gradient_checkpointing_trains_the_same_adapter(tmp_path):
    args = [*TINY, "sft.batch_size=2", "sft.learning_rate=1e-2"]
    assert main(["sft", *args, f"output_dir={tmp_path / 'a'}"]) == 0
    assert (
        main(["sft", *args, "sft.gradient_checkpointing=true", f"output_dir={tmp_path / 'b'}"]) == 0
    )
    a = load_file(tmp_path / "a/sft/adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "b/sft/adapter/adapter_model.safetensors")
    # Without checkpointing the users' common stem is encoded once behind a KV cache; with it
    # (layers replayed without a cache) in each row: the same numbers up to float rounding.
    for key in a:
        assert (a[key] - b[key]).norm() <= 1e-4 * a[key].norm(), key


def test_gradient_accumulation_logs_one_row_per_optimizer_step(tmp_path):
    out = tmp_path / "acc"
    assert main(["sft", *TINY, "sft.batch_size=1", "sft.grad_accum=3", f"output_dir={out}"]) == 0
    rows = [json.loads(x) for x in (out / "sft/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # 6 users, 1 per micro-batch, 3 per step


def test_two_processes_shard_the_users(tmp_path):
    """`torchrun` with 2 CPU processes (gloo): users are split, one process logs and evaluates."""
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    cmd = [
        str(Path(sys.executable).with_name("torchrun")),
        "--nproc_per_node",
        "2",
        "-m",
        "dmporec",
        "run",
        *TINY,
        "zero_shot=false",
        f"output_dir={out}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| DMPO (k=2) | 5 |") == 1  # the table, printed once
    sft_steps = [
        json.loads(x)["step"] for x in (out / "sft/metrics.jsonl").read_text().splitlines()
    ]
    assert sft_steps == [1]  # 6 users, 3 per batch, split over 2 processes: one step
    assert (out / "dmpo/eval/eval.json").is_file()


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import dmporec.stages.sft

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(dmporec.stages.sft, "run_sft", interrupted)
    # From the command line (argv from sys.argv): one line and exit status 130.
    monkeypatch.setattr(sys, "argv", ["dmporec", "sft", *TINY, f"output_dir={tmp_path / 'run'}"])
    assert main() == 130
    err = capsys.readouterr().err
    assert "interrupted; the same command resumes from the last checkpoint" in err
    assert "Traceback" not in err
