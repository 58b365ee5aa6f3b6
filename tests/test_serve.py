"""The HTTP service on the tiny random model: answers, every refusal, batching, body limits;
/v1/recommend (top-K from a catalogue) and its refusals."""

import argparse
import asyncio
import threading
from collections import Counter

import pytest
import torch
from fastapi.testclient import TestClient

from dmporec.baselines import Popularity
from dmporec.batching import Batcher
from dmporec.catalogue import Catalogue, CatalogueItem
from dmporec.ranker import Ranker
from dmporec.ranking import goes_alone, ordered_pairs
from dmporec.records import DataError, TitleNormalization
from dmporec.rerank import Recommender
from dmporec.serve import Limits, create_app, serve_recommender

HISTORY = ["Haunted Manor", "Cursed Crypt II", "Galactic Starship"]
CANDIDATES = ["Wicked Asylum", "Sweet Kiss", "Quantum Nebula"]


@pytest.fixture(scope="module")
def ranker(tiny, tiny_cfg):
    return Ranker.create(tiny[0], tiny[1], tiny_cfg, "tiny")


@pytest.fixture(scope="module")
def client(ranker):
    # A long batch wait, so the concurrent requests of one test do meet in a batch.
    app = create_app(ranker, Limits(max_body_bytes=4096), max_batch=8, batch_wait_ms=100)
    with TestClient(app) as c:
        yield c


def direct(ranker, history, candidates, domain="movies"):
    """Unbatched reference: the ranker on this one request."""
    return ranker.rank([ranker.request(history, candidates, domain)])[0]


def test_rank_happy_path(client, ranker):
    r = client.post("/v1/rank", json={"history": HISTORY, "candidates": CANDIDATES})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["elapsed_ms"] > 0
    ranked = body["ranked"]
    assert [x["rank"] for x in ranked] == [1, 2, 3]
    assert sorted(x["title"] for x in ranked) == sorted(CANDIDATES)
    scores = [x["score"] for x in ranked]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(len(CANDIDATES) / 2, abs=1e-5)
    expected = dict(zip(CANDIDATES, direct(ranker, HISTORY, CANDIDATES), strict=True))
    for x in ranked:
        assert x["score"] == pytest.approx(expected[x["title"]], abs=1e-4)

    top = client.post(
        "/v1/rank",
        json={"history": HISTORY, "candidates": CANDIDATES, "top_k": 1, "domain": "games"},
    )
    assert top.status_code == 200 and len(top.json()["ranked"]) == 1
    one = client.post("/v1/rank", json={"history": HISTORY, "candidates": ["Up"]}).json()
    assert one["ranked"] == [{"rank": 1, "title": "Up", "normalized_title": "Up", "score": 1.0}]


def test_unicode_titles_come_back_as_sent(client, ranker):
    cands = ["Amélie", "千と千尋の神隠し", "Pokémon ✨ Édition", "Ça 🎬"]
    r = client.post("/v1/rank", json={"history": ["Léon", "Солярис"], "candidates": cands})
    assert r.status_code == 200, r.text
    got = {x["title"]: x["score"] for x in r.json()["ranked"]}
    assert set(got) == set(cands)
    for title, score in zip(cands, direct(ranker, ["Léon", "Солярис"], cands), strict=True):
        assert got[title] == pytest.approx(score, abs=1e-4)


LONG = "x" * 201
REFUSED = [
    ({"history": [], "candidates": ["A"]}, "history: List should have at least 1 item"),
    ({"history": ["h"] * 51, "candidates": ["A"]}, "history: List should have at most 50 items"),
    ({"history": ["h"], "candidates": []}, "candidates: List should have at least 1 item"),
    (
        {"history": ["h"], "candidates": [f"c{i}" for i in range(21)]},
        "candidates: List should have at most 20 items",
    ),
    (
        {"history": ["h"], "candidates": ["A", LONG]},
        "candidates[1]: String should have at most 200",
    ),
    ({"history": [LONG], "candidates": ["A"]}, "history[0]: String should have at most 200"),
    ({"history": ["h", ""], "candidates": ["A"]}, "history[1]: title is empty"),
    ({"history": ["h"], "candidates": ["A", "  "]}, "candidates[1]: title is empty"),
    (
        {"history": ["h"], "candidates": ["Up", "B", "Up"]},
        "candidates: duplicate candidate 'Up' (positions 0 and 2)",
    ),
    # The same title once cleaned (whitespace, HTML entities), as training cleaned them.
    ({"history": ["h"], "candidates": ["Up", " Up  "]}, "duplicate candidate ' Up  '"),
    ({"history": ["h"], "candidates": ["Amélie", "Am&eacute;lie"]}, "duplicate candidate"),
    ({"history": ["h"], "candidates": ["A"], "domain": "music"}, "domain: Input should be"),
    ({"history": ["h"], "candidates": ["A"], "top_k": 0}, "top_k: Input should be greater than"),
    ({"history": ["h"]}, "candidates: Field required"),
    ({"history": "h", "candidates": ["A"]}, "history: Input should be a valid list"),
    ({"history": ["h"], "candidates": [3]}, "candidates[0]: Input should be a valid string"),
    ({"history": ["h"], "candidates": ["A"], "user": "u"}, "user: Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("body", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_every_validation_error_is_a_clear_422(client, body, message):
    r = client.post("/v1/rank", json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]
    assert "\n" not in r.json()["error"]


def test_malformed_json_is_a_422(client):
    r = client.post(
        "/v1/rank", content=b'{"history": [', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "JSON decode error" in r.json()["error"]


def test_limits_are_configurable(ranker):
    app = create_app(ranker, Limits(max_candidates=2, max_history=1, max_title_chars=5))
    with TestClient(app) as c:
        r = c.post("/v1/rank", json={"history": ["a", "b"], "candidates": ["A", "B", "C"]})
        error = r.json()["error"]
        assert r.status_code == 422
        assert "history: List should have at most 1 item" in error
        assert "candidates: List should have at most 2 items" in error
        r = c.post("/v1/rank", json={"history": ["abcdef"], "candidates": ["A"]})
        assert "history[0]: String should have at most 5 characters" in r.json()["error"]


def test_bodies_over_the_limit_are_413(client):
    big = {"history": ["h" * 150] * 30, "candidates": ["A"]}  # ~4.6 KB > 4096
    r = client.post("/v1/rank", json=big)
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]
    # Chunked upload: no Content-Length, the bytes received are counted.
    chunks = iter([b'{"history": ["' + b"h" * 3000, b"h" * 3000 + b'"], "candidates": ["A"]}'])
    r = client.post("/v1/rank", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post(
        "/v1/rank",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": "999999"},
    )
    assert r.status_code == 413
    # A chunked body under the limit goes through.
    ok = iter([b'{"history": ["Heat"], ', b'"candidates": ["Up"]}'])
    r = client.post("/v1/rank", content=ok, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_healthz_and_docs(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model"] == "tiny"
    schema = client.get("/openapi.json").json()
    assert {"/v1/rank", "/v1/explain", "/v1/recommend", "/healthz"} <= set(schema["paths"])
    assert "X-API-Key" in schema["info"]["description"]
    assert "20 candidates" in schema["info"]["description"]
    # No Swagger UI (it loads from a CDN: blank offline): a plain page pointing at the schema.
    docs = client.get("/docs")
    assert docs.status_code == 200 and 'href="openapi.json"' in docs.text
    assert "docs/usage.md" in docs.text and "X-API-Key" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text and "<script" not in docs.text
    assert client.get("/redoc").status_code == 404


def test_explain_gives_grounded_reasons_and_their_cost(client, ranker):
    """The top candidate's reasons: its /v1/rank score with the whole history, and per history
    title the drop of that score with the title left out, each equal to ranking the smaller
    history alone; the generated text only when asked for."""
    r = client.post("/v1/explain", json={"history": HISTORY, "candidates": CANDIDATES})
    assert r.status_code == 200, r.text
    body = r.json()
    top, why = body["ranked"][0], body["why"]
    assert body["title"] == top["title"] and body["explanation"] is None
    assert why["score"] == pytest.approx(top["score"], abs=1e-5)
    assert sorted(why["versus"]) == sorted(set(CANDIDATES) - {top["title"]})
    assert why["prompts"] == (3 + 1) * 2 * 2 and why["left_out"] == why["history_titles"] == 3
    assert why["cost"].startswith("16 prompts, ")
    drops = [x["drop"] for x in why["reasons"]]
    assert drops == sorted(drops, reverse=True)
    item = CANDIDATES.index(top["title"])
    for reason in why["reasons"]:
        assert HISTORY[reason["position"]] == reason["title"] == reason["normalized_title"]
        rest = [t for t in HISTORY if t != reason["title"]]
        alone = direct(ranker, rest, CANDIDATES)[item]
        assert reason["drop"] == pytest.approx(top["score"] - alone, abs=1e-4)
    assert why["because"].startswith(("because you watched ", "no history title"))
    # One candidate against the ones listed below it; generated text on request.
    single = client.post(
        "/v1/explain",
        json={
            "history": HISTORY,
            "candidate": "Sweet Kiss",
            "versus": ["Up"],
            "generate": True,
            "max_new_tokens": 8,
        },
    )
    assert single.status_code == 200, single.text
    one = single.json()
    assert one["title"] == "Sweet Kiss" and one["ranked"] is None
    assert one["why"]["versus"] == ["Up"] and one["why"]["prompts"] == 4 * 2
    assert isinstance(one["explanation"], str)
    assert len(ranker.tokenizer(one["explanation"])["input_ids"]) <= 8 + 2
    assert direct(ranker, HISTORY, ["Sweet Kiss", "Up"])[0] == pytest.approx(
        one["why"]["score"], abs=1e-5
    )
    generated = client.post(
        "/v1/explain", json={"history": HISTORY, "candidate": "Up", "generate": True}
    ).json()
    assert generated["why"] is None and isinstance(generated["explanation"], str)
    for bad, message in (
        ({"history": HISTORY}, "give either 'candidates' or 'candidate'"),
        ({"history": HISTORY, "candidate": "A", "candidates": ["B"]}, "give either"),
        ({"history": HISTORY, "candidate": "A"}, "'candidate' alone has no score to explain"),
        ({"history": HISTORY, "candidates": ["A", "B"], "versus": ["C"]}, "'versus' goes with"),
        ({"history": HISTORY, "candidate": "A", "versus": ["A"]}, "duplicate candidate 'A'"),
        (
            {"history": HISTORY, "candidate": "A", "generate": True, "max_new_tokens": 10_000},
            "max_new_tokens",
        ),
        ({"history": HISTORY, "candidates": ["A", "A"]}, "duplicate candidate 'A'"),
    ):
        r = client.post("/v1/explain", json=bad)
        assert r.status_code == 422 and message in r.json()["error"], r.text


def test_a_long_history_is_explained_over_its_newest_titles_within_the_request_limit(ranker):
    """Left out: the newest 10 titles at most, fewer where (L + 1) x 2(N-1) prompts would pass
    /v1/rank's largest request; the reasons name the titles as sent, at their place."""
    history = [f"Old Film {i}" for i in range(14)]
    limits = Limits(max_candidates=4)  # 12 prompts a request at most: 2 titles against 2 others
    with TestClient(create_app(ranker, limits)) as c:
        body = c.post(
            "/v1/explain", json={"history": history, "candidates": ["Up", "Jaws", "Heat"]}
        ).json()
    why = body["why"]
    assert why["left_out"] == 2 and why["prompts"] == 3 * 4 <= 4 * 3
    assert {x["position"] for x in why["reasons"]} == {12, 13}
    assert all(x["title"] == history[x["position"]] for x in why["reasons"])
    assert "(the newest 2 of 14)" in why["cost"]
    with TestClient(create_app(ranker)) as c:
        why = c.post(
            "/v1/explain", json={"history": history, "candidate": "Up", "versus": ["Jaws"]}
        ).json()["why"]
    assert why["left_out"] == 10 and {x["position"] for x in why["reasons"]} == set(range(4, 14))


def test_concurrent_requests_are_batched_and_equal_unbatched_scores(client, ranker):
    users = [
        (HISTORY[: 1 + i % 3], [f"{c} {i}" for c in CANDIDATES[: 2 + i % 2]]) for i in range(12)
    ]
    before = client.get("/healthz").json()
    results: dict[int, dict] = {}

    def ask(i: int) -> None:
        history, cands = users[i]
        results[i] = client.post("/v1/rank", json={"history": history, "candidates": cands}).json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (history, cands) in enumerate(users):
        got = {x["title"]: x["score"] for x in results[i]["ranked"]}
        for title, score in zip(cands, direct(ranker, history, cands), strict=True):
            assert got[title] == pytest.approx(score, abs=1e-4)
    after = client.get("/healthz").json()
    assert after["requests"] - before["requests"] == len(users)
    assert after["batches"] - before["batches"] < len(users)  # some requests shared a forward
    # The batcher records how many requests each scoring call held: some held several.
    assert max(map(int, after["batch_sizes"])) > 1


def test_no_batching_scores_one_request_per_call(ranker):
    with TestClient(create_app(ranker, max_batch=1)) as c:
        for _ in range(3):
            assert (
                c.post("/v1/rank", json={"history": HISTORY, "candidates": CANDIDATES}).status_code
                == 200
            )
        health = c.get("/healthz").json()
        assert health["batches"] == health["requests"] == 3


def test_titles_come_back_as_sent_beside_what_the_model_read(client):
    """`title` is the caller's string, byte for byte; `normalized_title` the one the model scored
    (cleaned as the training titles were)."""
    cands = [" Up  ", "Am&eacute;lie", "Ame\u0301lie (NFD)", "Jaws"]
    r = client.post("/v1/rank", json={"history": HISTORY, "candidates": cands})
    assert r.status_code == 200, r.text
    pairs = {x["title"]: x["normalized_title"] for x in r.json()["ranked"]}
    assert pairs == {
        " Up  ": "Up",
        "Am&eacute;lie": "Am\u00e9lie",
        "Ame\u0301lie (NFD)": "Ame\u0301lie (NFD)",
        "Jaws": "Jaws",
    }
    r = client.post("/v1/explain", json={"history": HISTORY, "candidates": cands[:2]})
    assert r.status_code == 200, r.text
    ranked = r.json()["ranked"]
    assert {x["title"]: x["normalized_title"] for x in ranked} == {
        " Up  ": "Up",
        cands[1]: "Am\u00e9lie",
    }


def test_echoed_values_are_cut_in_422s(ranker):
    """A 60 KB title (under the 64 KiB body limit) gets a short 422, not its 60 KB back: echoed
    strings, lists and keys are cut to 200 characters with their size."""
    with TestClient(create_app(ranker)) as c:
        r = c.post("/v1/rank", json={"history": ["x" * 60_000], "candidates": ["A"]})
        assert r.status_code == 422 and len(r.content) < 2_000, len(r.content)
        assert "history[0]: String should have at most 200 characters" in r.json()["error"]
        assert r.json()["detail"][0]["input"] == "x" * 200 + "... (60,000 characters)"

        r = c.post("/v1/rank", json={"history": ["h"] * 5_000, "candidates": ["A"]})
        assert r.status_code == 422 and len(r.content) < 2_000, len(r.content)
        echoed = r.json()["detail"][0]["input"]
        assert echoed.startswith('["h", "h"') and echoed.endswith(
            "... (5,000 items, 25,000 characters of JSON)"
        )

        key = "k" * 50_000
        r = c.post("/v1/rank", json={"history": ["h"], "candidates": ["A"], key: 1})
        assert r.status_code == 422 and len(r.content) < 2_000, len(r.content)
        assert r.json()["error"].startswith("k" * 200 + "... (50,000 characters): Extra inputs")

        # Many bad titles: the first 20 errors are listed, the rest counted.
        r = c.post("/v1/rank", json={"history": [1] * 50, "candidates": ["A"]})
        assert r.status_code == 422 and len(r.json()["detail"]) == 20
        assert r.json()["error"].endswith("; and 30 more")


def test_a_candidate_already_in_the_history_is_a_422_naming_it(client):
    for path in ("/v1/rank", "/v1/explain"):
        r = client.post(path, json={"history": ["Heat", " Up "], "candidates": ["Jaws", "Up"]})
        assert r.status_code == 422, r.text
        assert r.json()["error"] == (
            "field 'candidates': candidate 'Up' is already in the history (history title 1); "
            "rank only titles the user has not seen"
        )


# ---------------------------------------------------------------- /v1/recommend

SHELF = [f"Shelf Title {i}" for i in range(12)]


@pytest.fixture(scope="module")
def recommender():
    items = tuple(CatalogueItem(t, str(i), 12 - i) for i, t in enumerate(SHELF))
    popularity = Popularity(Counter({item.title: item.count for item in items}))
    return Recommender(
        Catalogue(items, "shelf"), TitleNormalization(), "popularity", {"popularity": popularity}
    )


@pytest.fixture(scope="module")
def shelf(ranker, recommender):
    with TestClient(create_app(ranker, recommender=recommender)) as c:
        yield c


def test_recommend_happy_path(shelf, ranker, recommender):
    body = {"history": [*HISTORY, "Shelf Title 0"], "top_k": 3, "retrieve": 5}
    r = shelf.post("/v1/recommend", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["prompts"] == 2 * 2 * 4 - 2 and doc["candidates"] == 5 and doc["pivots"] == 2
    assert doc["rerank"] == "pivot" and doc["fusion"] == "rrf" and doc["retriever"] == "popularity"
    assert doc["history_matched"] == 1 and doc["history_titles"] == 4
    assert doc["catalogue_titles"] == 12 and doc["model"] == "tiny" and doc["elapsed_ms"] > 0
    items = doc["recommended"]
    assert [it["rank"] for it in items] == [1, 2, 3]
    assert all(it["title"] in SHELF[1:6] for it in items)  # the seen Shelf Title 0 left out
    assert all(it["item_id"] == it["title"].split()[-1] for it in items)
    expected = recommender.finish(recommender.plan(body["history"], k=3, m=5), ranker)
    for got, want in zip(items, expected["recommended"], strict=True):
        assert got["title"] == want["title"] and got["retriever_rank"] == want["retriever_rank"]
        assert got["llm_score"] == pytest.approx(want["llm_score"], abs=1e-5)
    all_pairs = shelf.post("/v1/recommend", json={**body, "rerank": "all-pairs"}).json()
    assert all_pairs["prompts"] == 20 and all_pairs["pivots"] is None
    health = shelf.get("/healthz").json()
    assert health["recommendations"] >= 2
    assert health["requests"] >= 2  # the reranks went through the model queue


def test_concurrent_recommends_share_forward_passes_and_match_one_at_a_time(ranker, recommender):
    """/v1/recommend's reranks wait in the same queue as /v1/rank: those waiting together (each
    one prompt tree: 3 candidates, 1 pivot) are scored in one call, with the scores each gets
    alone."""
    app = create_app(ranker, max_batch=8, batch_wait_ms=300, recommender=recommender)
    histories = [[*HISTORY[: 1 + i % 3], f"Shelf Title {i}"] for i in range(4)]
    docs: dict[int, dict] = {}
    with TestClient(app) as c:

        def ask(i: int) -> None:
            body = {"history": histories[i], "top_k": 2, "retrieve": 3, "pivots": 1}
            docs[i] = c.post("/v1/recommend", json=body).json()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(histories))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        health = c.get("/healthz").json()
    for i, history in enumerate(histories):
        alone = recommender.finish(recommender.plan(history, k=2, m=3, pivots=1), ranker)
        for got, want in zip(docs[i]["recommended"], alone["recommended"], strict=True):
            assert got["title"] == want["title"]
            # log-prob margins; padding in a batch moves fp32 sums by ~1e-5
            assert got["llm_score"] == pytest.approx(want["llm_score"], abs=1e-4)
    assert health["requests"] == len(histories) and health["batches"] < len(histories)
    assert max(map(int, health["batch_sizes"])) > 1


def test_recommend_for_an_empty_history_is_popularity_said(shelf):
    doc = shelf.post("/v1/recommend", json={"history": [], "top_k": 2}).json()
    assert [it["title"] for it in doc["recommended"]] == SHELF[:2]
    assert doc["rerank"] == "none" and doc["prompts"] == 0 and doc["fusion"] == "none"
    assert any("empty history" in note for note in doc["notes"])


RECOMMEND_REFUSED = [
    ({"history": ["h"], "top_k": 5, "retrieve": 3}, "retrieve=3 is under top_k=5"),
    (
        {"history": ["h"], "retrieve": 40, "pivots": 6},
        "rerank pivot of 40 candidates with 6 pivots is 438 prompts, over the 380",
    ),
    (
        {"history": ["h"], "retrieve": 21, "rerank": "all-pairs"},
        "rerank all-pairs of 21 candidates is 420 prompts",
    ),
    ({"history": ["h"], "top_k": 41}, "top_k: Input should be less than or equal to 40"),
    ({"history": ["h"], "retrieve": 41}, "retrieve: Input should be less than or equal to 40"),
    ({"history": ["h"], "rerank": "bogus"}, "rerank: Input should be 'pivot', 'all-pairs'"),
    ({"history": ["h", " "]}, "history[1]: title is empty"),
    ({"history": ["h"], "user": "u"}, "user: Extra inputs are not permitted"),
    ({"top_k": 3}, "history: Field required"),
    ({"history": ["h"], "top_k": 20}, "top-K 20 is more than the 12 catalogue titles left"),
]


@pytest.mark.parametrize(
    ("body", "message"), RECOMMEND_REFUSED, ids=[m for _, m in RECOMMEND_REFUSED]
)
def test_every_recommend_refusal_is_a_clear_422(shelf, body, message):
    r = shelf.post("/v1/recommend", json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["error"] and "\n" not in r.json()["error"]


def test_recommend_without_a_catalogue_is_a_404_saying_so(client):
    r = client.post("/v1/recommend", json={"history": ["Heat"]})
    assert r.status_code == 404 and "no catalogue to recommend from" in r.json()["error"]


def test_serve_builds_its_recommender_from_the_options(tmp_path, capsys):
    def args(**kw):
        base = {"model": "builtin:tiny-qwen3", "catalogue": None, "retriever": None}
        return argparse.Namespace(**{**base, "no_hybrid": False, **kw})

    assert serve_recommender(args()) is None
    assert "/v1/recommend off: --model builtin:tiny-qwen3: no catalogue" in capsys.readouterr().err
    path = tmp_path / "c.jsonl"
    path.write_text('{"title": "Up", "count": 2}\n{"title": "Heat", "count": 5}\n')
    rec = serve_recommender(args(catalogue=str(path)))
    assert rec.retriever == "popularity" and rec.catalogue.titles == ["Up", "Heat"]
    assert rec.plan([], k=1).retrieved.indices == [1]
    path.write_text('{"title": "Up"}\n{"title": "Up"}\n')
    with pytest.raises(DataError, match="line 2, field 'title': duplicate title 'Up'"):
        serve_recommender(args(catalogue=str(path)))


def test_the_page_has_a_catalogue_mode(client):
    """Its script is driven in Chromium by test_page.py where that is installed; here: served."""
    page = client.get("/").text
    assert '<button id="recommend">Recommend from the catalogue</button>' in page
    assert 'post("/v1/recommend"' in page and "retriever_rank" in page


def test_a_request_over_several_prompt_trees_is_scored_alone(ranker):
    """A job whose prompts fill several trees, its history repeated in each, is scored in a call
    of its own (ranking.goes_alone: batched with others it gains nothing and waits for them);
    the one-tree jobs queued behind it still share a call. Answers equal one-at-a-time."""
    long = ranker.request([f"Long Movie Title Number {i}" for i in range(12)], CANDIDATES)
    short = [ranker.request(HISTORY[:1], [f"Film {i}", f"Other film {i}"]) for i in range(2)]
    jobs = [(long, ordered_pairs(3)), *((r, ordered_pairs(2)) for r in short)]
    encoder = ranker.encoder
    assert [goes_alone(encoder.groups(r, 200, pairs)) for r, pairs in jobs] == [True, False, False]

    async def scenario():
        batcher = Batcher(ranker, max_batch=8, batch_wait_ms=300)
        batcher.start()
        got = await asyncio.gather(*(batcher.answers(r, pairs, 200) for r, pairs in jobs))
        await batcher.stop()
        return got, batcher.sizes

    got, sizes = asyncio.run(scenario())
    assert sizes == {1: 1, 2: 1}  # the long one alone, then the two short ones together
    for (request, pairs), (first, second) in zip(jobs, got, strict=True):
        ((want_first, want_second),) = ranker.answers([request], [pairs], max_group_tokens=200)
        assert torch.allclose(first, want_first, atol=1e-4)
        assert torch.allclose(second, want_second, atol=1e-4)
