"""sft.report_to / dmpo.report_to: the steps reach accelerate's tracker (TensorBoard, read back
with tensorboard's own reader); a tracker whose package is missing is one line."""

import importlib.util
import json

import pytest

from dmporec.cli import main
from dmporec.training import check_tracker, flat_hparams

TINY = [
    "model.name=builtin:tiny-qwen3",
    "data.demo={train_users: 6, valid_users: 2, test_users: 2, negatives: 2}",
    "sft.epochs=2",
    "sft.batch_size=2",
    "sft.eval_every_steps=2",
]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="no tensorboard")
def test_tensorboard_gets_every_step_and_the_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["sft", *TINY, "sft.report_to=tensorboard", f"output_dir={out}"]) == 0
    events = list((out / "sft" / "tracking").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    rows = [json.loads(x) for x in (out / "sft/metrics.jsonl").read_text().splitlines()]
    for tag in ("loss", "lr", "valid_accuracy"):
        logged = [e for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []
        expected = [r for r in rows if tag in r]
        assert [e.step for e in logged] == [r["step"] for r in expected], tag
        for e, r in zip(logged, expected, strict=True):
            assert e.value == pytest.approx(r[tag], rel=1e-5)
    # The run config is there as hyperparameters (a second event file under the run).
    hparams = list((out / "sft" / "tracking").rglob("*.tfevents.*"))
    assert len(hparams) >= 2


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="no tensorboard")
def test_a_stage_that_stops_still_closes_its_tracker(tmp_path, capsys):
    """A diverging stage: the steps logged before it stopped are in the tracker's files (the
    writer is flushed and closed, not left open to the end of the process)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = ["sft", *TINY, "sft.report_to=tensorboard", "sft.learning_rate=1e30"]
    assert main([*args, "sft.batch_size=1", f"output_dir={out}"]) == 2
    assert "the loss became nan" in capsys.readouterr().err
    rows = [json.loads(x) for x in (out / "sft/metrics.jsonl").read_text().splitlines()]
    assert rows  # steps before the divergence
    logged = []
    for events in {p.parent for p in (out / "sft" / "tracking").rglob("*.tfevents.*")}:
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "loss" in acc.Tags()["scalars"]:
            logged += [e.step for e in acc.Scalars("loss")]
    assert logged == [r["step"] for r in rows]


def test_flat_hparams_and_a_missing_tracker():
    flat = flat_hparams({"sft": {"lr": 1e-3, "orders": "both"}, "x": [1, 2], "y": None})
    assert flat == {"sft.lr": 1e-3, "sft.orders": "both", "x": "[1, 2]", "y": "null"}
    if importlib.util.find_spec("wandb") is None:
        from dmporec.config import ConfigError

        with pytest.raises(ConfigError, match="pip install wandb"):
            check_tracker("wandb")
