"""The learning curve: its experiment file, the script that builds its data, and its published
results, which the engine restores and republishes to the same numbers and paired tests.

The script runs in this process with its command line in sys.argv (a stop is the SystemExit it
raises); the experiment runs through `dmporec`'s main.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from dmporec.cli import main as dmporec
from dmporec.stages.experiment import cell_config, load_experiment

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT.parent / "shared" / "data" / "raw" / "ml-1m-users-1-2999"
CONFIG = ROOT / "configs" / "experiments" / "learning-curve-ml1m.yaml"
PUBLISHED = ROOT / "docs" / "results" / "learning-curve"


@pytest.fixture(scope="module")
def script(benchmark):
    """benchmarks/learning_curve.py as a module (imported once for the file's tests)."""
    return benchmark("learning_curve")


def run(script, monkeypatch, args: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["benchmarks/learning_curve.py", *args])
    script.main()


def test_the_script_builds_every_file_the_experiment_file_reads(script):
    exp = load_experiment(str(CONFIG))
    named = set()
    for cell in exp.cells:
        data = cell_config(exp, cell).data
        named |= {getattr(data, k) for k in ("sft_train", "dmpo_train", "eval", "valid")}
    for ev in exp.evals:
        named |= {o.split("=", 1)[1] for o in ev.overrides if o.startswith("data.")}
    named.discard(None)
    assert {Path(p).parent for p in named} == {Path("runs/learning-curve/data")}
    defaults = script.parser().parse_args([])
    assert Path(defaults.out) == Path("runs/learning-curve/data")
    assert {Path(p).name for p in named} == set(script.written(defaults))


@pytest.mark.skipif(not RAW.is_dir(), reason="../shared/data/raw is not beside this checkout")
def test_the_data_script_builds_the_curves_data(tmp_path, script, monkeypatch, capsys):
    data = tmp_path / "data"
    args = ["--out", str(data), "--sizes", "6,3", "--valid-users", "2", "--list-users", "4"]
    run(script, monkeypatch, args)
    assert [len((data / f"train_{n}.jsonl").read_text().splitlines()) for n in (3, 6)] == [3, 6]
    six = (data / "train_6.jsonl").read_text().splitlines()
    assert (data / "train_3.jsonl").read_text().splitlines() == six[:3]  # prefixes of one pool
    # The test users are the authors': the build's first test user is their first eval record's.
    assert json.loads((data / "test.jsonl").read_text().splitlines()[0])["user_id"] == "109"
    lists = [json.loads(x) for x in (data / "test_list_4.jsonl").read_text().splitlines()]
    assert len(lists) == 4 and all(len(r["negatives"]) == 1 for r in lists)
    assert len(lists[0]["metadata"]["list_negatives"]) == 19  # a list's other candidates
    counts = json.loads((data / "label_counts.json").read_text())
    assert [r["n"] for r in counts] == [3, 6]
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["ties"] <= 1 for r in counts)
    assert "What the training labels alone carry" in capsys.readouterr().out
    # A rerun keeps what is there; a file that is not what the build writes stops it.
    run(script, monkeypatch, args)
    (data / "train_3.jsonl").write_text("\n".join(six[1:4]) + "\n")
    with pytest.raises(SystemExit, match="train_3.jsonl: holds other records"):
        run(script, monkeypatch, args)
    monkeypatch.setattr(sys, "argv", ["learning_curve.py", "--sizes", "a,b"])
    with pytest.raises(SystemExit) as stop:  # argparse's usage error: a line, no traceback
        script.main()
    assert stop.value.code == 2 and "--sizes: expected comma-separated" in capsys.readouterr().err


def republish(tmp_path: Path, published: Path) -> tuple[Path, Path]:
    """The experiment file run into tmp_path/out, publishing to tmp_path/pub (a copy of
    `published`), with only the zero-shot cell asked for: every cell comes back from the
    published rows, nothing trains or scores."""
    pub, out = tmp_path / "pub", tmp_path / "out"
    shutil.copytree(published, pub)
    exp = yaml.safe_load(CONFIG.read_text())
    exp.update(output_dir=str(out), publish=str(pub))
    config = tmp_path / "curve.yaml"
    config.write_text(yaml.safe_dump(exp, sort_keys=False))
    assert dmporec(["experiment", "--config", str(config), "--cells", "zero-shot"]) == 0
    return out, pub


def line_name(row: dict) -> str:
    """A row's line in the curve, as the script named it: its model, then its label."""
    return row["model"] + (f", {row['label']}" if row.get("label") else "")


def old_name(b: str, n: int, rows: list[dict]) -> str:
    """A comparison as benchmarks/learning_curve.py labelled it, as a row's name ('cell: model')."""
    if b == "zero-shot":
        return "zero-shot: zero-shot"
    if b == "SFT":
        return f"sft-{n}: SFT"
    # Another trained model at the same N (DMPO against DPO): its row by model and N.
    same_n = [r for r in rows if r["model"] == b and f"-{n}-" in f"{r['cell']}-"]
    if len(same_n) == 1:
        return f"{same_n[0]['cell']}: {b}"
    model, _, rest = b.partition(" (N = ")
    other = rest.rstrip(")")
    return f"sft-{other}: SFT" if model == "SFT" else f"baselines-{other}: {model}"


def test_republishing_the_curve_gives_the_same_numbers_and_paired_tests(tmp_path, capsys):
    """The published curve (rows of benchmarks/learning_curve.py, 2026-12-02) restored by the
    experiment file and published again: every row's metrics, the curve's points, the paired
    tests, the diagnostics, the learning-rate probe and the lists as they were published."""
    curve = json.loads((PUBLISHED / "curve.json").read_text())
    old = [json.loads(x) for x in (PUBLISHED / "results.jsonl").read_text().splitlines()]
    out, pub = republish(tmp_path, PUBLISHED)
    assert "restored from" in capsys.readouterr().out
    rows = [json.loads(x) for x in (pub / "results.jsonl").read_text().splitlines()]
    by = {(r["cell"], r["model"]): r for r in rows}
    assert len(rows) == len(old) >= 27
    for r in old:  # every number kept; the positions' accuracy from the diagnostics added
        metrics = by[(r["cell"], r["model"])]["metrics"]
        assert {k: metrics[k] for k in r["metrics"]} == r["metrics"], r["cell"]
    # The same table, line for line.
    table = sorted((out / "results.md").read_text().splitlines())
    assert table == sorted((PUBLISHED / "results.md").read_text().splitlines())
    # The curve's points: each model's line by N (zero-shot its band); every point the script
    # published comes back (cells the engine ran since add their own).
    points = {}
    for r in rows:
        m = r["metrics"]
        point = [r["vars"].get("n", 0), m["accuracy"], m["accuracy_ci_low"], m["accuracy_ci_high"]]
        if r["split"] == "test":
            points.setdefault(line_name(r), []).append(point)
    for name, series in curve["series"].items():
        assert [p for p in sorted(points[name]) if p in series] == series, name
    # The paired tests: the script's 50 comparisons with the same numbers (three of them
    # computed again from the per-pair correctness the rows keep), each found by its model's
    # line and N.
    trained = {
        (r["vars"].get("n"), line_name(r)): r
        for r in rows
        if "eval_dir" in r and r["split"] == "test"
    }
    expected = {}
    for t in curve["paired_tests"]:
        row = trained[(t["n"], t["a"])]
        a = f"{row['cell']}: {row['model']}"
        expected[(a, old_name(t["b"], t["n"], old))] = {
            k: v for k, v in t.items() if k not in ("n", "a", "b")
        }
    tests = json.loads((out / "paired.json").read_text())
    found = {(t["a"], t["b"]): {k: v for k, v in t.items() if k not in ("a", "b")} for t in tests}
    # The script's numbers (a test it made without AUCs may carry them now: the rerun
    # zero-shot and baselines rows keep their scores).
    assert {k: {x: found.get(k, {}).get(x) for x in t} for k, t in expected.items()} == expected
    assert len(curve["paired_tests"]) == len(expected) == 50  # no two map to one test
    published_tests = {(t["a"], t["b"]) for r in rows for t in r.get("paired_tests", [])}
    assert published_tests == set(found) >= set(expected)
    # The diagnostics: training users' pairs and DMPO's rewards; the learning-rate probe; lists.
    for d in curve["diagnostics"]:
        (row,) = [r for r in rows if r["cell"] == d["cell"] and "eval_dir" in r]
        assert row["metrics"]["accuracy"] == d["test_accuracy"]
        for key in ("accuracy_positive_listed_first", "accuracy_positive_listed_second"):
            assert row["metrics"][key] == d[key]
        for key in [k for k in d if k.startswith(("reward_", "chosen_reward_"))]:
            assert row["training"][key] == d[key], (d["cell"], key)
        if "train_accuracy" in d:
            mine = row["evals"]["train-pairs"]
            assert mine["accuracy"] == d["train_accuracy"]
            assert mine["accuracy_by_negative"] == d["train_accuracy_by_negative"]
    for p in curve["valid_lrs"]:
        (row,) = [r for r in rows if r["cell"] == p["cell"]]
        m, t = row["metrics"], row["training"]
        assert (m["pairs"], m["accuracy"]) == (p["valid_pairs"], p["valid_accuracy"])
        assert [m["accuracy_ci_low"], m["accuracy_ci_high"]] == p["valid_accuracy_ci"]
        assert (t["loss_last10"], t["reward_margin_last10"]) == (
            p["train_loss_last10"],
            p["reward_margin_last10"],
        )
    for listed in curve["listwise"]:  # a model's lists under its cell's name, a baseline's own
        llm = listed["model"] == listed["cell"]
        (row,) = [
            r
            for r in rows
            if r["cell"] == listed["cell"]
            and ("eval_dir" in r if llm else r["model"] == listed["model"])
        ]
        lists = dict(row["evals"]["lists"])
        # The script's lists were made as the file's `lists` evaluation makes them: they carry
        # its settings from now on.
        assert lists.pop("settings") == {
            "kind": "evaluate",
            "data.eval": "runs/learning-curve/data/test_list_100.jsonl",
            "eval.listwise": 5,
        }
        script = {k: v for k, v in listed.items() if k not in ("cell", "model")}
        assert {k: lists.get(k) for k in script} == script  # a rerun adds its model's name
    assert "## Extra evaluation: lists" in (out / "report.md").read_text()
    assert (pub / "curve.png").stat().st_size > 10_000

    # Published in the engine's form, the rows come back to the same files again.
    again_out, again_pub = republish(tmp_path / "again", pub)
    assert (again_pub / "results.jsonl").read_text() == (pub / "results.jsonl").read_text()
    assert (again_out / "paired.json").read_text() == (out / "paired.json").read_text()
