"""A real server on 127.0.0.1 (uvicorn, real sockets): requests of clients that hung up are
dropped before they reach the model; a full queue, and a request that waited past its deadline,
answer 503 with Retry-After."""

import asyncio
import contextlib
import http.client
import json
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn

from dmporec.baselines import Popularity
from dmporec.catalogue import Catalogue, CatalogueItem
from dmporec.ranker import Ranker
from dmporec.records import TitleNormalization
from dmporec.rerank import Recommender
from dmporec.serve import Limits, create_app

HISTORY = ["Heat", "Up", "Jaws", "Alien", "Fargo"]
CANDIDATES = [f"Candidate film {i}" for i in range(20)]
BODY = json.dumps({"history": HISTORY, "candidates": CANDIDATES}).encode()


@pytest.fixture(scope="module")
def ranker(tiny, tiny_cfg):
    return Ranker.create(tiny[0], tiny[1], tiny_cfg, "tiny")


@pytest.fixture
def server(ranker):
    app = create_app(ranker, Limits(), max_batch=8, batch_wait_ms=5)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    yield app, sock.getsockname()[1]
    srv.should_exit = True
    thread.join(10)


def _post(port, timeout=60.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/rank", BODY, {"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def _abandon(port):
    with contextlib.suppress(TimeoutError, OSError):
        _post(port, timeout=0.05)  # hang up after 50 ms


def _timed(port):
    start = time.perf_counter()
    assert _post(port) == 200
    return time.perf_counter() - start


def test_abandoned_requests_are_dropped_and_the_next_one_is_answered_in_time(server):
    app, port = server
    _timed(port)  # warm-up
    usual = min(_timed(port) for _ in range(3))
    batcher = app.state.batcher
    scored = batcher.requests
    with ThreadPoolExecutor(50) as pool:
        list(pool.map(_abandon, [port] * 50))
    time.sleep(0.3)  # the server notices the hang-ups
    latency = _timed(port)
    abandoned_scored = batcher.requests - scored - 1
    print(
        f"\nusual latency {usual:.2f} s; after 50 abandoned requests {latency:.2f} s; "
        f"{abandoned_scored} of them scored, {batcher.dropped} dropped"
    )
    # At most the batch already at the model when its clients left is scored (max_batch 8);
    # without dropping, all 50 were, and the next request waited 50x the usual time. The next
    # request waits for those scored ones only (a batch costs about its requests' usual time).
    assert abandoned_scored <= 8 and batcher.dropped >= 42
    assert latency < (abandoned_scored + 1) * usual * 1.5 + 2.0


class Slow:
    """The ranker, each scoring call `seconds` slower."""

    def __init__(self, ranker, seconds):
        self.ranker, self.seconds = ranker, seconds

    def __getattr__(self, name):
        return getattr(self.ranker, name)

    def answers(self, *args, **kwargs):
        time.sleep(self.seconds)
        return self.ranker.answers(*args, **kwargs)


def test_a_full_queue_answers_503_with_retry_after(ranker):
    app = create_app(Slow(ranker, 2.0), Limits(), max_batch=1, batch_wait_ms=0, max_queue=1)
    body = {"history": HISTORY, "candidates": CANDIDATES[:3]}

    async def scenario():
        app.state.batcher.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = asyncio.create_task(client.post("/v1/rank", json=body))
            await asyncio.sleep(0.7)  # the worker has taken it
            second = asyncio.create_task(client.post("/v1/rank", json=body))
            await asyncio.sleep(0.7)  # it waits in the queue
            third = await client.post("/v1/rank", json=body)
            results = await first, await second, third
        await app.state.batcher.stop()
        return results

    first, second, third = asyncio.run(scenario())
    assert first.status_code == second.status_code == 200
    assert third.status_code == 503 and "busy" in third.json()["error"]
    assert int(third.headers["Retry-After"]) >= 1


def _shelf():
    titles = [f"Shelf Title {i}" for i in range(8)]
    items = tuple(CatalogueItem(t, str(i), 8 - i) for i, t in enumerate(titles))
    popularity = Popularity(Counter({item.title: item.count for item in items}))
    return Recommender(
        Catalogue(items, "shelf"), TitleNormalization(), "popularity", {"popularity": popularity}
    )


def test_a_request_waiting_past_its_deadline_gets_503_and_is_not_scored(ranker):
    """The model is busy with a slow request (1.5 s); one /v1/rank and one /v1/recommend behind it
    wait 0.4 s, their deadline: both get 503 with Retry-After and a one-line error at once, and
    neither reaches the model. Before deadlines they waited, however long the queue."""
    app = create_app(
        Slow(ranker, 1.5),
        Limits(),
        max_batch=1,
        batch_wait_ms=0,
        deadline_s=0.4,
        recommender=_shelf(),
    )
    body = {"history": HISTORY, "candidates": CANDIDATES[:3]}

    async def scenario():
        app.state.batcher.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = asyncio.create_task(client.post("/v1/rank", json=body))
            await asyncio.sleep(0.2)  # the worker has taken it
            start = time.perf_counter()
            late = await asyncio.gather(
                client.post("/v1/rank", json=body),
                client.post("/v1/recommend", json={"history": HISTORY, "top_k": 2, "retrieve": 3}),
            )
            waited = time.perf_counter() - start
            first = await first
            health = (await client.get("/healthz")).json()
        await app.state.batcher.stop()
        return first, late, waited, health

    first, late, waited, health = asyncio.run(scenario())
    assert first.status_code == 200
    for r in late:
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
        error = r.json()["error"]
        assert "waited 0.4 s for the model" in error and "\n" not in error
    assert waited < 1.2  # told at the deadline, not when the slow request was done (1.5 s)
    assert health["expired"] == 2 and health["requests"] == 1  # neither late one was scored
