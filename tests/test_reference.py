"""Long scoring passes resume: a stopped pass keeps the batches it scored (passes.py), for the
reference log-probs (reference.py) and the scoring of test pairs (evaluation.py)."""

import pytest
import torch

import dmporec.passes as passes
import dmporec.reference as reference
from dmporec.collate import GroupEncoder
from dmporec.config import DMPOConfig
from dmporec.demo_data import DemoDataConfig, make_demo_data
from dmporec.model import add_lora, load_base_model, load_tokenizer
from dmporec.prompts import ChatFormat

SCORE_GROUPS = passes.score_groups  # the real one, whatever a test patched in


class Stop(Exception):
    pass


def _setup(tiny_cfg):
    tok = load_tokenizer(tiny_cfg)
    enc = GroupEncoder(tok, ChatFormat.from_tokenizer(tok))
    data = make_demo_data(DemoDataConfig(train_users=7, valid_users=0, test_users=1, negatives=3))
    groups = [enc.group(r, k=3) for r in data.train]
    return add_lora(load_base_model(tiny_cfg), tiny_cfg), groups


def _counting(monkeypatch, stop_after=None):
    """Count score_groups calls (one per batch); raise Stop after `stop_after` of them."""
    calls = []

    def scored(*args, **kwargs):
        if stop_after is not None and len(calls) == stop_after:
            raise Stop
        calls.append(1)
        return SCORE_GROUPS(*args, **kwargs)

    monkeypatch.setattr(passes, "score_groups", scored)
    return calls


def test_a_stopped_reference_pass_resumes_with_the_same_numbers(tiny_cfg, tmp_path, monkeypatch):
    model, groups = _setup(tiny_cfg)
    kw = {"layout": "shared", "batch_size": 2, "max_batch_tokens": 8192}
    want = reference.reference_logps(model, groups, 6, **kw)  # 7 users: 4 batches
    partial = tmp_path / "key.b2.partial"

    _counting(monkeypatch, stop_after=3)
    with pytest.raises(Stop):
        reference.reference_logps(model, groups, 6, **kw, partial=partial)
    assert [p.name for p in tmp_path.iterdir()] == ["key.b2.partial.0.safetensors"]

    calls = _counting(monkeypatch)
    got = reference.reference_logps(model, groups, 6, **kw, partial=partial)
    assert len(calls) == 1  # only the batch the stopped pass had not scored
    assert torch.equal(got, want) and (want != 0).all()


def test_the_cache_is_written_whole_and_the_partial_files_go(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("DMPOREC_CACHE", str(tmp_path))
    model, groups = _setup(tiny_cfg)
    args = (model, tiny_cfg, [], groups, 6, DMPOConfig())

    _counting(monkeypatch, stop_after=2)
    with pytest.raises(Stop):
        reference.cached_reference_logps(*args, batch_size=2)
    folder = tmp_path / "reference"
    assert [p.suffix for p in folder.iterdir()] == [".safetensors"]  # the partial file alone

    calls = _counting(monkeypatch)
    got = reference.cached_reference_logps(*args, batch_size=2)
    assert len(calls) == 2
    (cache,) = folder.iterdir()  # the whole cache; the partial file is gone
    assert ".partial" not in cache.name
    assert torch.equal(got, reference.cached_reference_logps(*args, batch_size=2))
    assert len(calls) == 2  # from the cache this time
    # A different batch size splits other batches: it never reads another size's partial file.
    monkeypatch.setenv("DMPOREC_CACHE", str(tmp_path / "other"))
    _counting(monkeypatch, stop_after=1)
    with pytest.raises(Stop):
        reference.cached_reference_logps(*args, batch_size=2)
    calls = _counting(monkeypatch)
    reference.cached_reference_logps(*args, batch_size=3)
    assert len(calls) == 3  # 7 users in batches of 3, none kept


def _tiny_run(out, *more):
    from dmporec.config import load_config
    from dmporec.stages.common import prepare_run

    return prepare_run(
        load_config(
            None,
            [
                "model.name=builtin:tiny-qwen3",
                "data.demo={train_users: 2, valid_users: 0, test_users: 7, negatives: 2}",
                "eval.batch_size=2",
                "eval.n_boot=10",
                f"output_dir={out}",
                *more,
            ],
        )
    )


def test_a_stopped_evaluation_resumes_with_the_same_numbers(tmp_path, monkeypatch):
    from dmporec.files import read_jsonl
    from dmporec.stages.evaluate import run_evaluate

    whole = run_evaluate(_tiny_run(tmp_path / "whole"), "zero_shot")
    want = read_jsonl(tmp_path / "whole" / "zero_shot" / "predictions.jsonl")

    cfg = _tiny_run(tmp_path / "run")
    _counting(monkeypatch, stop_after=3)  # 7 users in batches of 2: 4 batches
    with pytest.raises(Stop):
        run_evaluate(cfg, "zero_shot")
    folder = tmp_path / "run" / "zero_shot"
    (kept,) = folder.glob("scores.partial.*.0.safetensors")
    assert not (folder / "predictions.jsonl").exists()

    calls = _counting(monkeypatch)
    got = run_evaluate(cfg, "zero_shot")
    assert len(calls) == 1  # only the batch the stopped scoring had not scored
    assert read_jsonl(folder / "predictions.jsonl") == want
    assert got["accuracy"] == whole["accuracy"] and len(want) == 7  # one pair per test user
    assert not kept.exists()  # gone once the predictions are written

    # Batches kept for other settings (here the batch size, which splits other batches) are
    # never read: all 3 batches of 3 are scored again.
    cfg = _tiny_run(tmp_path / "other")
    _counting(monkeypatch, stop_after=2)
    with pytest.raises(Stop):
        run_evaluate(cfg, "zero_shot")
    calls = _counting(monkeypatch)
    run_evaluate(_tiny_run(tmp_path / "other", "eval.batch_size=3"), "zero_shot")
    assert len(calls) == 3
    assert not list((tmp_path / "other" / "zero_shot").glob("scores.partial.*"))


def test_the_pass_key_is_the_reference_cache_key_of_before(tiny_cfg):
    """The reference cache written before passes.py existed (an hour of work for 1000 users)
    keeps its name: the key hashes the same bytes in the same order."""
    import hashlib
    import json

    _, groups = _setup(tiny_cfg)
    h = hashlib.sha256(json.dumps([tiny_cfg.name, tiny_cfg.dtype, 6]).encode())
    for group in groups:
        h.update(repr(group).encode())
    assert reference.reference_cache_key(tiny_cfg, [], groups, 6) == h.hexdigest()[:32]
