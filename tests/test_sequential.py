"""SASRec (dmporec.sequential, Cornac): it learns an order, is seeded, and is a baseline row."""

import importlib.util
import inspect
import random
import sys

import numpy as np
import pytest
import torch

from dmporec.config import SASRecConfig, load_config
from dmporec.records import Item, Record
from dmporec.sequential import SASRec, sequences

needs_cornac = pytest.mark.skipif(
    importlib.util.find_spec("cornac") is None, reason="pip install 'dmporec[seq]' (cornac)"
)


def rec(user: str, history: list[str], positive: str = "P", negatives=("N",)) -> Record:
    return Record(user, [Item(t) for t in history], Item(positive), [Item(t) for t in negatives])


# Item i is always followed by item i+1 (mod N_ITEMS): runs of 8 from random starts. Every item
# is equally frequent, so only the order tells the next item.
N_ITEMS, RUN = 60, 8


def chain(start: int, length: int) -> list[str]:
    return [f"i{(start + t) % N_ITEMS}" for t in range(length)]


def chains(n_users: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    return [rec(f"u{seed}-{u}", chain(rng.randrange(N_ITEMS), RUN)) for u in range(n_users)]


SMALL = {"epochs": 30, "dim": 16, "max_len": RUN, "batch_size": 64}


@pytest.fixture(scope="module")
def sasrec() -> SASRec:
    return SASRec.fit(chains(240, seed=0), **SMALL)


def test_sequences_keep_the_records_order_one_per_user():
    records = [rec("a", ["x", "y"]), rec("b", ["z"]), rec("a", ["x", "y"], "Q")]
    assert sequences(records) == {"a": ["x", "y"], "b": ["z"]}


def test_config_defaults_are_the_fits():
    """The `sasrec:` section passes every setting; its defaults are SASRec.fit's own."""
    fit = inspect.signature(SASRec.fit).parameters
    assert SASRecConfig().model_dump() == {k: fit[k].default for k in SASRecConfig.model_fields}
    assert load_config(None).sasrec is None  # off unless asked
    assert load_config(None, ["sasrec.epochs=3"]).sasrec == SASRecConfig(epochs=3)
    assert load_config(None, ["sasrec={}"]).sasrec == SASRecConfig()


@needs_cornac
def test_sasrec_ranks_the_next_item_first(sasrec):
    """New users (not fitted) whose history ends in item j: the true next item j+1 against all
    60 items. Chance is HR@1 = 1/60 and a mean rank of 30.5; the order alone is learnable."""
    titles = [f"i{i}" for i in range(N_ITEMS)]
    ranks = []
    for start in range(N_ITEMS):
        history = chain(start, 5)
        scores = np.array(sasrec.score(rec("new", history), titles))
        true_next = (start + 5) % N_ITEMS
        ranks.append(1 + int((scores > scores[true_next]).sum()))
    assert np.mean(np.array(ranks) == 1) > 0.8, ranks
    assert np.mean(ranks) < 2.0, ranks


@needs_cornac
def test_sasrec_unknown_titles_score_as_an_average_item(sasrec):
    history = rec("new", chain(3, 4))
    known = sasrec.item_scores(history)
    unseen, other_unseen, seen = sasrec.score(history, ["never seen", "nor this", "i7"])
    assert unseen == other_unseen == pytest.approx(known.mean())
    assert seen == pytest.approx(known[sasrec.items["i7"]])
    flat = sasrec.score(rec("new", ["unknown"]), ["i1", "i2"])  # no known history: all tie
    assert flat[0] == flat[1]


@needs_cornac
def test_sasrec_is_seeded_and_leaves_torch_generator_alone(sasrec):
    records = chains(40, seed=1)
    torch.manual_seed(123)
    a = SASRec.fit(records, **{**SMALL, "epochs": 2}, seed=5)
    after = torch.rand(3)
    b = SASRec.fit(records, **{**SMALL, "epochs": 2}, seed=5)
    c = SASRec.fit(records, **{**SMALL, "epochs": 2}, seed=6)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # the fit restored torch's global generator
    user, titles = rec("new", chain(0, 3)), [f"i{i}" for i in range(N_ITEMS)]
    assert a.score(user, titles) == b.score(user, titles)
    assert a.score(user, titles) != c.score(user, titles)


@needs_cornac
def test_a_run_config_with_sasrec_gets_its_row(tmp_path):
    """baseline_rows, what `run` scores first: SASRec is one more row, on the same pairs."""
    from dmporec.stages.common import prepare_run
    from dmporec.stages.pipeline import baseline_rows

    cfg = load_config(
        None,
        [
            "data.demo={train_users: 6, valid_users: 0, test_users: 5, negatives: 3}",
            f"output_dir={tmp_path}",
            "eval.n_boot=10",
            "sasrec={epochs: 2, dim: 8}",
        ],
    )
    rows = {r["model"]: r for r in baseline_rows(prepare_run(cfg, record=False))}
    assert list(rows)[-1] == "sasrec" and "bpr-mf" in rows
    sasrec, bpr = rows["sasrec"], rows["bpr-mf"]
    assert sasrec["metrics"]["pairs"] == bpr["metrics"]["pairs"] > 0
    assert sasrec["pair_scores"]["users"] == bpr["pair_scores"]["users"]
    assert sasrec["pair_scores"]["chosen"] != bpr["pair_scores"]["chosen"]


def test_asking_for_sasrec_without_cornac_says_how_to_install(monkeypatch):
    from dmporec.baselines import fit_scorers
    from dmporec.config import ConfigError

    for name in ("cornac", "cornac.data", "cornac.models"):  # importing them raises ImportError
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError, match=r"sasrec: .*dmporec\[seq\]"):
        fit_scorers([rec("u", ["a", "b"])], sasrec={}, say=lambda _: None)
