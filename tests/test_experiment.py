"""The experiment runner: cells with their own overrides, a shared SFT, resume, one table."""

import json
from pathlib import Path

import pytest

from dmporec.cli import main
from dmporec.config import ConfigError
from dmporec.stages.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(text.replace("ROOT", str(ROOT)).replace("OUT", str(tmp_path / "exp")))
    return str(path)


def test_cells_run_once_and_share_an_sft(tmp_path, capsys):
    path = write(
        tmp_path,
        """
base: ROOT/configs/tiny.yaml
output_dir: OUT
overrides: [data.valid_users=3, eval.split=valid, eval.n_boot=20]
cells:
  - {name: zero, stages: [baselines, zero_shot]}
  - {name: k2, overrides: [dmpo.k=2]}
  - {name: k3-beta, overrides: [dmpo.k=3, dmpo.beta=0.5], stages: [dmpo], sft_from: k2}
""",
    )
    assert main(["experiment", "--config", path]) == 0
    table = capsys.readouterr().out
    for row in (
        "| zero: zero-shot | 9 |",
        "| k2: SFT | 9 |",
        "| k2: DMPO (k=2) | 9 |",
        "| k3-beta: DMPO (k=3) | 9 |",
    ):
        assert row in table, row
    rows = [json.loads(x) for x in (tmp_path / "exp/results.jsonl").read_text().splitlines()]
    n_rows = len(rows)
    assert [r["model"] for r in rows[:3]] == ["random", "popularity", "bpr-mf"]
    rows = [r for r in rows if "eval_dir" in r]  # the LLM rows; the baselines carry scores only
    assert [r["cell"] for r in rows] == ["zero", "k2", "k2", "k3-beta"]
    assert rows[-1]["overrides"] == ["dmpo.k=3", "dmpo.beta=0.5"] and rows[-1]["split"] == "valid"
    assert not (tmp_path / "exp/k3-beta/sft").exists()  # its DMPO started from k2's SFT
    lineage = json.loads((tmp_path / "exp/k3-beta/dmpo/lineage.json").read_text())
    assert any("k2" in p for p in lineage["merged_adapters"])

    assert main(["report", str(tmp_path / "exp/k2/sft")]) == 2
    assert "is a stage's directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "nope: no such directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "exp")]) == 0
    report = (tmp_path / "exp/report.md").read_text()
    assert "| k2: DMPO (k=2) | 9 |" in report and "Evaluated on the valid split." in report
    for png in ("report_models.png", "report_k.png", "report_training.png"):
        assert (tmp_path / "exp" / png).stat().st_size > 1000, png
        assert f"]({png})" in report
    capsys.readouterr()

    assert main(["experiment", "--config", path]) == 0  # everything done: skipped
    assert capsys.readouterr().out.count("skipped") == 3
    assert len((tmp_path / "exp/results.jsonl").read_text().splitlines()) == n_rows

    # A cell whose overrides changed is not passed off as done with the new settings.
    Path(path).write_text(Path(path).read_text().replace("dmpo.beta=0.5", "dmpo.beta=0.2"))
    assert main(["experiment", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "cell k3-beta was made with overrides ['dmpo.k=3', 'dmpo.beta=0.5']" in err
    assert "rename the cell" in err
    assert len((tmp_path / "exp/results.jsonl").read_text().splitlines()) == n_rows
    Path(path).write_text(Path(path).read_text().replace("dmpo.beta=0.2", "dmpo.beta=0.5"))
    # ... nor one whose shared or command-line overrides changed.
    assert main(["experiment", "--config", path, "sft.learning_rate=0.5"]) == 2
    err = capsys.readouterr().err
    assert "cell zero was made with other settings (sft.learning_rate: 0.0001 then, 0.5 now" in err
    Path(path).write_text(Path(path).read_text().replace("eval.n_boot=20", "eval.n_boot=30"))
    assert main(["experiment", "--config", path]) == 2
    assert "eval.n_boot: 20 then, 30 now" in capsys.readouterr().err
    Path(path).write_text(Path(path).read_text().replace("eval.n_boot=30", "eval.n_boot=20"))
    # How fast or how often changes no result: still done.
    assert main(["experiment", "--config", path, "dmpo.save_every_steps=7"]) == 0
    assert capsys.readouterr().out.count("skipped") == 3
    # A DMPO cell whose SFT settings are not those of the cell it takes its SFT from.
    text = Path(path).read_text() + (
        "  - {name: other-sft, overrides: [dmpo.k=2, sft.learning_rate=0.5], stages: [dmpo], "
        "sft_from: k2}\n"
    )
    Path(path).write_text(text)
    assert main(["experiment", "--config", path, "--cells", "other-sft"]) == 2
    err = capsys.readouterr().err
    assert (
        "cell other-sft: sft_from k2 trained another SFT (sft.learning_rate: 0.0001 then, 0.5 now"
        in err
    )
    assert not (tmp_path / "exp/other-sft/dmpo").exists()


def test_bad_experiment_files_are_named(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "neither results.jsonl" in capsys.readouterr().err
    path = write(tmp_path, "base: ROOT/configs/tiny.yaml\noutput_dir: OUT\ncells: [{name: a}]\n")
    assert main(["experiment", "--config", path, "--cells", "b"]) == 2
    assert "no cell named b" in capsys.readouterr().err
    path = write(
        tmp_path, "base: ROOT/configs/tiny.yaml\noutput_dir: OUT\ncells: [{name: a, sft_from: b}]\n"
    )
    with pytest.raises(ConfigError, match="sft_from 'b' is not an earlier cell"):
        load_experiment(path)
    for cells, message in (
        ("[{name: '..'}]", "cell name '..' is not a directory of its own in output_dir"),
        ("[{name: results.md}]", "cell name 'results.md' is not a directory of its own"),
        ("[{name: a, overrides: [output_dir=/tmp/x]}]", "cell a: output_dir is the experiment's"),
    ):
        path = write(tmp_path, f"base: ROOT/configs/tiny.yaml\noutput_dir: OUT\ncells: {cells}\n")
        assert main(["experiment", "--config", path]) == 2
        assert message in capsys.readouterr().err
    path = write(tmp_path, "base: x\noutput_dir: OUT\ncells: [{name: a, stage: [sft]}]\n")
    assert main(["experiment", "--config", path]) == 2
    assert "cells.0.stage: Extra inputs are not permitted" in capsys.readouterr().err
