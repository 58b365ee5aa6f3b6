"""Scoring shared over 2 CPU processes (torchrun, gloo) gives the one-process numbers bit for
bit: evaluation's predictions and DMPO's reference log-probs (distributed.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dmporec.cli import main

TINY = [
    "model.name=builtin:tiny-qwen3",
    "data.demo={train_users: 4, valid_users: 0, test_users: 9, negatives: 3}",
    "eval.batch_size=2",  # 5 chunks: processes 0 and 1 score 3 and 2 of them
    "eval.n_boot=20",
]
ENV = {**os.environ, "ACCELERATE_USE_CPU": "true"}
TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2"]


def test_two_processes_evaluate_exactly_like_one(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["evaluate", "--stage", "zero_shot", *TINY, f"output_dir={one}"]) == 0
    cmd = [
        *TORCHRUN,
        "-m",
        "dmporec",
        "evaluate",
        "--stage",
        "zero_shot",
        *TINY,
        f"output_dir={two}",
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| zero_shot |") == 1  # one process prints
    for name in ("predictions.jsonl", "eval.json"):
        assert (two / "zero_shot" / name).read_bytes() == (one / "zero_shot" / name).read_bytes()


SCRIPT = """
import sys, torch
from dmporec.collate import GroupEncoder
from dmporec.demo_data import DemoDataConfig, make_demo_data
from dmporec.distributed import process_state
from dmporec.model import BUILTIN_TINY, ModelConfig, add_lora, load_base_model, load_tokenizer
from dmporec.prompts import ChatFormat
from dmporec.reference import reference_logps

state = process_state()
cfg = ModelConfig(name=BUILTIN_TINY)
tok = load_tokenizer(cfg)
enc = GroupEncoder(tok, ChatFormat.from_tokenizer(tok))
data = make_demo_data(DemoDataConfig(train_users=7, valid_users=0, test_users=1, negatives=3))
groups = [enc.group(r, k=3) for r in data.train]
model = add_lora(load_base_model(cfg, torch.device("cpu")), cfg)
logps = reference_logps(model, groups, 6, layout="shared", batch_size=2, max_batch_tokens=8192)
torch.save(logps, f"{sys.argv[1]}.{state.process_index}.pt")
"""


def test_two_processes_compute_the_reference_exactly_like_one(tmp_path):
    script = tmp_path / "ref.py"
    script.write_text(SCRIPT)
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=ENV,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*TORCHRUN, str(script), str(tmp_path / "two")], env=ENV,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    want = torch.load(tmp_path / "one.0.pt")
    assert want.shape == (7, 6) and (want != 0).all()
    for rank in (0, 1):  # every process holds all of them
        assert torch.equal(torch.load(tmp_path / f"two.{rank}.pt"), want)


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "sft" / "adapter" / "adapter_model.safetensors")


def test_a_killed_two_process_run_resumes_where_it_stopped(tmp_path):
    """SIGKILL to torchrun and its workers once a checkpoint exists; the rerun resumes from it
    and ends with the adapter of a run never stopped, its metrics one row per step."""
    import json
    import signal
    import time

    import psutil

    train = [
        "model.name=builtin:tiny-qwen3",
        "data.demo={train_users: 24, valid_users: 0, test_users: 1, negatives: 1}",
        "sft.epochs=2", "sft.batch_size=1", "sft.save_every_steps=1", "sft.learning_rate=1e-2",
    ]  # fmt: skip

    def launch(out: Path) -> subprocess.Popen:
        cmd = [*TORCHRUN, "-m", "dmporec", "sft", *train, f"output_dir={out}"]
        with open(f"{out}.log", "a") as log:  # a file, not a pipe nobody reads while it runs
            return subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)

    def log(out: Path) -> str:
        return Path(f"{out}.log").read_text()[-3000:]

    whole = launch(tmp_path / "whole")
    assert whole.wait(timeout=600) == 0, log(tmp_path / "whole")

    def checkpointed_step() -> int:
        """The step of the checkpoint on disk (mid-swap it is under checkpoint.tmp)."""
        for name in ("checkpoint", "checkpoint.tmp"):
            try:
                return json.loads((tmp_path / "killed/sft" / name / "position.json").read_text())[
                    "step"
                ]
            except (OSError, ValueError):
                continue
        return 0

    run = launch(tmp_path / "killed")
    deadline = time.monotonic() + 600
    while checkpointed_step() < 3:
        assert run.poll() is None, "finished before it could be killed: " + log(tmp_path / "killed")
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # SIGKILL to torchrun and its workers at once (they run in sessions of their own), as when
    # a scheduler ends the job or the machine goes down.
    for proc in [*psutil.Process(run.pid).children(recursive=True), psutil.Process(run.pid)]:
        proc.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    stopped_at = checkpointed_step()
    assert not (tmp_path / "killed" / "sft" / "adapter").exists()  # it did not finish

    again = launch(tmp_path / "killed")
    assert again.wait(timeout=600) == 0, log(tmp_path / "killed")
    assert "sft: resuming from" in log(tmp_path / "killed")
    want, got = _adapter(tmp_path / "whole"), _adapter(tmp_path / "killed")
    assert want.keys() == got.keys()
    for key in want:
        assert torch.allclose(want[key], got[key], atol=1e-6), key
    metrics = tmp_path / "killed" / "sft" / "metrics.jsonl"
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > stopped_at


def test_two_processes_train_like_one_with_the_same_effective_batch(tmp_path):
    """SFT with one process accumulating 2 micro-batches and with 2 processes of 1 each: the
    same users in each optimizer step, so the same losses and adapter (to float tolerance)."""
    import json

    train = [
        "model.name=builtin:tiny-qwen3",
        "data.demo={train_users: 8, valid_users: 0, test_users: 1, negatives: 1}",
        "sft.epochs=1", "sft.batch_size=1", "sft.learning_rate=1e-2",
    ]  # fmt: skip
    assert main(["sft", *train, "sft.grad_accum=2", f"output_dir={tmp_path / 'one'}"]) == 0
    cmd = [*TORCHRUN, "-m", "dmporec", "sft", *train, "sft.grad_accum=1",
           f"output_dir={tmp_path / 'two'}"]  # fmt: skip
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def losses(out: Path) -> list[float]:
        rows = (out / "sft" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["loss"] for x in rows]

    assert len(losses(tmp_path / "one")) == len(losses(tmp_path / "two")) == 4
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    one, two = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5), key
