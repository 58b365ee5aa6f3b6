"""`dmporec export`: merged safetensors that plain transformers loads, equal logits, a model card."""

import json
import os
import stat

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dmporec.cli import main
from dmporec.export import export_run
from dmporec.model import (
    add_lora,
    load_base_model,
    load_stage_model,
    read_lineage,
    write_lineage,
)

TINY_RUN = [
    "model.name=builtin:tiny-qwen3",
    "data.demo={train_users: 4, valid_users: 0, test_users: 3, negatives: 2}",
    "sft.epochs=1",
    "sft.batch_size=4",
    "sft.learning_rate=1e-2",  # large enough that the merged weights differ from the base
    "dmpo.epochs=1",
    "dmpo.batch_size=4",
    "dmpo.k=2",
    "dmpo.learning_rate=1e-2",
    "eval.n_boot=10",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    assert main(["run", *TINY_RUN, f"output_dir={out}"]) == 0
    return out


def test_export_loads_in_plain_transformers_with_equal_logits(run_dir, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", "--model", str(run_dir), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "README.md" in names and "config.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pkl", ".pt", ".pth", ".pickle"))]
    assert not (tmp_path / "exported.tmp").exists()

    merged, tok, _ = load_stage_model(run_dir / "dmpo")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tok("Here is the user's history:  <Title:Haunted Manor> .", return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = merged(input_ids=ids).logits, loaded(input_ids=ids).logits
        base = load_base_model(read_lineage(run_dir / "dmpo")[0]).eval()(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(base, want, atol=1e-3)  # the adapters did change the model
    assert AutoTokenizer.from_pretrained(out)("Up Jaws").input_ids == tok("Up Jaws").input_ids


def test_model_card_names_base_data_settings_and_metrics(run_dir, tmp_path):
    out = tmp_path / "card"
    assert main(["export", "--model", str(run_dir / "sft"), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    ev = json.loads((run_dir / "sft/eval/eval.json").read_text())
    assert card.startswith("---\nlibrary_name: transformers")
    for text in (
        "builtin:tiny-qwen3",
        "stages merged, in order: sft",
        "- SFT: epochs=1, learning_rate=0.01",
        f"`{run_dir / 'data/train.jsonl'}` (4 records)",
        f"| SFT (this model) | 3 | {ev['accuracy']:.3f}",
        "| zero-shot | 3 |",
        "| DMPO | 3 |",
        "<Title:Up> ,  <Title:Jaws>",
    ):
        assert text in card, text
    assert "- DMPO:" not in card  # the SFT stage has no DMPO settings


def test_export_refuses_to_overwrite_without_force(run_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", "--model", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty; pass --force" in err and "Traceback" not in err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["export", "--model", str(run_dir), "--out", str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "--model", str(run_dir), "--out", str(empty)]) == 0


def test_export_never_deletes_what_it_reads(run_dir, capsys):
    """--force must not remove the run: an --out equal to, inside, or above the run is refused."""
    before = sorted(p.relative_to(run_dir.parent) for p in run_dir.parent.rglob("*"))
    for model, out in [
        (run_dir, run_dir),
        (run_dir, run_dir / "dmpo"),
        (run_dir, run_dir / "exported"),
        (run_dir, run_dir.parent),
        (run_dir / "dmpo", run_dir / "sft"),  # the SFT adapter the DMPO stage merges
    ]:
        code = main(["export", "--model", str(model), "--out", str(out), "--force"])
        err = capsys.readouterr().err
        assert code == 2 and "overlaps" in err and "Traceback" not in err, (model, out, err)
    assert sorted(p.relative_to(run_dir.parent) for p in run_dir.parent.rglob("*")) == before


def test_export_needs_a_trained_run(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a run dir" in capsys.readouterr().err


def test_recommend_reads_the_exported_model_dir(run_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["export", "--model", str(run_dir), "--out", str(out)]) == 0
    args = ["--history", "Haunted Manor", "--candidates", "Wicked Asylum", "Sweet Kiss", "--json"]
    capsys.readouterr()
    assert main(["recommend", "--model", str(out), *args]) == 0
    from_export = json.loads(capsys.readouterr().out)["ranked"]
    assert main(["recommend", "--model", str(run_dir), *args]) == 0
    from_run = json.loads(capsys.readouterr().out)["ranked"]
    assert [x["title"] for x in from_export] == [x["title"] for x in from_run]
    for a, b in zip(from_export, from_run, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_exported_files_follow_the_umask(tiny_cfg, tmp_path):
    """Under umask 0022 every exported file is 0644, model.safetensors included (safetensors
    writes through a 0600 temp file). A stage with an untrained LoRA adapter: no training."""
    stage = tmp_path / "run" / "sft"
    add_lora(load_base_model(tiny_cfg), tiny_cfg).save_pretrained(stage / "adapter")
    write_lineage(stage, tiny_cfg, [])
    old = os.umask(0o022)
    try:
        out = export_run(stage, tmp_path / "exported")
    finally:
        os.umask(old)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir() if p.is_file()}
    assert "model.safetensors" in modes
    assert modes == dict.fromkeys(modes, "0o644")
