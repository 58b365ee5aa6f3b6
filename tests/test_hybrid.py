"""The hybrid ranker: a fusion fitted on validation pairs that learns, stays antisymmetric, names
what it lacks; and the pipeline's hybrid row on the tiny model."""

import importlib.util
import json

import numpy as np
import pytest

from dmporec.cli import main
from dmporec.hybrid import Hybrid, popularity_margin
from dmporec.metrics import pair_correct


def complementary(n_users: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Two components, each right (by a wide margin) on its own half of the pairs and noise on
    the other half; a third that is pure noise. Two pairs per user."""
    rng = np.random.default_rng(seed)
    n = 2 * n_users
    half = rng.random(n) < 0.5
    a = np.where(half, 2 + rng.normal(size=n), rng.normal(size=n))
    b = np.where(~half, 0.02 * (2 + rng.normal(size=n)), 0.02 * rng.normal(size=n))
    noise = 50 * rng.normal(size=n)
    return {"a": a, "b": b, "noise": noise}, np.repeat(np.arange(n_users), 2)


def accuracy(margin: np.ndarray) -> float:
    return float(np.mean(pair_correct(margin, -margin)))


def test_the_fusion_learns_what_each_component_misses():
    """Fitted on one draw, scored on another: above each component alone, whatever their scale
    (b's margins are 100x smaller), and the noise component gets a small weight."""
    valid, users = complementary(300, seed=0)
    test, _ = complementary(300, seed=1)
    model = Hybrid.fit(valid, users)
    fused = accuracy(model.margin(test))
    assert fused > accuracy(test["a"]) + 0.1 and fused > accuracy(test["b"]) + 0.1
    weights = dict(zip(model.components, model.weights, strict=True))
    assert weights["a"] > 0 and weights["b"] > 0
    assert abs(weights["noise"]) < 0.2 * min(weights["a"], weights["b"])
    assert 0.5 < model.cv_accuracy <= 1 and model.valid_pairs == 600 and model.valid_users == 300
    assert model.selected_by == "log-loss" and 0 < model.cv_log_loss < np.log(2)


def test_C_is_the_one_with_the_lowest_cross_validated_log_loss():
    """The same GroupKFold search by hand: the C chosen has the least mean held-out log-loss
    of the grid, and the accuracy kept is that C's."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, log_loss
    from sklearn.model_selection import GroupKFold

    valid, users = complementary(100, seed=4)
    model = Hybrid.fit(valid, users)
    z = np.stack([valid[c] for c in model.components], axis=1) / np.asarray(model.scales)
    both, labels, groups = (
        np.r_[z, -z],
        np.r_[np.ones(len(z)), np.zeros(len(z))],
        np.r_[users, users],
    )
    losses, accuracies = {}, {}
    splits = list(GroupKFold(5).split(both, labels, groups))
    for C in np.logspace(-3, 2, 11):
        loss, right = [], []
        for a, b in splits:
            fit = LogisticRegression(C=C, fit_intercept=False, max_iter=1000).fit(
                both[a], labels[a]
            )
            loss.append(log_loss(labels[b], fit.predict_proba(both[b])))
            right.append(accuracy_score(labels[b], fit.predict(both[b])))
        losses[C], accuracies[C] = np.mean(loss), np.mean(right)
    best = min(losses, key=losses.get)
    assert pytest.approx(best) == model.C
    assert pytest.approx(losses[best]) == model.cv_log_loss
    assert model.cv_accuracy == pytest.approx(accuracies[best])


def test_a_hybrid_saved_before_log_loss_selection_reads_back_as_chosen_by_accuracy(tmp_path):
    old = {"components": ["a"], "scales": [1.0], "weights": [0.5], "C": 1.0, "valid_pairs": 10,
           "valid_users": 10, "cv_accuracy": 0.6}  # fmt: skip
    (tmp_path / "model.json").write_text(json.dumps(old))
    model = Hybrid.load(tmp_path / "model.json")
    assert model.selected_by == "accuracy" and model.cv_log_loss is None
    assert "C = 1 by cross-validated accuracy; cross-validated accuracy 0.600" in model.table()


def test_a_pair_read_the_other_way_round_gets_the_opposite_margin(tmp_path):
    valid, users = complementary(50, seed=2)
    model = Hybrid.fit(valid, users)
    flipped = {c: -v for c, v in valid.items()}
    np.testing.assert_allclose(model.margin(flipped), -model.margin(valid))
    chosen, rejected = model.chosen_rejected_scores(valid)
    np.testing.assert_allclose(chosen, -rejected)
    model.save(tmp_path / "model.json")
    assert Hybrid.load(tmp_path / "model.json") == model


def test_what_it_lacks_is_named_never_dropped(tmp_path):
    valid, users = complementary(50, seed=3)
    model = Hybrid.fit(valid, users)
    with pytest.raises(ValueError, match="no margins for b; it was fitted on a, b, noise"):
        model.margin({"a": valid["a"], "noise": valid["noise"]})
    with pytest.raises(ValueError, match="component a has non-finite margins"):
        Hybrid.fit({**valid, "a": np.r_[np.nan, valid["a"][1:]]}, users)
    with pytest.raises(ValueError, match="3 validation users, at least 5 needed"):
        Hybrid.fit({"a": valid["a"][:6]}, users[:6])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not a saved hybrid"):
        Hybrid.load(tmp_path / "bad.json")


def test_popularity_margin_is_on_a_log_scale():
    np.testing.assert_allclose(popularity_margin([0, 9], [0, 99]), [0, np.log(10) - np.log(100)])


TINY = [
    "model.name=builtin:tiny-qwen3",
    "data.demo={train_users: 6, valid_users: 8, test_users: 5, negatives: 2}",
    "sft.epochs=1",
    "sft.batch_size=3",
    "dmpo.epochs=1",
    "dmpo.batch_size=3",
    "dmpo.k=2",
    "eval.n_boot=20",
    "zero_shot=false",
]


def test_run_fits_the_hybrid_on_validation_users_and_pairs_it_with_every_component(
    tmp_path, capsys
):
    out = tmp_path / "run"
    assert main(["run", *TINY, f"output_dir={out}"]) == 0
    table = capsys.readouterr().out
    assert "| hybrid (DMPO + classic) | 5 |" in table and "weight per RMS margin" in table
    model = json.loads((out / "dmpo/hybrid/model.json").read_text())
    assert model["components"][:3] == ["llm", "popularity", "bpr-mf"]
    assert model["valid_users"] == 8 and model["valid_pairs"] == 16  # validation users only
    pairs = (out / "dmpo/hybrid/pairs-test.jsonl").read_text().splitlines()
    assert len(pairs) == 5 and {"llm", "popularity", "hybrid"} <= json.loads(pairs[0]).keys()
    summary = json.loads((out / "summary.json").read_text())
    tested = {t["b"] for t in summary["paired_tests"] if t["a"] == "hybrid (DMPO + classic)"}
    assert {"DMPO (k=2)", "SFT", "popularity", "bpr-mf"} <= tested
    test = next(t for t in summary["paired_tests"] if t["a"] == "hybrid (DMPO + classic)")
    assert {"p_value", "auc_difference", "auc_p_value", "auc_stable_p_value"} <= test.keys()
    # Every row keeps its per-pair scores beside its numbers.
    for row in summary["rows"]:
        assert len(row["pair_scores"]["chosen"]) == 5, row["model"]
    # The LLM alone against each classic scorer, paired on the same test pairs.
    evaluated = json.loads((out / "dmpo/hybrid/eval.json").read_text())
    margins = [json.loads(line) for line in pairs]
    for t in evaluated["llm_paired_tests"]:
        right = {
            c: np.mean([(p[c] > 0) + 0.5 * (p[c] == 0) for p in margins]) for c in ("llm", t["b"])
        }
        assert t["a"] == "dmpo alone" and t["difference"] == pytest.approx(
            right["llm"] - right[t["b"]]
        )
        assert {"p_value", "auc_difference", "auc_p_value"} <= t.keys()
    assert {t["b"] for t in evaluated["llm_paired_tests"]} == set(model["components"]) - {"llm"}
    # The validation scores sit under the validation file's digest (one directory per file).
    [scored] = (out / "dmpo/hybrid-eval-valid").glob("*/predictions.jsonl")
    assert len(scored.parent.name) == 16


def test_without_validation_users_the_run_says_it_skips_the_hybrid(tmp_path, capsys):
    no_valid = [x.replace("valid_users: 8", "valid_users: 0") for x in TINY]
    assert main(["run", *no_valid, "baselines=false", f"output_dir={tmp_path / 'run'}"]) == 0
    assert "hybrid: skipped, no validation users" in capsys.readouterr().out


@pytest.mark.skipif(
    importlib.util.find_spec("cornac") is None, reason="pip install 'dmporec[seq]' (cornac)"
)
def test_a_config_with_sasrec_fuses_it_and_pairs_the_hybrid_with_it(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY, "baselines=false", "sasrec.epochs=1", f"output_dir={out}"]
    assert main(["run", *args]) == 0
    model = json.loads((out / "dmpo/hybrid/model.json").read_text())
    assert "sasrec" in model["components"]
    evaluated = json.loads((out / "dmpo/hybrid/eval.json").read_text())
    assert "sasrec" in {t["b"] for t in evaluated["paired_tests"]}
    assert "sasrec" in {t["b"] for t in evaluated["llm_paired_tests"]}


def test_the_selection_benchmark_nests_the_fit_in_held_out_validation_users(
    benchmark, tmp_path, capsys
):
    """benchmarks/hybrid_selection.py: both ways of choosing C scored on outer held-out users
    of a hybrid's validation pairs (a learnable fusion: both well above chance); a file that is
    not a hybrid's validation pairs is one line naming it."""
    script = benchmark("hybrid_selection")
    valid, users = complementary(60, seed=5)
    hybrid = tmp_path / "hybrid"
    hybrid.mkdir()
    rows = [
        {
            "user_id": str(u),
            "positive": "p",
            "negative": "n",
            **{c: float(v[i]) for c, v in valid.items()},
        }
        for i, u in enumerate(users)
    ]
    (hybrid / "pairs-valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "selection.json"
    assert script.main([str(hybrid), "--repeats", "2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())["hybrids"][str(hybrid)]
    assert doc["pairs"] == 120
    for selection in ("log-loss", "accuracy"):
        assert len(doc["held_out_accuracy"][selection]) == 2
        assert min(doc["held_out_accuracy"][selection]) > 0.7
    assert "| hybrid | 120 |" in capsys.readouterr().out
    few = tmp_path / "few"
    few.mkdir()
    (few / "pairs-valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    with pytest.raises(SystemExit, match="few: hybrid: 4 validation users, at least 5 needed"):
        script.main([str(few), "--repeats", "1", "--out", str(out)])
    (hybrid / "pairs-valid.jsonl").write_text("{")
    with pytest.raises(SystemExit, match="pairs-valid.jsonl: not a hybrid's validation pairs"):
        script.main([str(hybrid), "--out", str(out)])
