"""benchmarks/catalogue_eval.py (issue #35: top-10 from the catalogue evaluated as papers report
it): each user's candidates (dmporec.listwise.unrated_candidates and the script's additions),
and the script end to end on a tiny trained run: rows, paired values, resuming, refusing other
settings, and the pivot-vs-all-pairs agreement."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from dmporec.catalogue import Catalogue, CatalogueItem
from dmporec.cli import main as dmporec
from dmporec.files import files_digest
from dmporec.hybrid import Hybrid
from dmporec.listwise import unrated_candidates
from dmporec.metrics import user_hits, user_ndcg
from dmporec.ranker import load_ranker
from dmporec.records import DataError, Item, Record, TitleNormalization
from dmporec.rerank import load_recommender

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ["A", "B", "C", "D", "E", "F", "G"]


@pytest.fixture(scope="module")
def script(benchmark):
    return benchmark("catalogue_eval")


def record(user: str, history: list[str], positive: str, negatives: list[str]) -> Record:
    return Record(user, [Item(t) for t in history], Item(positive), [Item(t) for t in negatives])


def test_full_candidates_are_the_unrated_catalogue_in_its_order():
    r = record("u", ["B"], "E", ["D"])  # rated: history B, negative D
    assert unrated_candidates(r, CATALOG) == (["A", "C", "E", "F", "G"], 2)
    # A positive the catalogue lacks is ranked too, listed last.
    assert unrated_candidates(record("u", ["B"], "Z", ["D"]), CATALOG) == (
        ["A", "C", "E", "F", "G", "Z"],
        5,
    )


def test_sampled_candidates_draw_unrated_titles_per_user_seeded():
    r = record("u", ["B"], "E", ["D"])
    titles, pos = unrated_candidates(r, CATALOG, sample=2, seed=0)
    assert len(titles) == 3 and titles[pos] == "E"
    assert set(titles) - {"E"} <= {"A", "C", "F", "G"}  # never rated, never the positive
    assert titles == sorted(titles, key=CATALOG.index)  # catalogue order, not shuffled
    assert unrated_candidates(r, CATALOG, sample=2, seed=0) == (titles, pos)
    draws = {tuple(unrated_candidates(r, CATALOG, 2, seed)[0]) for seed in range(20)}
    assert len(draws) > 1  # the seed draws
    assert unrated_candidates(r, CATALOG, sample=4)[0] == ["A", "C", "E", "F", "G"]
    with pytest.raises(DataError, match="record u: the catalog has 4 titles the user did not"):
        unrated_candidates(r, CATALOG, sample=5)


def test_a_positive_the_catalogue_lacks_is_a_candidate_of_its_own_user_only(script):
    run = Catalogue(
        tuple(CatalogueItem(t, None, c) for t, c in zip("ABCD", (3, 2, 0, 0), strict=True)), "x"
    )
    users = [
        record("1", ["A"], "X", ["C"]),
        record("2", ["B"], "Y", []),
        record("3", ["A"], "D", ["B"]),
    ]
    catalogue = script.with_positives(run, users, seed=0)
    assert catalogue.titles[:2] == ["A", "B"]  # counted titles first, as they were
    assert {catalogue.index("X"), catalogue.index("Y")} <= {2, 3, 4, 5}  # among the count 0s
    assert script.with_positives(run, users, seed=0) == catalogue  # seeded
    sets = script.candidate_sets(run, catalogue, users, None, seed=0)["full"]
    for (titles, pos), user in zip(sets, users, strict=True):
        assert titles[pos] == user.positive.title
        assert not ({"X", "Y"} - {user.positive.title}) & set(titles)
    assert sorted(sets[0][0]) == ["B", "D", "X"]  # A seen, C rated low


TINY = [
    "model.name=builtin:tiny-qwen3",
    "data.demo={train_users: 6, valid_users: 6, test_users: 4, negatives: 2}",
    "sft.epochs=1",
    "sft.batch_size=4",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny SFT run with a fitted hybrid of the LLM, popularity and BPR-MF."""
    out = tmp_path_factory.mktemp("catalogue-eval") / "run"
    assert dmporec(["sft", *TINY, f"output_dir={out}"]) == 0
    hybrid = Hybrid(("llm", "popularity", "bpr-mf"), (1.0, 1.0, 1.0), (0.5, 0.2, 1.0), 1, 9, 3, 0.6)
    (out / "sft" / "hybrid").mkdir()
    hybrid.save(out / "sft" / "hybrid" / "model.json")
    return out


def evaluate(script, capsys, run_dir, out, *more: str) -> tuple[int, str, str]:
    argv = ["--model", str(run_dir), "--out", str(out), "--retrieve", "10", "--sampled", "5"]
    code = script.main([*argv, *more])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_end_to_end_rows_resuming_and_the_agreement(script, run_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    code, printed, err = evaluate(
        script, capsys, run_dir, out, "--llm-users", "2", "--valid-users", "2"
    )
    assert code == 0, err
    assert "retriever " in err and "target (full): fused-list NDCG@10" in printed
    doc = json.loads((out / "test.json").read_text())
    assert doc["fusion"] == "hybrid" and doc["llm_users"] == 2 and doc["retriever"] in printed
    # The list hybrid, fitted on the 6 validation users' sampled lists (1 + 5, all reranked).
    fitted = json.loads((out / "list-hybrid.json").read_text())
    assert len(fitted["users"]) == 6 and fitted["left_out"] == 0
    with_llm, classic = fitted["hybrids"]["fused-list"], fitted["hybrids"]["fused-list-classic"]
    assert with_llm["valid_pairs"] == 6 * 5 and "sasrec" not in with_llm["components"]
    assert with_llm["components"] == ["llm", *classic["components"]]
    listed = doc["list_hybrids"]
    assert listed["fused-list"]["weights"] == Hybrid.load(out / "list-model.json").table()
    assert listed["fused-list-classic"]["file"].endswith("list-classic-model.json")
    assert len((out / "valid-llm.jsonl").read_text().splitlines()) == 1 + 6
    users, llm_users = doc["per_user"]["users"], doc["per_user"]["llm_users"]
    assert len(users) == 4 and len(llm_users) == 2 and set(llm_users) <= set(users)
    for p in ("full", "sampled"):
        everyone = doc["protocols"][p]["all_users"]["rows"]
        assert {"random", "popularity", "bpr-mf"} <= set(everyone)
        if importlib.util.find_spec("cornac") is None:  # SASRec: a row where it is installed
            assert "sasrec skipped" in err and "sasrec" not in everyone
        else:
            assert "sasrec" in everyone
        sub = doc["protocols"][p]["llm_users"]["rows"]
        assert set(sub) == set(everyone) | {
            "llm-rerank", "fused", "fused-list", "fused-list-classic"
        }  # fmt: skip
        # The classic rows on the LLM users are the same users' values of the full run.
        ranks = doc["per_user"]["classic"][p]["bpr-mf"]
        idx = [users.index(u) for u in llm_users]
        expected = user_ndcg(np.array(ranks["rank"])[idx], 10, np.array(ranks["ties"])[idx])
        assert sub["bpr-mf"]["ndcg@10"] == pytest.approx(expected.mean())
        for row in ("llm-rerank", "fused", "fused-list", "fused-list-classic"):
            assert len(doc["per_user"]["llm"][p][row]["rank"]) == 2
        assert doc["protocols"][p]["target"]["row"] == "fused-list"
        pairs = {(t["a"], t["b"]) for t in doc["protocols"][p]["llm_users"]["tests"]}
        assert ("llm-rerank", "fused") in pairs and len(pairs) == len(sub) * (len(sub) - 1) / 2
    lines = (out / "test-llm.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["settings"]["pivots"] == 2 and len(lines) == 3
    for p, n_candidates in (("full", None), ("sampled", 6)):
        for line in lines[1:]:
            result = json.loads(line)[p]
            m = min(10, n_candidates or 10)
            assert len(result["retrieved"]) == m and result["prompts"] == 2 * 2 * (m - 1) - 2
            rank, ties = script.reranked_rank(result, "llm")
            if result["positive_position"] > m:  # not retrieved: the retriever's place
                assert (rank, ties) == (result["positive_position"], 0)
            else:
                assert rank <= m
    agreement = json.loads((out / "agreement.json").read_text())
    assert agreement["users"] == 2
    assert (
        agreement["means"]["pivot_prompts"] == 34 and agreement["means"]["all-pairs_prompts"] == 90
    )

    # A rerun reuses every user (no model is loaded) and gives the same rows.
    def no_model(spec):
        raise AssertionError("nothing was left to score")

    monkeypatch.setattr(script, "load_ranker", no_model)
    cache = out / "test-llm.jsonl"
    with cache.open("a") as f:
        f.write('{"user": "cut by a ki')  # a run killed mid-line
    code, _, err = evaluate(script, capsys, run_dir, out, "--llm-users", "2", "--part", "test")
    assert code == 0, err
    assert json.loads((out / "test.json").read_text())["protocols"] == doc["protocols"]
    assert cache.read_text().splitlines() == lines  # the cut line is gone
    # The fused rows are made when read, with the pair hybrid as the run finds it: refitting it
    # costs no LLM call, and test.json names the file and digest. A cache that recorded the
    # hybrid's digest (older ones did) is still read.
    model_json = run_dir / "sft" / "hybrid" / "model.json"
    assert doc["fusion_file"] == {"file": str(model_json), "digest": files_digest(model_json)}
    assert agreement["fusion"] == "hybrid" and agreement["fusion_file"] == doc["fusion_file"]
    kept_model = model_json.read_text()
    llm_alone = Hybrid(("llm", "popularity", "bpr-mf"), (1.0,) * 3, (1.0, 0.0, 0.0), 1, 9, 3, 0.6)
    llm_alone.save(model_json)
    older = json.loads(lines[0])
    older["settings"]["hybrid"] = "79a1ea15adf5f251"
    cache.write_text("\n".join([json.dumps(older), *lines[1:]]) + "\n")
    code, _, err = evaluate(script, capsys, run_dir, out, "--llm-users", "2", "--part", "test")
    assert code == 0, err
    refitted = json.loads((out / "test.json").read_text())
    assert refitted["fusion_file"]["digest"] == files_digest(model_json)
    for p in ("full", "sampled"):  # fused by the LLM alone: the LLM's order
        ranked = refitted["per_user"]["llm"][p]
        assert ranked["fused"] == ranked["llm-rerank"]
    model_json.write_text(kept_model)
    cache.write_text("\n".join(lines) + "\n")
    # Other settings are refused, naming them; the results are kept.
    code, _, err = evaluate(
        script, capsys, run_dir, out, "--llm-users", "2", "--part", "test", "--pivots", "3"
    )
    assert code == 2 and "made with other settings (pivots: 2 then, 3 now)" in err
    assert cache.read_text().splitlines() == lines
    # Cached candidates the retriever no longer gives are refused too.
    tampered = json.loads(lines[1])
    tampered["full"]["retrieved"].reverse()
    cache.write_text("\n".join([lines[0], json.dumps(tampered), lines[2]]) + "\n")
    code, _, err = evaluate(script, capsys, run_dir, out, "--llm-users", "2", "--part", "test")
    assert code == 2 and "cached candidates are not what the retriever gives now" in err
    # Fitting again reuses the validation reranks; --install puts it where `recommend` reads it.
    code, _, err = evaluate(script, capsys, run_dir, out, "--part", "list-hybrid", "--install")
    assert code == 0, err
    installed = run_dir / "sft" / "hybrid" / "list-model.json"
    assert Hybrid.load(installed) == Hybrid.load(out / "list-model.json")
    fitted_for = json.loads((installed.parent / "list-model.fitted-for.json").read_text())
    assert fitted_for["model.adapters"] == fitted["settings"]["model.adapters"]
    # A list hybrid fitted with other settings is refused by the test part, naming them.
    code, _, err = evaluate(
        script, capsys, run_dir, out, "--llm-users", "2", "--part", "test", "--list-users", "5"
    )
    assert code == 2 and "list hybrid was fitted with other settings (list_users: 100 then" in err
    monkeypatch.undo()

    # `recommend` ranks with the installed list hybrid over the pair hybrid.
    rec = load_recommender(str(run_dir), TitleNormalization())
    assert rec.hybrid_kind == "list-hybrid" and rec.hybrid == Hybrid.load(installed)
    plan = rec.plan(rec.catalogue.titles[:2], k=3, m=4)
    answer = rec.finish(plan, load_ranker(str(run_dir)))
    assert answer["fusion"] == "list-hybrid" and len(answer["recommended"]) == 3
    # Adapters trained again make it stale: said, and the pair hybrid ranks instead.
    fitted_for["model.adapters"] = "0" * 16
    (installed.parent / "list-model.fitted-for.json").write_text(json.dumps(fitted_for))
    rec = load_recommender(str(run_dir), TitleNormalization(), say=lambda text: None)
    assert rec.hybrid_kind == "hybrid" and rec.hybrid == Hybrid.load(
        installed.parent / "model.json"
    )
    assert any("fitted for other adapters" in note for note in rec.notes)
    # A list hybrid whose C was chosen the older way (by accuracy) is refused, naming it.
    listed = json.loads((out / "list-hybrid.json").read_text())
    for fit in listed["hybrids"].values():
        fit["selected_by"] = "accuracy"
    (out / "list-hybrid.json").write_text(json.dumps(listed))
    code, _, err = evaluate(script, capsys, run_dir, out, "--llm-users", "2", "--part", "test")
    assert code == 2 and "C was chosen by accuracy, not log-loss" in err
    # --install needs the list hybrid's part; a broken list-hybrid.json is one line.
    with pytest.raises(SystemExit):
        script.main(["--model", str(run_dir), "--part", "test", "--install"])
    (out / "list-hybrid.json").write_text("{")
    code, _, err = evaluate(script, capsys, run_dir, out, "--llm-users", "2", "--part", "test")
    assert code == 2 and "not a list hybrid this script wrote" in err and "Traceback" not in err

    # With every candidate a pivot, the pivot rerank is all pairs: the two agree exactly.
    code, printed, err = evaluate(
        script, capsys, run_dir, tmp_path / "p10", "--part", "agreement", "--valid-users", "2",
        "--pivots", "10",
    )  # fmt: skip
    assert code == 0, err
    means = json.loads((tmp_path / "p10" / "agreement.json").read_text())["means"]
    assert means["llm_top10_overlap"] == means["fused_top10_overlap"] == 1.0
    assert means["llm_kendall_tau"] == pytest.approx(1.0)
    assert means["llm_ndcg@10_vs_all_pairs"] == pytest.approx(1.0)
    assert means["pivot_prompts"] == means["all-pairs_prompts"] == 90
    assert not (tmp_path / "p10" / "test.json").exists()


def test_bad_settings_are_one_line_errors(script, run_dir, tmp_path, capsys):
    code, _, err = evaluate(
        script, capsys, run_dir, tmp_path / "x", "--sampled", "500", "--llm-users", "0",
        "--part", "test",
    )  # fmt: skip
    assert code == 2 and "titles the user did not rate; 500 are needed" in err
    assert err.strip().splitlines()[-1].startswith("catalogue_eval: ") and "Traceback" not in err
    code, _, err = evaluate(script, capsys, run_dir, tmp_path / "x", "--test", "nope.jsonl")
    assert code == 2 and "--test: nope.jsonl: no such file" in err
    with pytest.raises(SystemExit):
        script.main(["--model", str(run_dir), "--retrieve", "5"])
    assert "--retrieve must be at least 10" in capsys.readouterr().err


def test_sampled_protocol_alone_with_hr_at_1(script, run_dir, tmp_path, capsys):
    """`--protocols sampled` (the LLaRA / S-DPO protocol with --sampled 19) reranks only the
    sampled candidates; HR@1 is the expected hit at 1 over tie-breaks; its cache is its own."""
    out = tmp_path / "sampled"
    more = ("--llm-users", "2", "--part", "test", "--protocols", "sampled")
    code, printed, err = evaluate(script, capsys, run_dir, out, *more)
    assert code == 0, err
    doc = json.loads((out / "test.json").read_text())
    assert set(doc["protocols"]) == {"sampled"} and "target (sampled)" in printed
    assert "| HR@1 [95% CI] |" in printed and "target (full)" not in printed
    lines = (out / "test-llm.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["settings"]["protocols"] == ["sampled"]
    assert all(set(json.loads(line)) == {"user", "sampled"} for line in lines[1:])
    for row, ranks in doc["per_user"]["llm"]["sampled"].items():
        hits = user_hits(np.array(ranks["rank"]), 1, np.array(ranks["ties"]))
        got = doc["protocols"]["sampled"]["llm_users"]["rows"][row]["hr@1"]
        assert got == pytest.approx(hits.mean())
    with pytest.raises(SystemExit):
        script.main(["--model", str(run_dir), "--protocols", "sampled,top"])
    assert "--protocols 'sampled,top'" in capsys.readouterr().err
