"""Work shared over 2 CPU processes (torchrun, gloo) gives the one-process numbers: evaluation's
predictions and DMPO's reference log-probs bit for bit (distributed.py), SFT's losses and adapter
to float tolerance; and a killed two-process run resumes where it stopped.

A torchrun launch costs seconds of imports before any work, so one launch (`two_processes`, once
for the file) does every two-process run the equivalence tests compare, and the resume test's
run that is never stopped; their one-process counterparts run in this process.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from dmporec.cli import main

TINY = [
    "model.name=builtin:tiny-qwen3",
    "data.demo={train_users: 4, valid_users: 0, test_users: 9, negatives: 3}",
    "eval.batch_size=2",  # 5 chunks: processes 0 and 1 score 3 and 2 of them
    "eval.n_boot=20",
]
# SFT with one process accumulating 2 micro-batches and with 2 processes of 1 each.
SFT_BATCH = [
    "model.name=builtin:tiny-qwen3",
    "data.demo={train_users: 8, valid_users: 0, test_users: 1, negatives: 1}",
    "sft.epochs=1", "sft.batch_size=1", "sft.learning_rate=1e-2",
]  # fmt: skip
# The run the resume test kills, checkpointing every step.
SFT_RESUME = [
    "model.name=builtin:tiny-qwen3",
    "data.demo={train_users: 24, valid_users: 0, test_users: 1, negatives: 1}",
    "sft.epochs=2", "sft.batch_size=1", "sft.save_every_steps=1", "sft.learning_rate=1e-2",
]  # fmt: skip
ENV = {**os.environ, "ACCELERATE_USE_CPU": "true"}
TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2"]


def reference(out: str) -> None:
    """DMPO's reference log-probs of 7 demo users (k=3), saved as OUT.RANK.pt by every process."""
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
    torch.save(logps, f"{out}.{state.process_index}.pt")


# Run by each torchrun process: every two-process run the tests compare, one after the other.
TWO_PROCESSES = f"""
import sys
from pathlib import Path

sys.path.insert(0, {str(Path(__file__).parent)!r})
from dmporec.cli import main
from test_distributed import SFT_BATCH, SFT_RESUME, TINY, reference

out = Path(sys.argv[1])
assert main(["evaluate", "--stage", "zero_shot", *TINY, f"output_dir={{out / 'evaluate'}}"]) == 0
reference(str(out / "reference"))
assert main(["sft", *SFT_BATCH, "sft.grad_accum=1", f"output_dir={{out / 'sft'}}"]) == 0
assert main(["sft", *SFT_RESUME, f"output_dir={{out / 'whole'}}"]) == 0
"""


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, str]:
    """The directory of the two-process runs (evaluate/, reference.RANK.pt, sft/, whole/) and
    what the launch printed."""
    out = tmp_path_factory.mktemp("two")
    script = out / "runs.py"
    script.write_text(TWO_PROCESSES)
    proc = subprocess.run([*TORCHRUN, str(script), str(out)], env=ENV, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_two_processes_evaluate_exactly_like_one(tmp_path, two_processes):
    two, printed = two_processes
    one = tmp_path / "one"
    assert main(["evaluate", "--stage", "zero_shot", *TINY, f"output_dir={one}"]) == 0
    assert printed.count("| zero_shot |") == 1  # one process prints
    for name in ("predictions.jsonl", "eval.json"):
        want = (one / "zero_shot" / name).read_bytes()
        assert (two / "evaluate" / "zero_shot" / name).read_bytes() == want


def test_two_processes_compute_the_reference_exactly_like_one(tmp_path, two_processes):
    two, _ = two_processes
    reference(str(tmp_path / "one"))
    want = torch.load(tmp_path / "one.0.pt")
    assert want.shape == (7, 6) and (want != 0).all()
    for rank in (0, 1):  # every process holds all of them
        assert torch.equal(torch.load(two / f"reference.{rank}.pt"), want)


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "sft" / "adapter" / "adapter_model.safetensors")


def test_two_processes_train_like_one_with_the_same_effective_batch(tmp_path, two_processes):
    """SFT with one process accumulating 2 micro-batches and with 2 processes of 1 each: the
    same users in each optimizer step, so the same losses and adapter (to float tolerance)."""
    two = two_processes[0] / "sft"
    one = tmp_path / "one"
    assert main(["sft", *SFT_BATCH, "sft.grad_accum=2", f"output_dir={one}"]) == 0

    def losses(out: Path) -> list[float]:
        rows = (out / "sft" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["loss"] for x in rows]

    assert len(losses(one)) == len(losses(two)) == 4
    assert losses(two) == pytest.approx(losses(one), abs=1e-5)
    want, got = _adapter(one), _adapter(two)
    for key in want:
        assert torch.allclose(want[key], got[key], atol=1e-5), key


def test_a_killed_two_process_run_resumes_where_it_stopped(tmp_path, two_processes):
    """SIGKILL to torchrun and its workers once a checkpoint exists; the rerun resumes from it
    and ends with the adapter of a two-process run never stopped (`two_processes`' whole/), its
    metrics one row per step."""
    killed = tmp_path / "killed"

    def launch() -> subprocess.Popen:
        cmd = [*TORCHRUN, "-m", "dmporec", "sft", *SFT_RESUME, f"output_dir={killed}"]
        with open(f"{killed}.log", "a") as log:  # a file, not a pipe nobody reads while it runs
            return subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)

    def log() -> str:
        return Path(f"{killed}.log").read_text()[-3000:]

    def checkpointed_step() -> int:
        """The step of the checkpoint on disk (mid-swap it is under checkpoint.tmp)."""
        for name in ("checkpoint", "checkpoint.tmp"):
            try:
                return json.loads((killed / "sft" / name / "position.json").read_text())["step"]
            except (OSError, ValueError):
                continue
        return 0

    run = launch()
    deadline = time.monotonic() + 600
    while checkpointed_step() < 3:
        assert run.poll() is None, "finished before it could be killed: " + log()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # SIGKILL to torchrun and its workers at once (they run in sessions of their own), as when
    # a scheduler ends the job or the machine goes down.
    for proc in [*psutil.Process(run.pid).children(recursive=True), psutil.Process(run.pid)]:
        proc.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    stopped_at = checkpointed_step()
    assert not (killed / "sft" / "adapter").exists()  # it did not finish

    again = launch()
    assert again.wait(timeout=600) == 0, log()
    assert "sft: resuming from" in log()
    want, got = _adapter(two_processes[0] / "whole"), _adapter(killed)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.allclose(want[key], got[key], atol=1e-6), key
    steps = [json.loads(x)["step"] for x in (killed / "sft" / "metrics.jsonl").open()]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > stopped_at
