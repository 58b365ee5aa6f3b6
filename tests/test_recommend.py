"""`dmporec recommend` on a tiny trained run: run/stage/model resolution, titles, users files, errors;
top-K from the run's catalogue (retrieve, rerank, fuse) and its bad input."""

import json
import shutil

import pytest

from dmporec.catalogue import CATALOGUE, read_catalogue
from dmporec.cli import main
from dmporec.config import DataConfig, EvalConfig, dump_config, load_config
from dmporec.explain import explain_instruction
from dmporec.export import export_run
from dmporec.hybrid import Hybrid
from dmporec.model import load_stage_model
from dmporec.ranker import Ranker, load_ranker
from dmporec.ranking import RankRequest, rank_candidates
from dmporec.records import TitleNormalization, read_records
from dmporec.wording import WORDINGS

TINY_RUN = [
    "model.name=builtin:tiny-qwen3",
    "data.demo={train_users: 4, valid_users: 0, test_users: 3, negatives: 2}",
    "sft.epochs=1",
    "sft.batch_size=4",
    "sft.learning_rate=1e-2",
    "dmpo.epochs=1",
    "dmpo.batch_size=4",
    "dmpo.k=2",
    "eval.n_boot=10",
    "zero_shot=false",
]
HISTORY = ["Haunted Manor", "Cursed Crypt II"]
CANDIDATES = ["Wicked Asylum", "Sweet Kiss", "Quantum Nebula"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("recommend") / "run"
    assert main(["run", *TINY_RUN, f"output_dir={out}"]) == 0
    return out


def use_loader(monkeypatch, load) -> None:
    """`recommend` (either path: ranking candidates or top-K) loads its model with `load`."""
    for module in ("dmporec.recommend", "dmporec.recommend_top_k"):
        monkeypatch.setattr(f"{module}.load_ranker", load)


def recommend(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["recommend", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_table_from_a_run_dir_uses_its_dmpo_stage(run_dir, capsys):
    code, out, _ = recommend(
        capsys,
        "--model",
        str(run_dir),
        "--history",
        *HISTORY,
        "--candidates",
        *CANDIDATES,
        "--top-k",
        "2",
    )
    lines = out.strip().splitlines()
    assert code == 0 and lines[0] == f"model: {run_dir / 'dmpo'}"
    assert lines[1].split() == ["rank", "score", "title"] and len(lines) == 4
    assert [line.split()[0] for line in lines[2:]] == ["1", "2"]


def test_json_scores_equal_the_stage_model(run_dir, capsys):
    args = ["--history", *HISTORY, "--candidates", *CANDIDATES, "--json"]
    code, out, _ = recommend(capsys, "--model", str(run_dir / "sft"), *args)
    doc = json.loads(out)
    assert code == 0 and doc["model"] == str(run_dir / "sft")
    model, tok, cfg = load_stage_model(run_dir / "sft")
    ranker = Ranker.create(model, tok, cfg, "sft")
    expected = rank_candidates(model, ranker.encoder, [ranker.request(HISTORY, CANDIDATES)])[0]
    got = {x["title"]: x["score"] for x in doc["ranked"]}
    for title, score in zip(CANDIDATES, expected, strict=True):
        assert got[title] == pytest.approx(score, abs=1e-5)
    assert [x["rank"] for x in doc["ranked"]] == [1, 2, 3]


def test_a_bare_model_name_ranks_zero_shot(capsys):
    code, out, _ = recommend(
        capsys, "--model", "builtin:tiny-qwen3", "--history", "A", "--candidates", "B", "C"
    )
    assert code == 0 and out.startswith("model: builtin:tiny-qwen3")


def test_titles_are_cleaned_as_the_run_cleaned_them(run_dir, tmp_path):
    # Default cleaning decodes HTML entities: both spellings are the same item to the model.
    ranker = load_ranker(str(run_dir))
    a = ranker.rank([ranker.request(HISTORY, ["Am&eacute;lie", "Up"])])[0]
    b = ranker.rank([ranker.request(HISTORY, ["Amélie", "Up"])])[0]
    assert a == pytest.approx(b, abs=1e-6)
    # A run trained with strip_year: requests drop the year too.
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    cfg = load_config(copy / "config.yaml", ["data.title_normalization.strip_year=true"])
    (copy / "config.yaml").write_text(dump_config(cfg))
    request = load_ranker(str(copy)).request(["Heat (1995)"], ["Up (2009)", "Jaws"])
    assert request.history == ("Heat",) and request.candidates == ("Up", "Jaws")


def test_users_file(run_dir, tmp_path, capsys):
    users = [
        {"user": "ann", "history": HISTORY, "candidates": CANDIDATES},
        {"user": "bob", "history": ["Sweet Kiss"], "candidates": ["Up", "Jaws"], "domain": "games"},
        {"history": ["Up"], "candidates": ["Lonely"]},
    ]
    path = tmp_path / "users.json"
    path.write_text(json.dumps(users))
    code, out, _ = recommend(capsys, "--model", str(run_dir), "--users", str(path), "--json")
    doc = json.loads(out)
    assert code == 0 and [u["user"] for u in doc["users"]] == ["ann", "bob", "2"]
    assert doc["users"][2]["ranked"] == [{"rank": 1, "title": "Lonely", "score": 1.0}]
    _, single, _ = recommend(
        capsys,
        "--model",
        str(run_dir),
        "--history",
        *HISTORY,
        "--candidates",
        *CANDIDATES,
        "--json",
    )
    batched = {x["title"]: x["score"] for x in doc["users"][0]["ranked"]}
    alone = {x["title"]: x["score"] for x in json.loads(single)["ranked"]}
    assert batched.keys() == alone.keys()
    for title, score in alone.items():
        assert batched[title] == pytest.approx(score, abs=1e-5)
    code, table, _ = recommend(capsys, "--model", str(run_dir), "--users", str(path))
    assert code == 0 and "user ann" in table and "user bob" in table


BAD_USERS = [
    ('{"user": "a"}', "expected a non-empty JSON list of users"),
    ("[1, 2", "malformed JSON"),
    ('[{"history": ["A"], "candidates": ["B"]}, 7]', "record 1: expected an object"),
    (  # without candidates in any record, a file asks for top-K; with some, all need them
        '[{"history": ["A"], "candidates": ["B"]}, {"history": ["A"]}]',
        "record 1, field 'candidates': missing",
    ),
    ('[{"history": "A", "candidates": ["B"]}]', "record 0, field 'history': expected a list"),
    (
        '[{"history": ["A"], "candidates": ["B", 3]}]',
        "field 'candidates': expected a list of title",
    ),
    (
        '[{"history": ["A"], "candidates": ["B"]}, {"history": ["A"], "candidates": ["B", "B"]}]',
        "record 1, field 'candidates': duplicate candidate 'B'",
    ),
    ('[{"history": [], "candidates": ["B"]}]', "record 0, field 'history': needs at least one"),
    ('[{"history": ["A"], "candidates": ["B"], "domain": "music"}]', "field 'domain'"),
]


@pytest.mark.parametrize(("text", "message"), BAD_USERS, ids=[m for _, m in BAD_USERS])
def test_bad_users_files_name_file_entry_and_field(run_dir, tmp_path, capsys, text, message):
    path = tmp_path / "users.json"
    path.write_text(text)
    code, _, err = recommend(capsys, "--model", str(run_dir), "--users", str(path))
    assert code == 2 and "users.json" in err and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_usage_errors_are_one_line(run_dir, tmp_path, capsys):
    cases = [
        (["--model", str(run_dir)], "give --history"),
        (["--model", str(run_dir), "--candidates", "B"], "give --history and --candidates"),
        (
            ["--model", str(run_dir), "--users", "u.json", "--history", "A", "--candidates", "B"],
            "not both",
        ),
        (["--model", str(tmp_path), "--history", "A", "--candidates", "B"], "not a run dir"),
        (["--model", "/no/such/run", "--history", "A", "--candidates", "B"], "no such directory"),
        (["--model", "builtin:nope", "--history", "A", "--candidates", "B"], "unknown builtin"),
        (["--model", str(run_dir), "--users", str(tmp_path / "u.json")], "file not found"),
        (
            ["--model", str(run_dir), "--history", "A", "--candidates", "B", "--top-k", "0"],
            "--top-k",
        ),
    ]
    for args, message in cases:
        code, _, err = recommend(capsys, *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)


def test_explain_instruction_wording():
    assert explain_instruction(["Heat"], "Up", WORDINGS["games"]) == (
        "You are an assistant working on Video Games recommendations. Here is the user's history "
        "of Video Games they have shopped:  <Title:Heat> . In one or two sentences, explain why "
        "the user would enjoy shopping the Video Games  <Title:Up> ."
    )


def _tiny_ranker(tiny, tiny_cfg, monkeypatch, **data) -> Ranker:
    """`recommend` gets the tiny random model whatever --model says (with `data` settings)."""
    ranker = Ranker.create(*tiny, tiny_cfg, "tiny")
    ranker.data_cfg = DataConfig(**data)
    use_loader(monkeypatch, lambda spec: ranker)
    return ranker


LONG_HISTORY = [f"Long Movie Title Number {i}" for i in range(120)]  # ~2,500 tokens
MIXED = [
    # issue #37's shape: a long history, a few candidates (one prompt tree after the history)
    ([*CANDIDATES, "Lonely"], 8192),
    # its pairs over two trees: the history, repeated in each, is over max_batch_tokens
    ([f"Film {i}" for i in range(10)], 1024),
]


@pytest.mark.parametrize(("candidates", "max_batch_tokens"), MIXED, ids=["4 candidates", "10"])
def test_a_mixed_users_file_costs_the_sum_of_its_users(
    tiny, tiny_cfg, tmp_path, monkeypatch, capsys, candidates, max_batch_tokens
):
    """A long history ranked beside a short one used to be encoded again for every group of
    its pairs (one group per pair once the history was over max_group_tokens), as the call's
    shared stem shrank to the chat header (issue #37: 161 s for 18 s + 40 s alone). Cost here:
    tokens through the model's forward passes, padding included."""
    short = {"user": "s", "history": ["Up", "Heat", "Jaws", "Babe"], "candidates": CANDIDATES}
    long = {"user": "l", "history": LONG_HISTORY, "candidates": candidates}
    ranker = _tiny_ranker(tiny, tiny_cfg, monkeypatch)
    ranker.eval_cfg = EvalConfig(max_batch_tokens=max_batch_tokens)
    tokens: list[int] = []
    hook = tiny[0].register_forward_pre_hook(
        lambda _m, _a, kw: tokens.append(kw["input_ids"].numel()), with_kwargs=True
    )
    cost = {}
    try:
        for name, users in (("short", [short]), ("long", [long]), ("mixed", [short, long])):
            path = tmp_path / f"{name}.json"
            path.write_text(json.dumps(users))
            tokens.clear()
            code, _, err = recommend(capsys, "--model", "tiny", "--users", str(path))
            assert code == 0, err
            cost[name] = sum(tokens)
    finally:
        hook.remove()
    assert cost["mixed"] <= 1.05 * (cost["short"] + cost["long"]), cost


MANY = [f"Film {i}" for i in range(31)]
BAD_INPUT = [
    (["--history", "A", "--candidates", "B", "C", "B"], "duplicate candidate 'B'"),
    (["--history", "A", "--candidates", "Am&eacute;lie", "Amélie"], "duplicate candidate 'Amélie'"),
    (["--history", " ", "--candidates", "B", "C"], "field 'history': title 0 is empty"),
    (["--history", "A", "--candidates", "B", ""], "field 'candidates': title 1 is empty"),
    (
        ["--history", "Heat", "Up", "--candidates", "Jaws", "Up"],
        "field 'candidates': candidate 'Up' is already in the history (history title 1)",
    ),
    (
        ["--history", "A", "--candidates", *MANY],
        "31 candidates (930 prompts) is over --max-candidates=30",
    ),
    (
        ["--history", "A", "--candidates", "B", "C", "D", "--max-candidates", "2"],
        "--max-candidates=2",
    ),
    (["--history", "A", "--candidates", "B", "--max-candidates", "0"], "--max-candidates must be"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_fails_before_the_model_loads(tmp_path, monkeypatch, capsys, args, message):
    # No model at that path, and loading one would fail the test: the input error comes first.
    def no_load(spec):
        raise AssertionError("the model was loaded before the input was checked")

    use_loader(monkeypatch, no_load)
    code, out, err = recommend(capsys, "--model", str(tmp_path / "no-run"), *args)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and out == ""


BAD_RECORDS = [
    ('{"history": [], "candidates": ["B", "C"]}', "field 'history': needs at least one title"),
    ('{"history": ["A"], "candidates": ["B", "B "]}', "field 'candidates': duplicate candidate"),
    (
        '{"history": ["A", "B"], "candidates": ["B", "C"]}',
        "candidate 'B' is already in the history",
    ),
    (json.dumps({"history": ["A"], "candidates": MANY}), "--max-candidates=30"),
]


@pytest.mark.parametrize(("record", "message"), BAD_RECORDS, ids=[m for _, m in BAD_RECORDS])
def test_a_bad_users_record_fails_before_the_model_loads(
    tmp_path, monkeypatch, capsys, record, message
):
    use_loader(monkeypatch, lambda spec: pytest.fail("model loaded"))
    path = tmp_path / "users.json"
    path.write_text(f'[{{"history": ["A"], "candidates": ["B", "C"]}}, {record}]')
    code, _, err = recommend(capsys, "--model", "/no/such/run", "--users", str(path))
    assert code == 2 and "users.json, record 1, field '" in err, err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_titles_are_checked_as_the_run_cleans_them_before_it_loads(
    run_dir, tmp_path, monkeypatch, capsys
):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    cfg = load_config(copy / "config.yaml", ["data.title_normalization.strip_year=true"])
    (copy / "config.yaml").write_text(dump_config(cfg))
    use_loader(monkeypatch, lambda spec: pytest.fail("model loaded"))
    args = ["--history", "Heat (1995)", "--candidates", "Up (2009)", "Up"]
    code, _, err = recommend(capsys, "--model", str(copy), *args)
    assert code == 2 and "duplicate candidate 'Up' (positions 0 and 1)" in err, err
    code, _, err = recommend(
        capsys, "--model", str(copy), "--history", "Heat", "--candidates", "Heat (1995)", "Up"
    )
    assert code == 2 and "candidate 'Heat' is already in the history" in err, err


def test_the_prompt_count_is_printed_before_ranking(run_dir, capsys):
    code, _, err = recommend(
        capsys, "--model", str(run_dir), "--history", *HISTORY, "--candidates", *CANDIDATES
    )
    assert code == 0 and err.startswith("recommend: 1 user: 6 prompts to score"), err


def test_progress_hears_of_every_prompt_as_calls_finish(tiny, tiny_cfg):
    enc = Ranker.create(*tiny, tiny_cfg, "tiny").encoder
    requests = [
        RankRequest(tuple(HISTORY), ("Up", "Jaws", "Heat", "Babe")),  # 12 prompts, split below
        RankRequest(tuple(HISTORY), ("Up", "Jaws")),  # 2, one group
        RankRequest(tuple(HISTORY), ("Up",)),  # no prompt
    ]
    heard: list[int] = []
    split = rank_candidates(
        tiny[0], enc, requests, max_group_tokens=1, max_batch_tokens=64, progress=heard.append
    )
    assert sum(heard) == 12 + 2 and len(heard) > 2, heard
    whole = rank_candidates(tiny[0], enc, requests)
    for a, b in zip(split, whole, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_a_cut_history_says_how_many_titles_it_kept(tiny, tiny_cfg, tmp_path, monkeypatch, capsys):
    ranker = _tiny_ranker(tiny, tiny_cfg, monkeypatch, max_prompt_tokens=300)
    history = [f"Long Movie Title Number {i}" for i in range(40)]
    kept = len(ranker.request(history, CANDIDATES).history)
    assert 0 < kept < 40
    path = tmp_path / "users.json"
    path.write_text(
        json.dumps(
            [
                {"user": "s", "history": HISTORY, "candidates": CANDIDATES},
                {"user": "l", "history": history, "candidates": CANDIDATES},
            ]
        )
    )
    code, _, err = recommend(capsys, "--model", "tiny", "--users", str(path))
    assert code == 0 and err.count("kept its newest") == 1, err
    assert (
        "recommend: user l's history is over data.max_prompt_tokens=300 tokens with its "
        f"candidates: kept its newest {kept} of 40 titles" in err
    )
    code, _, err = recommend(
        capsys, "--model", "tiny", "--history", *history, "--candidates", *CANDIDATES
    )
    assert code == 0 and "recommend: the history is over data.max_prompt_tokens=300 tokens" in err


def test_explain_says_why_the_top_one_and_what_it_cost(
    tiny, tiny_cfg, tmp_path, monkeypatch, capsys
):
    _tiny_ranker(tiny, tiny_cfg, monkeypatch)
    history = [*HISTORY, "Galactic Starship"]
    args = ["--model", "tiny", "--history", *history, "--candidates", *CANDIDATES, "--explain"]
    code, out, err = recommend(capsys, *args, "--json")
    doc = json.loads(out)
    assert code == 0 and "recommend: --explain: 16 prompts more" in err, err
    why, top = doc["explanation"], doc["ranked"][0]
    # Its score with the whole history is the score it was ranked by; 4 histories x 4 prompts.
    assert why["title"] == top["title"] and why["score"] == pytest.approx(top["score"], abs=1e-5)
    assert why["prompts"] == 16 and why["left_out"] == why["history_titles"] == 3
    assert sorted(why["versus"]) == sorted(set(CANDIDATES) - {top["title"]})
    drops = [r["drop"] for r in why["reasons"]]
    assert drops == sorted(drops, reverse=True) and {r["title"] for r in why["reasons"]} == set(
        history
    )
    named = [r["title"] for r in why["reasons"] if r["drop"] > 0][:3]
    assert why["because"] == (
        f"because you watched {', '.join(named)} (score drop "
        + ", ".join(f"{d:.4f}" for d in drops[: len(named)])
        + ")"
    )
    code, out, _ = recommend(capsys, *args)
    lines = out.strip().splitlines()
    assert code == 0 and lines[-2] == f"why {top['title']}: {why['because']}"
    assert lines[-1].startswith("  (16 prompts, ") and "against 2 others" in lines[-1]
    # A users file: each user explained; a lone candidate has nothing to explain; a long
    # history is explained over its newest titles.
    long = [f"Film {i}" for i in range(14)]
    users = [
        {"user": "a", "history": HISTORY, "candidates": CANDIDATES},
        {"user": "b", "history": HISTORY, "candidates": ["Up"]},
        {"user": "c", "history": long, "candidates": ["Up", "Jaws"]},
    ]
    path = tmp_path / "users.json"
    path.write_text(json.dumps(users))
    code, out, err = recommend(
        capsys, "--model", "tiny", "--users", str(path), "--explain", "--json"
    )
    doc = json.loads(out)
    a, b, c = (u["explanation"] for u in doc["users"])
    assert code == 0 and a["prompts"] == 12 and b is None and c["prompts"] == 11 * 2
    assert c["left_out"] == 10 and c["history_titles"] == 14
    assert {r["title"] for r in c["reasons"]} == set(long[4:])
    assert f"recommend: --explain: {12 + 22} prompts more" in err
    code, out, _ = recommend(capsys, "--model", "tiny", "--users", str(path), "--explain")
    assert code == 0 and "why Up: a lone candidate has no score to explain" in out
    assert "without each of 10 titles (the newest 10 of 14))" in out


# ---------------------------------------------------------------- top-K from the catalogue


def top_k_json(capsys, *args: str) -> tuple[dict, str]:
    code, out, err = recommend(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out), err


def test_top_k_from_the_run_catalogue(run_dir, capsys):
    (run_dir / CATALOGUE).unlink(missing_ok=True)
    doc, err = top_k_json(
        capsys, "--model", str(run_dir), "--history", *HISTORY, "--top-k", "3", "--retrieve", "6"
    )
    catalogue = read_catalogue(run_dir / CATALOGUE, TitleNormalization())
    assert f"catalogue: wrote {run_dir / CATALOGUE} ({len(catalogue)} titles" in err
    assert "18 prompts to score (pivot rerank)" in err  # 2P(M-1) - P(P-1), M = 6, P = 2
    assert doc["prompts"] == 18 and doc["candidates"] == 6 and doc["rerank"] == "pivot"
    assert doc["retriever"] == "bpr-mf" and doc["fusion"] == "rrf" and doc["pivots"] == 2
    items = doc["recommended"]
    assert [it["rank"] for it in items] == [1, 2, 3]
    assert all(it["title"] in catalogue.titles and it["title"] not in HISTORY for it in items)
    assert all(1 <= it["retriever_rank"] <= 6 and it["llm_score"] is not None for it in items)
    fused = [it["fused_score"] for it in items]
    assert fused == sorted(fused, reverse=True)
    # Every pair of the 6 asked: 30 prompts; the catalogue is read, not written again.
    doc, err = top_k_json(
        capsys, "--model", str(run_dir), "--history", *HISTORY, "--top-k", "3", "--retrieve", "6",
        "--rerank", "all-pairs",
    )  # fmt: skip
    assert doc["prompts"] == 30 and "wrote" not in err
    code, out, _ = recommend(capsys, "--model", str(run_dir), "--history", *HISTORY, "--top-k", "2")
    lines = out.splitlines()
    assert code == 0 and lines[0] == f"model: {run_dir / 'dmpo'}"
    assert lines[1].startswith("retriever bpr-mf: ") and "rerank pivot (P=2)" in lines[1]
    assert lines[2].split() == ["rank", "fused", "llm", "retr", "title"] and len(lines) == 5


def test_top_k_explains_its_first_item_against_the_next_three(run_dir, capsys):
    args = ["--model", str(run_dir), "--history", *HISTORY, "--top-k", "5", "--retrieve", "6"]
    doc, err = top_k_json(capsys, *args, "--explain")
    why, items = doc["explanation"], [it["title"] for it in doc["recommended"]]
    assert why["title"] == items[0] and why["versus"] == items[1:4]
    assert why["prompts"] == (2 + 1) * 2 * 3 and why["left_out"] == 2
    assert "recommend: --explain: 18 prompts more (the first item against the next 3" in err
    # Grounded: its score with the whole history is its Ranker score among these four titles.
    ranker = load_ranker(str(run_dir))
    scores = ranker.rank([ranker.request(HISTORY, items[:4])])[0]
    assert why["score"] == pytest.approx(scores[0], abs=1e-5)
    code, out, _ = recommend(capsys, *args, "--explain")
    lines = out.strip().splitlines()
    assert code == 0 and lines[-2].startswith(f"why {items[0]}: ")
    assert lines[-1].startswith("  (18 prompts, ") and "against 3 others" in lines[-1]
    # An empty history: no model scores, nothing to explain, said.
    code, out, _ = recommend(capsys, "--model", str(run_dir), "--history", "--explain")
    assert code == 0 and "nothing to explain: no model scores (rerank none)" in out


def test_a_user_of_the_run_and_an_empty_history(run_dir, monkeypatch, capsys):
    test_user = read_records(run_dir / "data" / "test.jsonl")[0]
    doc, err = top_k_json(
        capsys, "--model", str(run_dir), "--user", test_user.user_id, "--top-k", "2"
    )
    assert doc["user"]["file"] == "eval" and doc["user"]["positive"] == test_user.positive.title
    assert doc["history_titles"] == len(test_user.history)
    assert f"recommend: user {test_user.user_id} (eval file" in err
    # An empty history: the most popular titles, said, and no model loaded.
    use_loader(monkeypatch, lambda spec: pytest.fail("model loaded"))
    doc, err = top_k_json(capsys, "--model", str(run_dir), "--history", "--top-k", "3")
    assert doc["retriever"] == "popularity" and doc["rerank"] == "none" and doc["prompts"] == 0
    assert "empty history: the catalogue's most popular titles" in err
    counts = [it["retriever_score"] for it in doc["recommended"]]
    assert counts == sorted(counts, reverse=True) and len(counts) == 3


def test_top_k_for_every_user_of_a_file(run_dir, tmp_path, monkeypatch, capsys):
    test_user = read_records(run_dir / "data" / "test.jsonl")[0]
    users = [
        {"user": "ann", "history": HISTORY},
        {"user": test_user.user_id},  # a user of the run's data files: their history
        {"user": "new", "history": []},  # the most popular titles
    ]
    path = tmp_path / "users.json"
    path.write_text(json.dumps(users))
    args = ["--model", str(run_dir), "--users", str(path), "--top-k", "3", "--retrieve", "5"]
    doc, err = top_k_json(capsys, *args)
    ann, run_user, new = doc["users"]
    assert [u.get("user") for u in doc["users"]] == ["ann", test_user.user_id, "new"]
    assert "recommend: 3 users: bpr-mf retrieved 5 candidates" in err
    # Each answer is what recommending for that user alone gives.
    alone, _ = top_k_json(capsys, *args[:2], "--history", *HISTORY, *args[4:])
    assert ann["recommended"] == alone["recommended"] and ann["prompts"] == alone["prompts"]
    by_id, _ = top_k_json(capsys, *args[:2], "--user", test_user.user_id, *args[4:])
    assert run_user["recommended"] == by_id["recommended"] and run_user["run_user"] == by_id["user"]
    assert run_user["run_user"]["positive"] == test_user.positive.title
    assert new["retriever"] == "popularity" and new["rerank"] == "none"
    code, out, _ = recommend(capsys, *args, "--explain")
    assert code == 0 and out.count("\nuser ") == 3 and out.count("why ") == 3, out
    assert "nothing to explain: no model scores (rerank none)" in out
    # Checked before the model loads, each error naming the file, record and field.
    use_loader(monkeypatch, lambda spec: pytest.fail("model loaded"))
    for records, message in (
        ([{"user": "ann", "history": HISTORY}, {"user": "nobody"}], "record 1, field 'user': user 'nobody' is in none"),
        ([{"history": HISTORY}, {"domain": "games"}], "record 1, field 'history': missing: give 'history', or 'user' alone"),
        ([{"history": "Up"}], "record 0, field 'history': expected a list of title strings"),
        ([{"history": ["Up", " "]}], "record 0, field 'history': title 1 is empty"),
        ([{"history": ["Up"], "domain": "music"}], "record 0, field 'domain': unknown wording 'music'"),
    ):  # fmt: skip
        path.write_text(json.dumps(records))
        code, out, err = recommend(capsys, *args)
        assert code == 2 and f"users.json, {message}" in err and out == "", err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # What only the catalogue can check names the record too.
    path.write_text(json.dumps([{"history": HISTORY}]))
    code, _, err = recommend(capsys, *args[:4], "--top-k", "40", "--retrieve", "40")
    assert code == 2 and "users.json, record 0: top-K 40 is more than the" in err, err


def test_another_catalogue_file(run_dir, tmp_path, capsys):
    path = tmp_path / "mine.jsonl"
    titles = ["Wicked Asylum", "Sweet Kiss", "Quantum Nebula", "Crazy Roommates", "Haunted Manor"]
    path.write_text(
        "".join(json.dumps({"title": t, "item_id": i}) + "\n" for i, t in enumerate(titles))
    )
    doc, err = top_k_json(
        capsys, "--model", str(run_dir), "--history", *HISTORY, "--catalogue", str(path),
        "--top-k", "2", "--retrieve", "4",
    )  # fmt: skip
    assert doc["catalogue_titles"] == 5 and doc["history_matched"] == 1  # Haunted Manor
    assert {it["title"] for it in doc["recommended"]} <= set(titles[:4])
    assert all(it["item_id"] == str(titles.index(it["title"])) for it in doc["recommended"])


def _hybrid_run(run_dir, tmp_path, components: tuple[str, ...]):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    n = len(components)
    Hybrid(components, (1.0,) * n, (1.0,) * n, 1.0, 10, 5, 0.6).save(
        copy / "dmpo" / "hybrid" / "model.json"
    )
    return copy


def test_the_run_hybrid_fuses_and_a_component_it_cannot_compute_is_said(run_dir, tmp_path, capsys):
    # like-rate reads the run's training labels (data.training_labels), not only histories.
    run = _hybrid_run(run_dir, tmp_path, ("llm", "popularity", "bpr-mf", "like-rate"))
    args = ["--model", str(run), "--history", *HISTORY, "--top-k", "3", "--retrieve", "5"]
    doc, _ = top_k_json(capsys, *args)
    assert doc["fusion"] == "hybrid" and not doc["notes"][1:]
    fused = [it["fused_score"] for it in doc["recommended"]]
    assert fused == sorted(fused, reverse=True)
    doc, _ = top_k_json(capsys, *args, "--no-hybrid")
    assert doc["fusion"] == "rrf"
    shutil.rmtree(run)
    run = _hybrid_run(run_dir, tmp_path, ("llm", "nope"))
    doc, err = top_k_json(capsys, "--model", str(run), *args[2:])
    assert doc["fusion"] == "rrf"
    assert (
        "needs nope (unknown retriever 'nope'" in err and "fused by reciprocal rank instead" in err
    )
    assert any("needs nope" in note for note in doc["notes"])


def test_export_keeps_the_catalogue(run_dir, tmp_path, capsys):
    out = export_run(run_dir, tmp_path / "exported")
    assert (
        read_catalogue(out / CATALOGUE, TitleNormalization()).items
        == read_catalogue(run_dir / CATALOGUE, TitleNormalization()).items
    )
    doc, err = top_k_json(capsys, "--model", str(out), "--history", *HISTORY, "--top-k", "2")
    assert (
        doc["retriever"] == "popularity" and "retriever popularity (the catalogue's counts)" in err
    )


def test_bad_top_k_input_fails_before_the_model_loads(run_dir, tmp_path, monkeypatch, capsys):
    use_loader(monkeypatch, lambda spec: pytest.fail("model loaded"))
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"title": "Up"}\n{"title": "Heat"}\n{"title": "Up "}\n')
    shape = tmp_path / "shape.jsonl"
    shape.write_text('{"title": "Up"}\n{"titel": "Heat"}\n')
    small = tmp_path / "small.jsonl"
    small.write_text('{"title": "Up"}\n{"title": "Heat"}\n{"title": "Jaws"}\n')
    run = ["--model", str(run_dir)]
    cases = [
        ([*run, "--history", "A", "--top-k", "5", "--retrieve", "3"], "--retrieve 3 is under --top-k 5"),
        ([*run, "--user", "nobody"], "user 'nobody' is in none of the run's data files"),
        ([*run, "--user", "x", "--history", "A"], "either --history or --user"),
        ([*run, "--history", "A", "--candidates", "B", "--retriever", "als"], "--retriever: for top-K"),
        ([*run, "--history", "A", "--rerank", "all-pairs", "--retrieve", "31"], "--max-candidates=30"),
        ([*run, "--history", "A", "--top-k", "100000"], "top-K 100000 is more than the"),
        ([*run, "--history", "A", "--catalogue", str(dup)], "dup.jsonl, record on line 3, field 'title': duplicate title 'Up'"),
        ([*run, "--history", "A", "--catalogue", str(shape)], "shape.jsonl, record on line 2, field 'titel': unknown key"),
        ([*run, "--history", "Up", "--catalogue", str(small), "--top-k", "3"], "top-K 3 is more than the 2 catalogue titles left"),
        ([*run, "--history", "A", "--catalogue", str(tmp_path / "none.jsonl")], "none.jsonl: file not found"),
        (["--model", "builtin:tiny-qwen3", "--history", "A"], "no catalogue to recommend from"),
        (["--model", "builtin:tiny-qwen3", "--user", "7"], "--user needs --model RUN_DIR"),
    ]  # fmt: skip
    for args, message in cases:
        code, out, err = recommend(capsys, *args)
        lines = [line for line in err.strip().splitlines() if not line.startswith("recommend: ")]
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
        assert len(lines) == 1 and out == "", (args, err)
    # More candidates asked than the catalogue has: fewer reranked, said.
    doc, err = top_k_json(
        capsys,
        *run,
        "--history",
        "Up",
        "--catalogue",
        str(small),
        "--top-k",
        "1",
        "--rerank",
        "none",
    )
    assert len(doc["recommended"]) == 1


def test_help_says_why_bpr_mf_retrieves_by_default(capsys):
    with pytest.raises(SystemExit):
        main(["recommend", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default bpr-mf: fitted on the run's training histories, it beat popularity" in text
    assert "0.634 vs 0.602" in text and "2P(M-1)-P(P-1) prompts" in text
