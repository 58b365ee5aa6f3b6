"""benchmarks/learning_curve.py end to end on the tiny model, so the script never rots.

The script's main runs in this process with its command line in sys.argv (what it prints read
back through capsys, a stop as the SystemExit it raises): each run started as a subprocess cost
~5 s of imports before any work, and no check here is about the process boundary.
"""

import functools
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT.parent / "shared" / "data" / "raw" / "ml-1m-users-1-2999"


@pytest.fixture(scope="module")
def script():
    """benchmarks/learning_curve.py as a module (imported once for the file's tests)."""
    spec = importlib.util.spec_from_file_location(
        "learning_curve_script", ROOT / "benchmarks" / "learning_curve.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run(script, monkeypatch, capsys):
    """`run(args)`: the script's main with that command line; returns what it printed."""

    def run(args: list[str]) -> str:
        capsys.readouterr()  # what came before is not this run's
        monkeypatch.setattr(sys, "argv", ["benchmarks/learning_curve.py", *args])
        script.main()
        return capsys.readouterr().out

    return run


def stopped(run, args: list[str]) -> str:
    """The message of a run that stops (SystemExit with a message, as the script exits)."""
    with pytest.raises(SystemExit) as stop:
        run(args)
    assert isinstance(stop.value.code, str), stop.value.code  # a message, not a bare status
    return stop.value.code


@pytest.mark.skipif(not RAW.is_dir(), reason="../shared/data/raw is not beside this checkout")
def test_learning_curve_script_runs_and_plots(tmp_path, run, script, monkeypatch):
    # The paired AUC tests resample 1000 times (the script does not pass eval.n_boot on): ~40
    # tests a run, over half of this test's time. 10 resamples, as eval.n_boot=10 below, wire
    # the same tests and tables.
    paired_auc_test = functools.partial(script.paired_auc_test, n_boot=10)
    monkeypatch.setattr(script, "paired_auc_test", paired_auc_test)
    cmd = [
        "--sizes",
        "3,6",
        "--eval-pairs",
        "4",
        "--out",
        str(tmp_path / "curve"),
        "--publish",
        str(tmp_path / "published"),
        "model.name=builtin:tiny-qwen3",
        "sft.batch_size=3",
        "dmpo.batch_size=3",
        "eval.n_boot=10",
    ]
    run([*cmd, "--valid-lrs", "1e-3", "--valid-users", "2"])
    curve = json.loads((tmp_path / "published" / "curve.json").read_text())
    assert [n for n, *_ in curve["series"]["DMPO (k=3)"]] == [3, 6]
    assert [n for n, *_ in curve["series"]["SFT"]] == [3, 6]
    assert "popularity" in curve["series"] and "DPO (k=1)" in curve["series"]
    # Every trained model against zero-shot and its N's popularity and BPR-MF; DMPO/DPO against
    # their SFT, SFT against SFT at the N below; at the largest N the negatives ablation and S-DPO
    # (#36) too, and every DMPO-family model against DPO k=1 there (several negatives vs one).
    ablation = ["DMPO (k=2)", "DMPO (k=5)", "SDPO (k=3)"]
    trained = {3: ["SFT", "DMPO (k=3)"], 6: ["SFT", "DMPO (k=3)", "DPO (k=1)", *ablation]}
    assert all([n for n, *_ in curve["series"][a]] == [6] for a in ablation)
    tested = {(t["n"], t["a"], t["b"]) for t in curve["paired_tests"]}
    assert tested == {
        (n, a, b)
        for n in (3, 6)
        for a in trained[n]
        for b in ("zero-shot", f"popularity (N = {n})", f"bpr-mf (N = {n})")
    } | {(n, a, "SFT") for n in (3, 6) for a in trained[n][1:]} | {
        (6, a, "DPO (k=1)") for a in ["DMPO (k=3)", *ablation]
    } | {(6, "SFT", "SFT (N = 3)")}
    assert all(t["pairs"] == 4 for t in curve["paired_tests"])
    assert "| 6 | DPO (k=1) | SFT |" in (tmp_path / "published" / "paired.md").read_text()
    assert (tmp_path / "published" / "curve.png").stat().st_size > 1000
    data = tmp_path / "curve" / "data"
    assert len((data / "train_6.jsonl").read_text().splitlines()) == 6
    # The test users are the authors': the build's first test user is their first eval record's.
    assert json.loads((data / "test.jsonl").read_text().splitlines()[0])["user_id"] == "109"
    # Diagnostics: every trained model scored on its own training users' pairs (all 5 negatives),
    # accuracy by position, and DMPO's reward statistics.
    diag = {d["cell"]: d for d in curve["diagnostics"]}
    models = ["sft-3", "sft-6", "dmpo-k3-3", "dmpo-k3-6", "dpo-k1-6"]
    models += ["dmpo-k2-6", "dmpo-k5-6", "sdpo-k3-6"]
    assert set(diag) == {"zero-shot", *models}
    for cell in models:
        assert list(diag[cell]["train_accuracy_by_negative"]) == ["1", "2", "3", "4", "5"]
        assert 0 <= diag[cell]["train_accuracy"] <= 1
    assert (
        "reward_margin_last10" in diag["dmpo-k3-6"] and "reward_margin_last10" not in diag["sft-6"]
    )
    assert 1 <= len(diag["dmpo-k3-6"]["reward_accuracy_by_quarter"]) <= 4
    assert "| dmpo-k3-6 |" in (tmp_path / "published" / "diagnostics.md").read_text()

    # What the labels alone carry: the training positives counted, per N.
    assert [r["n"] for r in curve["label_counts"]] == [3, 6]
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["ties"] <= 1 for r in curve["label_counts"])
    assert (
        "What the training labels alone carry"
        in (tmp_path / "published" / "diagnostics.md").read_text()
    )

    # The DMPO learning rate compared on the validation users: its own cell, scored on the
    # validation users' pairs (all 5 negatives), kept out of the curve.
    (probe,) = curve["valid_lrs"]
    assert probe["cell"] == "valid-dmpo-k3-3-lr0.001" and probe["learning_rate"] == "0.001"
    assert probe["valid_pairs"] == 10  # 2 users x 5 negatives
    assert (
        "| valid-dmpo-k3-3-lr0.001 | 0.001 |"
        in (tmp_path / "published" / "diagnostics.md").read_text()
    )
    assert not any(c.startswith("valid-") for c in diag)

    # The curve at a chosen learning rate: new cells with their own line beside the old one.
    # With listwise lists for the first 2 test users, 3 candidates each, for every model.
    more = [*cmd, "--dmpo-lr", "1e-3", "--cells", "dmpo-k3-6-lr0.001", "--no-train-pairs"]
    more += ["--listwise-users", "2", "--listwise", "3"]
    run(more)
    curve = json.loads((tmp_path / "published" / "curve.json").read_text())
    assert [n for n, *_ in curve["series"]["DMPO (k=3), lr 0.001"]] == [6]
    assert [n for n, *_ in curve["series"]["DMPO (k=3)"]] == [3, 6]
    lists = {(r["cell"], r["model"]): r for r in curve["listwise"]}
    # The finished model cells of this experiment file (its DMPO cells are now the -lr ones).
    llms = {"zero-shot", "sft-3", "sft-6", "dmpo-k3-6-lr0.001"}
    assert {cell for cell, model in lists if cell == model} == llms
    assert {(c, m) for c, m in lists if c != m} == {
        (f"baselines-{n}", m) for n in (3, 6) for m in ("popularity", "bpr-mf")
    }
    for row in lists.values():
        assert row["list3_users"] == 2 and 0 <= row["list3_hr@1"] <= 1
    listed = tmp_path / "curve" / "listwise" / "sft-6" / "lists.jsonl"
    for line in listed.read_text().splitlines():
        assert len(json.loads(line)["candidates"]) == 3
    md = (tmp_path / "published" / "listwise.md").read_text()
    assert (
        "2 test users, 3 candidates each" in md
        and "| dmpo-k3-6-lr0.001 | dmpo-k3-6-lr0.001 |" in md
    )

    # The authors' SFT term on the chosen answers: another variant, its own line and paired tests.
    sftw = [*cmd, "--dmpo-lr", "1e-3", "--dmpo-sft-weight", "1", "--no-train-pairs"]
    # Lists ranked by the new cell alone: the rows of the cells ranked before stay in the table,
    # those of the earlier experiment file's -lr0.001 cell too.
    lists_new = ["--listwise-users", "2", "--listwise", "3"]
    run([*sftw, "--cells", "dmpo-k3-6-lr0.001-sftw1", *lists_new,
         "--listwise-cells", "dmpo-k3-6-lr0.001-sftw1"])  # fmt: skip
    cell = tmp_path / "curve" / "dmpo-k3-6-lr0.001-sftw1"
    config = yaml.safe_load((cell / "config.yaml").read_text())
    assert config["dmpo"]["sft_weight"] == 1.0 and config["dmpo"]["learning_rate"] == 1e-3
    curve = json.loads((tmp_path / "published" / "curve.json").read_text())
    assert [n for n, *_ in curve["series"]["DMPO (k=3), lr 0.001, SFT term 1"]] == [6]
    labels = {(t["n"], t["a"]) for t in curve["paired_tests"]}
    assert {(6, "DMPO (k=3), lr 0.001, SFT term 1"), (6, "DMPO (k=3), lr 0.001")} <= labels
    ranked = {(r["cell"], r["model"]) for r in curve["listwise"]}
    assert ranked == set(lists) | {("dmpo-k3-6-lr0.001-sftw1", "dmpo-k3-6-lr0.001-sftw1")}
    md = (tmp_path / "published" / "listwise.md").read_text()
    assert "| dmpo-k3-6-lr0.001 |" in md and "| dmpo-k3-6-lr0.001-sftw1 |" in md

    # Lists of other settings are never relabelled as this run's: a clear stop instead.
    message = stopped(
        run,
        [*sftw, "--cells", "zero-shot", "--listwise-users", "2", "--listwise", "4",
         "--listwise-cells", "zero-shot"],
    )  # fmt: skip
    assert "holds lists of other settings (list3_users=2" in message, message

    # A new session: the run directory is gone, the published files are not. Every finished cell
    # comes back from them (nothing trains or scores), with its paired tests, diagnostics, lists.
    published = tmp_path / "published"
    before = json.loads((published / "curve.json").read_text())
    assert len((published / "results.jsonl").read_text().splitlines()) > 10
    shutil.rmtree(tmp_path / "curve")
    printed = run([*sftw, "--cells", "zero-shot"])
    assert "restored from" in printed and "cell zero-shot is in" in printed
    assert not (tmp_path / "curve" / "sft-6").exists()
    after = json.loads((published / "curve.json").read_text())

    def tests(curve):
        return sorted((t["n"], t["a"], t["b"], t["p_value"]) for t in curve["paired_tests"])

    assert after["series"] == before["series"] and tests(after) == tests(before)
    assert {d["cell"]: d for d in after["diagnostics"]} == {
        d["cell"]: d for d in before["diagnostics"]
    }
    assert after["valid_lrs"] == before["valid_lrs"] and after["listwise"] == before["listwise"]
    # A cell that starts from a published SFT whose adapter is not here trains that SFT again.
    printed = run([*sftw, "--cells", "dpo-k1-6-lr0.001-sftw1"])
    assert "trained again, their adapters are not in" in printed
    assert (tmp_path / "curve" / "sft-6" / "sft" / "lineage.json").is_file()
    after = json.loads((published / "curve.json").read_text())
    assert [n for n, *_ in after["series"]["DPO (k=1), lr 0.001, SFT term 1"]] == [6]
    assert {
        k: v for k, v in after["series"].items() if k != "DPO (k=1), lr 0.001, SFT term 1"
    }.keys() == before["series"].keys()
    assert [n for n, *_ in after["series"]["DMPO (k=3)"]] == [3, 6]
    assert (6, "DPO (k=1), lr 0.001, SFT term 1", "SFT") in {
        (t["n"], t["a"], t["b"]) for t in after["paired_tests"]
    }
    # --rerun: a finished, published cell runs again and its new row replaces the published one.
    printed = run([*sftw, "--rerun", "baselines-3", "--cells", "zero-shot"])
    assert "experiment: cell baselines-3 (" in printed  # ran, not skipped
    rows = [json.loads(x) for x in (published / "results.jsonl").read_text().splitlines()]
    assert sum(r["cell"] == "baselines-3" and r["model"] == "popularity" for r in rows) == 1
    # A cell name the experiment lacks: one line naming it, and nothing published is touched.
    before = (published / "results.jsonl").read_text()
    message = stopped(run, [*sftw, "--rerun", "sft-7", "--cells", "zero-shot"])
    assert message.startswith("--rerun: no cell named sft-7 in ") and "\n" not in message
    assert (published / "results.jsonl").read_text() == before
    # Rows published with other overrides are never relabelled: another --out stops the run.
    message = stopped(run, [*sftw, "--cells", "zero-shot", "--out", str(tmp_path / "elsewhere")])
    assert "was published with overrides" in message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--valid-lrs", "1e-3,abc"], "--valid-lrs: expected comma-separated learning rates"),
        (["--dmpo-sft-weight", "inf"], "--dmpo-sft-weight: expected a finite weight >= 0"),
        (["--dmpo-sft-weight", "-1"], "--dmpo-sft-weight: expected a finite weight >= 0"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, run, capsys, args, message):
    with pytest.raises(SystemExit) as stop:  # argparse's usage error: a line, no traceback
        run([*args, "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any work
