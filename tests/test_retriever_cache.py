"""A run's fitted BPR-MF and ALS kept on disk (dmporec.retriever_cache): read back with the same
scores and no fit, refitted when the records or settings change or a file is damaged, fitted in
memory where the directory cannot be written; `load_recommender` reads them on a second call."""

import functools
import json

import numpy as np
import pytest

from dmporec.baselines import BPRMF
from dmporec.catalogue import query_record
from dmporec.config import dump_config, load_config
from dmporec.files import atomic_write_text
from dmporec.records import Item, Record, TitleNormalization, write_records
from dmporec.rerank import load_recommender
from dmporec.retriever_cache import CACHED, DIRECTORY, cached_fit

FAST = {"epochs": 20}  # BPR-MF; ALS runs its defaults (a few ms on these records)


def rec(user: str, history: list[str]) -> Record:
    return Record(user, [Item(t) for t in history], Item(f"P{user}"), [Item("N")])


RECORDS = [
    rec("u1", ["A", "B", "C"]),
    rec("u2", ["B", "C", "D"]),
    rec("u3", ["A", "D", "E"]),
    rec("u4", ["E", "F", "A"]),
]
TITLES = ["A", "B", "C", "D", "E", "F", "Z"]  # Z: in no history (the mean item)
QUERIES = [RECORDS[1], query_record(["A", "D"]), query_record(["Y"])]  # fitted, folded in, none


def settings(name: str, **more) -> dict:
    return {**(FAST if name == "bpr-mf" else {}), **more}


def scores(scorer) -> list[list[float]]:
    return [scorer.score(q, TITLES) for q in QUERIES]


def count_fits(monkeypatch, cls) -> list[int]:
    """Wrap `cls.fit` (its signature kept: the cache key reads its defaults); one entry a fit."""
    real, calls = cls.fit.__func__, []

    @functools.wraps(real)
    def fit(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cls, "fit", classmethod(fit))
    return calls


def forbid_fit(monkeypatch, cls) -> None:
    @functools.wraps(cls.fit.__func__)
    def fit(*args, **kwargs):
        pytest.fail(f"{cls.__name__}.fit called: the cache was not used")

    monkeypatch.setattr(cls, "fit", classmethod(fit))


@pytest.mark.parametrize("name", ["bpr-mf", "als"])
def test_a_kept_fit_reads_back_with_the_same_scores_and_no_fit(name, tmp_path, monkeypatch):
    if name == "als":
        pytest.importorskip("implicit")
    said: list[str] = []
    fitted = cached_fit(name, RECORDS, tmp_path, say=said.append, **settings(name))
    assert said == [f"fitting {name} on 4 training users"]
    doc = json.loads((tmp_path / f"{name}.json").read_text())
    assert doc["users"] == ["u1", "u2", "u3", "u4"] and doc["items"] == list("ABCDEF")
    assert (tmp_path / f"{name}.npz").is_file()
    forbid_fit(monkeypatch, CACHED[name])
    said.clear()
    read = cached_fit(name, RECORDS, tmp_path, say=said.append, **settings(name))
    assert type(read) is type(fitted)
    assert scores(read) == scores(fitted)  # exactly: fitted user, folded-in history, no history
    assert said == [
        f"{name} read from {tmp_path / f'{name}.npz'} (fitted before on these 4 training users)"
    ]


def test_other_records_or_settings_refit_and_replace_the_file(tmp_path, monkeypatch):
    fits = count_fits(monkeypatch, BPRMF)
    said: list[str] = []
    first = cached_fit("bpr-mf", RECORDS, tmp_path, say=said.append, **FAST)
    cached_fit("bpr-mf", RECORDS, tmp_path, say=said.append, **FAST)
    assert len(fits) == 1
    npz = tmp_path / "bpr-mf.npz"
    # One history title changed: refitted, said, and the new fit kept in its place.
    changed = [rec("u1", ["A", "B", "F"]), *RECORDS[1:]]
    refit = cached_fit("bpr-mf", changed, tmp_path, say=said.append, **FAST)
    assert len(fits) == 2 and said[-1] == (
        f"{npz} was fitted on other training records; refitting bpr-mf"
    )
    assert scores(refit) != scores(first)
    cached_fit("bpr-mf", changed, tmp_path, say=said.append, **FAST)
    assert len(fits) == 2
    # A user id is part of what the fit reads, as are the settings.
    renamed = [rec("u9", ["A", "B", "F"]), *RECORDS[1:]]
    cached_fit("bpr-mf", renamed, tmp_path, say=said.append, **FAST)
    assert len(fits) == 3 and "other training records" in said[-1]
    cached_fit("bpr-mf", renamed, tmp_path, say=said.append, epochs=21)
    assert len(fits) == 4 and said[-1].endswith("was fitted on other settings; refitting bpr-mf")
    cached_fit("bpr-mf", renamed, tmp_path, say=said.append, epochs=21, seed=1)
    assert len(fits) == 5
    key = json.loads((tmp_path / "bpr-mf.json").read_text())["key"]
    assert key["settings"] == {
        "dim": 32, "epochs": 21, "lr": 0.01, "reg": 1e-4, "batch_size": 4096, "seed": 1
    }  # fmt: skip


DAMAGE = {
    "npz garbage": ("bpr-mf.npz", lambda b: b"not a zip file"),
    "npz cut short": ("bpr-mf.npz", lambda b: b[: len(b) // 2]),
    "json cut short": ("bpr-mf.json", lambda b: b[: len(b) // 2]),
    "json not an object": ("bpr-mf.json", lambda b: b"[1, 2]"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_file_is_refitted_in_one_line(damage, tmp_path, monkeypatch):
    fitted = cached_fit("bpr-mf", RECORDS, tmp_path, say=lambda _: None, **FAST)
    name, cut = DAMAGE[damage]
    (tmp_path / name).write_bytes(cut((tmp_path / name).read_bytes()))
    fits = count_fits(monkeypatch, BPRMF)
    said: list[str] = []
    refit = cached_fit("bpr-mf", RECORDS, tmp_path, say=said.append, **FAST)
    assert len(fits) == 1 and len(said) == 1
    assert said[0].startswith(f"bpr-mf in {tmp_path} unreadable ({name}")
    assert said[0].endswith("); refitting bpr-mf")
    assert scores(refit) == scores(fitted)  # the same fit (seeded), and written again:
    cached_fit("bpr-mf", RECORDS, tmp_path, say=said.append, **FAST)
    assert len(fits) == 1 and "read from" in said[-1]


def test_arrays_of_another_shape_are_refitted(tmp_path, monkeypatch):
    cached_fit("bpr-mf", RECORDS, tmp_path, say=lambda _: None, **FAST)
    npz = tmp_path / "bpr-mf.npz"
    with np.load(npz) as z:
        arrays = dict(z)
    np.savez(npz, **{**arrays, "q": arrays["q"][:-1]})  # one item short
    fits = count_fits(monkeypatch, BPRMF)
    said: list[str] = []
    cached_fit("bpr-mf", RECORDS, tmp_path, say=said.append, **FAST)
    assert len(fits) == 1
    assert "unreadable (bpr-mf.npz: q of shape (5, 32) for 4 users, 6 items)" in said[0]


def test_a_pair_of_files_from_two_fits_is_not_read_as_one(tmp_path, monkeypatch):
    """A crash between the two renames leaves one fit's .npz beside the other's .json."""
    cached_fit("bpr-mf", RECORDS, tmp_path, say=lambda _: None, **FAST)
    old_npz = (tmp_path / "bpr-mf.npz").read_bytes()
    cached_fit("bpr-mf", RECORDS, tmp_path, say=lambda _: None, epochs=21)
    (tmp_path / "bpr-mf.npz").write_bytes(old_npz)
    fits = count_fits(monkeypatch, BPRMF)
    said: list[str] = []
    cached_fit("bpr-mf", RECORDS, tmp_path, say=said.append, epochs=21)
    assert len(fits) == 1 and "are of different fits); refitting" in said[0]


def test_a_directory_that_cannot_be_written_fits_in_memory(tmp_path):
    # Under a file, as a mounted run's directory, no file can be written (even by root).
    (tmp_path / "run").write_text("")
    directory = tmp_path / "run" / DIRECTORY
    said: list[str] = []
    scorer = cached_fit("bpr-mf", RECORDS, directory, say=said.append, **FAST)
    assert said[0] == "fitting bpr-mf on 4 training users"
    assert said[1].startswith("bpr-mf not kept (")
    assert said[1].endswith("); fitted for this call only") and len(said) == 2
    assert scores(scorer) == scores(BPRMF.fit(RECORDS, **FAST))
    assert not directory.exists()


def fake_run(tmp_path):
    """A run directory as load_recommender reads it: config, training data, a stage (no model
    is loaded to plan)."""
    run = tmp_path / "run"
    write_records(run / "data" / "train.jsonl", RECORDS)
    cfg = load_config(overrides=[f"data.sft_train={run / 'data' / 'train.jsonl'}"])
    atomic_write_text(run / "config.yaml", dump_config(cfg))
    atomic_write_text(run / "sft" / "lineage.json", "{}")
    return run


@pytest.mark.parametrize("retriever", ["bpr-mf", "als"])
def test_a_second_recommender_of_a_run_reads_its_retriever(retriever, tmp_path, monkeypatch):
    if retriever == "als":
        pytest.importorskip("implicit")
    run = fake_run(tmp_path)
    said: list[str] = []

    def candidates() -> tuple[list[str], list[float]]:
        recommender = load_recommender(
            str(run), TitleNormalization(), retriever=retriever, say=said.append
        )
        plan = recommender.plan(["A", "D"], k=3, m=4, rerank="none", pivots=2)
        titles = [recommender.catalogue.items[i].title for i in plan.retrieved.indices]
        return titles, plan.retrieved.scores

    first = candidates()
    assert f"recommend: fitting {retriever} on 4 training users" in said
    assert (run / DIRECTORY / f"{retriever}.npz").is_file()
    forbid_fit(monkeypatch, CACHED[retriever])
    assert candidates() == first
    npz = run / DIRECTORY / f"{retriever}.npz"
    assert (
        f"recommend: {retriever} read from {npz} (fitted before on these 4 training users)" in said
    )
