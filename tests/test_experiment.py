"""The experiment runner: cells with their own overrides, a shared SFT, resume, one table."""

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dmporec.cli import main
from dmporec.config import ConfigError
from dmporec.metrics import pair_correct, paired_auc_test, paired_test
from dmporec.stages.experiment import cell_config, load_experiment

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "exp.yaml"
    text = text.replace("ROOT", str(ROOT)).replace("OUT", str(tmp_path / "exp"))
    path.write_text(text.replace("PUB", str(tmp_path / "published")))
    return str(path)


EXPERIMENT = """
base: ROOT/configs/tiny.yaml
output_dir: OUT
publish: PUB
overrides: [data.valid_users=5, eval.split=valid, eval.n_boot=20]
paired: {baselines: [popularity, bpr-mf]}
evals:
  - {name: lists, overrides: [eval.listwise=3], cells: [zero, k2]}
  # Fitted on the 5 held-out users' pairs (never trained on), scored on the 8 test pairs; of
  # k3-beta's DMPO only (zero's rows are baselines and zero-shot).
  - {name: hybrid, kind: hybrid, overrides: [eval.n_boot=50], cells: [zero, k3-beta]}
plots:
  - {x: dmpo.k, file: sweep_k.png, bands: [zero], title: accuracy against k}
cells:
  - {name: zero, stages: [baselines, zero_shot]}
  - {name: k2, overrides: [dmpo.k=2]}
  - {name: k3-beta, overrides: [dmpo.k=3, dmpo.beta=0.5], stages: [dmpo], sft_from: k2}
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """EXPERIMENT run once: (its directory, what it printed). Tests that change its files work on
    a copy (`copy_of`)."""
    tmp = tmp_path_factory.mktemp("experiment")
    path = write(tmp, EXPERIMENT)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["experiment", "--config", path]) == 0
    return tmp, printed.getvalue()


def copy_of(finished, tmp_path: Path) -> str:
    """The finished experiment's output and published directories under tmp_path, and its file."""
    for name in ("exp", "published"):
        shutil.copytree(finished[0] / name, tmp_path / name)
    return write(tmp_path, EXPERIMENT)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_cells_run_once_and_share_an_sft(finished, tmp_path, capsys):
    table = finished[1]
    path = copy_of(finished, tmp_path)
    for row in (
        "| zero: zero-shot | 15 |",
        "| k2: SFT | 15 |",
        "| k2: DMPO (k=2) | 15 |",
        "| k3-beta: DMPO (k=3) | 15 |",
    ):
        assert row in table, row
    rows = rows_of(tmp_path / "exp/results.jsonl")
    n_rows = len(rows)
    assert [r["model"] for r in rows[:3]] == ["random", "popularity", "bpr-mf"]
    rows = [r for r in rows if "eval_dir" in r]  # the LLM rows; the baselines carry scores only
    assert [r["cell"] for r in rows] == ["zero", "k2", "k2", "k3-beta"]
    assert [r["stage"] for r in rows] == ["zero_shot", "sft", "dmpo", "dmpo"]
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
    assert "| k2: DMPO (k=2) | 15 |" in report and "Evaluated on the valid split." in report
    for png in ("report_models.png", "report_training.png"):
        assert (tmp_path / "exp" / png).stat().st_size > 1000, png
        assert f"]({png})" in report
    # k2 and k3-beta differ in beta too: no line of k (tests/test_report.py draws one).
    assert "report_k.png" not in report
    capsys.readouterr()

    assert main(["experiment", "--config", path]) == 0  # everything done: skipped
    assert capsys.readouterr().out.count("skipped") == 3
    assert len((tmp_path / "exp/results.jsonl").read_text().splitlines()) == n_rows

    # A cell whose overrides changed is not passed off as done with the new settings.
    Path(path).write_text(Path(path).read_text().replace("dmpo.beta=0.5", "dmpo.beta=0.2"))
    assert main(["experiment", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "cell k3-beta was made with other settings (dmpo.beta: 0.5 then, 0.2 now)" in err
    assert "rename the cell, or run it again with --rerun k3-beta" in err
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
    # Nor is an extra evaluation made with other settings, a hybrid or an evaluate: the run stops
    # before any cell runs, naming the cell and the evaluation; a dropped override reads as the
    # cell's value.
    text = Path(path).read_text()
    for before, after, said in (
        ("eval.n_boot=50", "eval.n_boot=60", "k3-beta (DMPO (k=3)): extra evaluation hybrid was "
         "made with other settings (eval.n_boot: 50 then, 60 now)"),
        ("[eval.n_boot=50]", "[]", "hybrid was made with other settings (eval.n_boot: 50 then, "
         "20 now)"),
        ("kind: hybrid", "kind: evaluate", "hybrid was made with other settings (hybrid."
         "selected_by: 'log-loss' then, None now; kind: 'hybrid' then, 'evaluate' now"),
        ("eval.listwise=3", "eval.listwise=4", "cell zero (random): extra evaluation lists was made "
         "with other settings (eval.listwise: 3 then, 4 now)"),
    ):  # fmt: skip
        Path(path).write_text(text.replace(before, after))
        assert main(["experiment", "--config", path]) == 2
        err = capsys.readouterr().err
        assert said in err and "run the cell again with --rerun" in err, err
    Path(path).write_text(text)
    # A hybrid fitted before C was chosen by log-loss (no such setting stored) is another result.
    results = tmp_path / "exp/results.jsonl"
    kept = results.read_text()
    older = [json.loads(line) for line in kept.splitlines()]
    for row in older:
        row.get("evals", {}).get("hybrid", {}).get("settings", {}).pop("hybrid.selected_by", None)
    results.write_text("".join(json.dumps(row) + "\n" for row in older))
    assert main(["experiment", "--config", path]) == 2
    assert "hybrid.selected_by: None then, 'log-loss' now" in capsys.readouterr().err
    results.write_text(kept)
    assert len(results.read_text().splitlines()) == n_rows
    Path(path).write_text(text)
    # One kept without its settings (an older dmporec) is not taken for this file's either.
    results = (tmp_path / "exp/results.jsonl").read_text()
    made = rows_of(tmp_path / "exp/results.jsonl")
    del next(r for r in made if r["cell"] == "k2")["evals"]["lists"]["settings"]
    (tmp_path / "exp/results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in made))
    assert main(["experiment", "--config", path]) == 2
    assert "cell k2 (SFT): extra evaluation lists was made with no record of its settings" in (
        capsys.readouterr().err
    )
    (tmp_path / "exp/results.jsonl").write_text(results)
    # --rerun makes it again, with the settings the file now gives it.
    Path(path).write_text(text.replace("eval.n_boot=50", "eval.n_boot=60"))
    assert main(["experiment", "--config", path, "--rerun", "k3-beta"]) == 0
    assert "experiment: hybrid of cell k3-beta (DMPO (k=3))" in capsys.readouterr().out
    (k3,) = [r for r in rows_of(tmp_path / "exp/results.jsonl") if r["cell"] == "k3-beta"]
    assert k3["evals"]["hybrid"]["settings"] == {
        "kind": "hybrid",
        "eval.n_boot": 60,
        "hybrid.selected_by": "log-loss",
    }
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


def test_paired_tests_extra_evaluations_and_publishing(finished):
    out, published = finished[0] / "exp", finished[0] / "published"
    rows = rows_of(out / "results.jsonl")
    by = {(r["cell"], r["model"]): r for r in rows}
    # A trained stage's row keeps its training statistics (held-out reward accuracy by quarter).
    training = by[("k2", "DMPO (k=2)")]["training"]
    assert {"loss_first10", "loss_last10", "reward_accuracy_by_quarter"} <= training.keys()
    assert "reward_accuracy_last10" not in by[("k2", "SFT")]["training"]
    # Paired tests as the file asks: each trained row against zero-shot, popularity and BPR-MF
    # (random and MiniLM were not asked for), DMPO against the SFT it started from.
    tests = json.loads((out / "paired.json").read_text())
    trained = ("k2: SFT", "k2: DMPO (k=2)", "k3-beta: DMPO (k=3)")
    assert {(t["a"], t["b"]) for t in tests} == {
        (a, b) for a in trained for b in ("zero: zero-shot", "zero: popularity", "zero: bpr-mf")
    } | {("k2: DMPO (k=2)", "k2: SFT"), ("k3-beta: DMPO (k=3)", "k2: SFT")}
    # ... each the paired test of the two rows' kept per-pair scores.
    a, b = by[("k3-beta", "DMPO (k=3)")]["pair_scores"], by[("k2", "SFT")]["pair_scores"]
    ca, ra, cb, rb = (np.array(x[k]) for x in (a, b) for k in ("chosen", "rejected"))
    expected = {
        **paired_test(pair_correct(ca, ra), pair_correct(cb, rb)),
        **paired_auc_test(np.array(a["users"]), ca, ra, cb, rb),
    }
    (test,) = [t for t in tests if (t["a"], t["b"]) == ("k3-beta: DMPO (k=3)", "k2: SFT")]
    assert {k: test[k] for k in expected} == expected
    assert "| k3-beta: DMPO (k=3) vs k2: SFT |" in (out / "paired.md").read_text()
    # The extra evaluation of the cells it names, called directly: lists of 3 candidates per
    # validation user, and the accuracy on each user's 1st, 2nd, 3rd negative.
    for key in (("zero", "zero-shot"), ("zero", "popularity"), ("k2", "SFT"), ("k2", "DMPO (k=2)")):
        assert by[key]["evals"]["lists"]["list3_users"] == 5, key
    assert "lists" not in by[("k3-beta", "DMPO (k=3)")]["evals"]
    assert list(by[("k2", "SFT")]["evals"]["lists"]["accuracy_by_negative"]) == ["1", "2", "3"]
    assert (out / "k2/dmpo/eval-lists/lists.jsonl").is_file()
    # The hybrid of k3-beta's DMPO (kind: hybrid; zero's baselines and zero-shot rows have none):
    # fitted on the 5 held-out users' pairs, scored on the 8 test pairs; its fusions, its paired
    # tests against every component and its per-pair scores, with the settings it was made with.
    for key in [("k3-beta", "DMPO (k=3)")]:
        h = by[key]["evals"]["hybrid"]
        assert h["settings"] == {
            "kind": "hybrid", "eval.n_boot": 50, "hybrid.selected_by": "log-loss"
        }  # fmt: skip
        assert h["fusion"]["selected_by"] == "log-loss"
        assert (h["valid_users"], h["valid_pairs"]) == (5, 15)
        assert h["fusion"]["valid_pairs"] == h["classic_fusion"]["valid_pairs"] == 15
        assert h["fusion"]["components"][:3] == ["llm", "popularity", "bpr-mf"]
        assert h["classic_fusion"]["components"] == h["fusion"]["components"][1:]
        assert len(h["fusion"]["weights"]) == len(h["fusion"]["components"])
        scores = h["pair_scores"]
        assert h["pairs"] == len(scores["users"]) == len(scores["chosen"]) == 8
        correct = pair_correct(np.array(scores["chosen"]), np.array(scores["rejected"]))
        assert h["accuracy"] == pytest.approx(correct.mean())
        assert h["accuracy_ci_low"] <= h["accuracy"] <= h["accuracy_ci_high"]
        assert {t["a"] for t in h["paired_tests"]} == {f"{key[0]}: {key[1]} + classic"}
        assert {"its LLM", "popularity", "bpr-mf", "the same fusion without the LLM"} <= {
            t["b"] for t in h["paired_tests"]
        }
        assert all({"p_value", "auc_p_value"} <= t.keys() for t in h["paired_tests"])
    assert [r["cell"] for r in rows if "hybrid" in r.get("evals", {})] == ["k3-beta"]
    assert (out / "k3-beta/dmpo/hybrid/model.json").is_file()
    report = (out / "report.md").read_text()
    assert "## Extra evaluation: lists" in report and "## Training" in report
    assert "## Extra evaluation: hybrid" in report
    assert "| k3-beta: DMPO (k=3) + classic | 8 |" in report
    assert "| k3-beta: DMPO (k=3) + classic vs its LLM |" in report
    assert "## Paired tests" in report and "](sweep_k.png)" in report
    assert (out / "sweep_k.png").stat().st_size > 1000
    # Published: every row with its settings, per-pair scores and paired tests, and the tables.
    rows = rows_of(published / "results.jsonl")
    assert [(r["cell"], r["model"]) for r in rows] == list(by)
    assert all("settings" in r and "pair_scores" in r for r in rows)
    assert [r.get("evals") for r in rows] == [r.get("evals") for r in by.values()]
    (k3,) = [r for r in rows if r["cell"] == "k3-beta"]
    assert [t["b"] for t in k3["paired_tests"]] == [
        "zero: zero-shot", "zero: popularity", "zero: bpr-mf", "k2: SFT"
    ]  # fmt: skip
    for name in ("results.md", "paired.md", "report.md", "sweep_k.png", "report_training.png"):
        assert (published / name).stat().st_size > 100, name


def test_a_new_checkout_restores_the_published_cells(finished, tmp_path, capsys, monkeypatch):
    path = copy_of(finished, tmp_path)
    out, published = tmp_path / "exp", tmp_path / "published"
    tests, rows = (out / "paired.json").read_text(), (published / "results.jsonl").read_text()
    report = (out / "report.md").read_text()
    shutil.rmtree(out)  # runs/ does not outlive a session; the published files do
    (published / "gains.json").write_text("[]\n")  # an earlier run's: this one makes none

    def no_hybrid(*args, **kwargs):
        raise AssertionError("a restored hybrid evaluation was made again")

    monkeypatch.setattr("dmporec.stages.hybrid.run_hybrid", no_hybrid)
    assert main(["experiment", "--config", path]) == 0  # every cell, the hybrid's included
    printed = capsys.readouterr().out
    assert f"restored from {published / 'results.jsonl'}: zero, k2, k3-beta" in printed
    assert "cell zero is in" in printed and "cell k2 is in" in printed
    assert not (out / "k2").exists()  # nothing trained or scored
    assert (out / "paired.json").read_text() == tests
    assert (published / "results.jsonl").read_text() == rows
    assert not (published / "gains.json").exists()
    kept = [r["evals"] for r in rows_of(out / "results.jsonl") if "evals" in r]
    assert kept == [json.loads(r)["evals"] for r in rows.splitlines() if '"evals"' in r]
    assert sum("hybrid" in e for e in kept) == 1  # k3-beta's, exactly as published
    # The report's hybrid tables as the run that made them wrote them (no training curves now).
    section = "## Extra evaluation: hybrid"
    assert (out / "report.md").read_text().split(section)[1].split("\n## ")[0] == (
        report.split(section)[1].split("\n## ")[0]
    )
    monkeypatch.undo()
    # A cell to run again whose sft_from is restored (no adapter here) runs that cell first;
    # its new rows replace the published ones.
    assert main(["experiment", "--config", path, "--rerun", "k3-beta"]) == 0
    assert "experiment: cell k2 runs first: k3-beta starts from its SFT" in capsys.readouterr().out
    assert (out / "k2/sft/lineage.json").is_file()
    again = rows_of(published / "results.jsonl")
    assert [r["cell"] for r in again].count("k3-beta") == 1
    assert {r["cell"] for r in again} == {"zero", "k2", "k3-beta"}


def test_rows_of_an_older_run_are_restored_with_their_scores(finished, tmp_path, capsys):
    """Rows as a dmporec before #38 wrote them (benchmarks/learning_curve.py's runs): no stage,
    no per-pair scores, settings with the fields marked operational since: restored from their
    results.jsonl with the scores and training statistics of the run directory beside it."""
    path = copy_of(finished, tmp_path)
    old = tmp_path / "exp"
    made = rows_of(old / "results.jsonl")
    strip = ("pair_scores", "stage", "vars", "training", "evals")
    written = [
        {
            **{k: v for k, v in r.items() if k not in strip},
            "settings": {**r["settings"], "zero_shot": True, "baselines": True},
        }
        for r in made
        if r["cell"] != "zero"  # the baselines' scores were never beside them
    ]
    (old / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in written))
    new, pub = tmp_path / "new", tmp_path / "pub2"
    args = ["--publish", str(pub), "--restore", str(old / "results.jsonl"), "--cells", "k2"]
    assert main(["experiment", "--config", path, *args, f"output_dir={new}"]) == 0
    assert "restored from" in capsys.readouterr().out
    restored = {(r["cell"], r["model"]): r for r in rows_of(new / "results.jsonl")}
    for r in made[-3:]:
        mine = restored[(r["cell"], r["model"])]
        assert mine["pair_scores"] == r["pair_scores"] and mine["stage"] == r["stage"]
        assert mine["training"] == r["training"]
    assert {(t["a"], t["b"]) for t in json.loads((new / "paired.json").read_text())} == {
        ("k2: DMPO (k=2)", "k2: SFT"), ("k3-beta: DMPO (k=3)", "k2: SFT")
    }  # fmt: skip
    # Rows of other settings are never relabelled as this experiment's.
    assert main(["experiment", "--config", path, *args, "output_dir=" + str(tmp_path / "x"),
                 "dmpo.beta=0.3"]) == 2  # fmt: skip
    assert "cell k2 was made with other settings (dmpo.beta: 0.1 then, 0.3 now)" in (
        capsys.readouterr().err
    )


def test_a_grid_is_one_cell_per_combination(tmp_path):
    path = write(
        tmp_path,
        """
base: ROOT/configs/tiny.yaml
output_dir: OUT
cells:
  - {name: sft, stages: [sft]}
  - name: "dmpo-k{k}-lr{lr}"
    grid: {k: [1, 3], lr: [1.0e-3, 0.0002]}
    vars: {family: dmpo}
    stages: [dmpo]
    sft_from: sft
    label: "lr {lr}"
    overrides: ["dmpo.k={k}", "dmpo.learning_rate={lr}"]
""",
    )
    exp = load_experiment(path)
    assert [c.name for c in exp.cells] == [
        "sft", "dmpo-k1-lr0.001", "dmpo-k1-lr0.0002", "dmpo-k3-lr0.001", "dmpo-k3-lr0.0002"
    ]  # fmt: skip
    cell = exp.cells[2]
    assert cell.overrides == ["dmpo.k=1", "dmpo.learning_rate=0.0002"] and cell.label == "lr 0.0002"
    assert cell.vars == {"family": "dmpo", "k": 1, "lr": 0.0002} and cell.sft_from == "sft"
    assert cell_config(exp, cell).dmpo.learning_rate == 0.0002


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


def two_models(tmp_path: Path):
    """Results of a file with two base models (the learning curve's SmolLM2 and Gemma cells):
    a zero-shot and an SFT row each, without per-pair results; Gemma's SFT is paired_with
    SmolLM2's."""
    from dmporec.stages.experiment_rows import Results

    text = """
base: ROOT/configs/tiny.yaml
output_dir: OUT
paired: {zero_shot: true, baselines: [], sft: true}
cells:
  - {name: zero, stages: [zero_shot]}
  - {name: zero-b, stages: [zero_shot], overrides: [model.name=builtin:gemma3-270m]}
  - {name: sft, stages: [sft]}
  - {name: sft-b, stages: [sft], overrides: [model.name=builtin:gemma3-270m], paired_with: [sft]}
"""
    results = Results(load_experiment(write(tmp_path, text)), [])
    stage = {"zero": "zero_shot", "zero-b": "zero_shot", "sft": "sft", "sft-b": "sft"}
    results.rows = [{"cell": c, "model": s, "stage": s} for c, s in stage.items()]
    return results


def test_a_trained_row_is_paired_with_the_zero_shot_of_its_own_model(tmp_path):
    """Two base models in one file (the learning curve's SmolLM2 and Gemma cells): each trained
    row is paired with its own model's zero-shot row, and with the other model's rows only where
    paired_with names them."""
    from dmporec.stages.experiment_rows import row_name

    results = two_models(tmp_path)
    pairs = {r["cell"]: sorted(row_name(o) for o in results.comparisons(r)) for r in results.rows}
    assert pairs["sft"] == ["zero: zero_shot"]
    assert pairs["sft-b"] == ["sft: sft", "zero-b: zero_shot"]


def test_a_larger_models_gain_over_its_own_zero_shot_is_tested(tmp_path):
    """The #36 question, is the larger model's gain over zero-shot larger: a trained row whose
    paired_with names another base model's row of the same stage is tested on the difference of
    the two gains, each over its own model's zero-shot (metrics.gain_difference_test, the same
    numbers); the table and gains.json carry it; rows without per-pair scores give none."""
    from dmporec.metrics import gain_difference_test
    from dmporec.tables import gain_table

    results = two_models(tmp_path)
    assert results.gain_tests() == []  # no per-pair scores kept
    rng = np.random.default_rng(0)
    n = 120
    users = [f"u{i // 2}" for i in range(n)]
    scores = {  # B's SFT learns everything over its zero-shot; A's SFT is its zero-shot
        "zero": (rng.random(n), rng.random(n)),
        "zero-b": (rng.random(n), rng.random(n)),
        "sft-b": (1 + rng.random(n), rng.random(n)),
    }
    scores["sft"] = scores["zero"]
    for r in results.rows:
        chosen, rejected = scores[r["cell"]]
        r["pair_scores"] = {"users": users, "chosen": list(chosen), "rejected": list(rejected)}
    (test,) = results.gain_tests()
    assert (test["a"], test["a_base"]) == ("sft-b: sft", "zero-b: zero_shot")
    assert (test["b"], test["b_base"]) == ("sft: sft", "zero: zero_shot")
    cells = {"a": "sft-b", "a_base": "zero-b", "b": "sft", "b_base": "zero"}
    expected = gain_difference_test(np.array(users), {k: scores[c] for k, c in cells.items()})
    assert {k: v for k, v in test.items() if k not in ("a", "a_base", "b", "b_base")} == expected
    assert test["gain_b"] == 0 and test["gain_difference"] > 0.3
    assert test["gain_p_value"] < 0.05
    table = gain_table([test])
    assert "sft-b: sft (zero-b: zero_shot)" in table and f"{test['gain_a']:+.3f}" in table
    # A zero-shot row that kept only its per-pair correctness (the learning-curve script's):
    # the accuracy gains alone, the same numbers.
    zero = next(r for r in results.rows if r["cell"] == "zero")
    zero["pair_correct"] = list(pair_correct(*scores["zero"]))
    del zero["pair_scores"]
    (older,) = results.gain_tests()
    assert {k: older[k] for k in older if "auc" not in k} == {
        k: test[k] for k in test if "auc" not in k
    }
    assert "auc_gain_difference" not in older and "| - | - | - | - |" in gain_table([older])
