"""The reference pass resumes: a stopped pass keeps the batches it scored (reference.py)."""

import pytest
import torch

import dmporec.reference as reference
from dmporec.collate import GroupEncoder
from dmporec.config import DMPOConfig
from dmporec.demo_data import DemoDataConfig, make_demo_data
from dmporec.model import add_lora, load_base_model, load_tokenizer
from dmporec.prompts import ChatFormat

SCORE_GROUPS = reference.score_groups  # the real one, whatever a test patched in


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

    monkeypatch.setattr(reference, "score_groups", scored)
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
