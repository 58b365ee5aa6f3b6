"""HTTP service over a loaded Ranker (FastAPI): POST /v1/rank, POST /v1/recommend, POST
/v1/explain, GET /healthz, and GET / (a page to try it: history and candidates in, ranked
candidates with score bars and the top one's explanation out, or the history alone in and the
top 10 of the catalogue out; it calls the same endpoints).

/v1/recommend answers top-K from the catalogue (dmporec.rerank: retrieve M, rerank with the
model, fuse) for a history alone: the run's catalogue (RUN/catalogue.jsonl, built on first use),
an export's, or --catalogue FILE; without any, it answers 404 saying so. A request may cost at
most the prompts of /v1/rank's largest (N(N-1) for N = the candidate limit).

`dmporec serve --model RUN_DIR [--host 127.0.0.1] [--port 8000] [--max-batch 8] [--batch-wait-ms 5]
[--max-queue 64] [--deadline-s 30] [--catalogue FILE] [--retriever NAME] [--no-hybrid]`
loads the base model and merges the run's adapters once, then serves. The API's schema is at
/openapi.json; /docs is a plain page pointing there and to docs/usage.md (no Swagger UI: it
loads from a CDN, which an offline machine cannot reach).

Batching (dmporec.batching): the model work of /v1/rank, /v1/explain's ranking and
/v1/recommend's rerank waits in one queue; requests waiting together are scored together, up to
`--max-batch` per forward pass (and at most the prompts of the largest allowed request) after
waiting at most `--batch-wait-ms` for company; `--no-batching` scores one at a time. A request
whose client hangs up while it waits is dropped before it reaches the model. 503 with
Retry-After (the queued prompts times the recent seconds per prompt) and a one-line `error`: when
`--max-queue` requests already wait, and for a request that has waited `--deadline-s` seconds
without reaching the model (it is not scored).

Limits (numbers below): history length, candidate count, title length, blank and duplicate
titles are refused with 422 and a one-line `error` naming the field (values echoed in it are cut
to 200 characters), and so is a /v1/rank candidate already in the history; a body over the size
limit with 413. Each ranked item carries `title`, the
string sent, and `normalized_title`, what the model read (HTML entities decoded, whitespace
collapsed, as the run's training data was cleaned).

API key: with --api-key or $DMPOREC_API_KEY set, /v1/ needs `Authorization: Bearer KEY` or
`X-API-Key: KEY` (401 otherwise); /, /healthz, /docs and /openapi.json stay open.
"""

# No `from __future__ import annotations`: FastAPI reads the request models, which are built
# per app (their limits are the app's), from the endpoint annotations at runtime.

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.requests import Request

from dmporec.batching import DEADLINE_S, Batcher, QueuedRanker, QueueFull, unless_disconnected
from dmporec.catalogue import RETRIEVERS
from dmporec.explain import leave_one_out, titles_within
from dmporec.ranker import Ranker, clean_request
from dmporec.ranking import check_unseen, top_k
from dmporec.records import DataError
from dmporec.rerank import Recommender
from dmporec.serve_middleware import API_KEY_ENV, ApiKey, BodyLimit
from dmporec.serve_models import (
    ExplainResponse,
    Health,
    Limits,
    RankResponse,
    RecommendResponse,
    ranked_response,
    request_models,
    validation_error,
    why_response,
)

API_DESCRIPTION = (
    "Limits per request: {max_history} history titles, {max_candidates} candidates, "
    "{max_title_chars} characters a title (422 above, naming the field); bodies over "
    "{max_body_bytes} bytes get 413. With an API key set, /v1/ needs `Authorization: Bearer KEY` "
    "or `X-API-Key: KEY`. Ranked items carry `title` as sent and `normalized_title` as the model "
    "read it. /v1/recommend returns top-K from the catalogue (at most {max_top_k}, from at most "
    "{max_retrieve} reranked candidates and {max_prompts} prompts). Guide: docs/usage.md in the "
    "dmporec repository."
)

DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dmporec API</title></head>
<body style="font-family: sans-serif; max-width: 46em; margin: 2em auto">
<h1>dmporec API</h1>
<p>The OpenAPI schema is at <a href="openapi.json">/openapi.json</a> (load it into any OpenAPI
viewer); the guide is docs/usage.md in the dmporec repository. This server loads nothing from
elsewhere, so no Swagger UI here.</p>
<ul>
<li><code>POST /v1/rank</code> <code>{{"history": [titles], "candidates": [titles], "top_k": K,
"domain": "movies"}}</code>: candidates best first, each with <code>title</code> (as sent),
<code>normalized_title</code> (as the model read it) and <code>score</code>.</li>
<li><code>POST /v1/recommend</code> <code>{{"history": [titles], "top_k": 10, "retrieve": 20,
"rerank": "pivot", "pivots": 2}}</code>: top-K from the catalogue, each item with its
<code>retriever_rank</code>, <code>llm_score</code> and <code>fused_score</code>.</li>
<li><code>POST /v1/explain</code> <code>{{"history": [...], "candidates": [...]}}</code> or
<code>{{"history": [...], "candidate": title, "versus": [titles]}}</code>: why the top one (or
the given one): the history titles whose removal lowers its score most, with their drops and the
cost; <code>"generate": true</code> adds the model's generated text.</li>
<li><code>GET /healthz</code>; <code>GET /</code>: a page to try it.</li>
</ul>
<p>Limits: {max_history} history titles, {max_candidates} candidates, {max_title_chars}
characters a title (422 above), bodies up to {max_body_bytes} bytes (413 above).
With an API key set, <code>/v1/</code> needs <code>Authorization: Bearer KEY</code> or
<code>X-API-Key: KEY</code>.</p>
</body></html>
"""


def create_app(
    ranker: Ranker,
    limits: Limits | None = None,
    *,
    max_batch: int = 8,
    batch_wait_ms: float = 5.0,
    max_queue: int = 64,
    deadline_s: float = DEADLINE_S,
    api_key: str | None = None,
    recommender: Recommender | None = None,
) -> FastAPI:
    """The service around an already loaded ranker (tests inject the tiny model here);
    /v1/recommend needs a `recommender` (its catalogue and retriever)."""
    limits = limits or Limits()
    if max_batch < 1 or batch_wait_ms < 0 or max_queue < 1 or not deadline_s > 0:
        raise ValueError(
            "max_batch and max_queue must be >= 1, batch_wait_ms >= 0 and deadline_s > 0"
        )
    batcher = Batcher(
        ranker,
        max_batch,
        batch_wait_ms,
        max_queue,
        deadline_s=deadline_s,
        max_prompts=limits.max_prompts,
    )
    RankBody, ExplainBody, RecommendBody = request_models(limits, ranker)
    recommendations = Counter[str]()  # /v1/recommend requests answered

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="dmporec",
        summary="Rank candidate items for a user's history with a DMPO-trained LLM.",
        description=API_DESCRIPTION.format(**limits.model_dump(), max_prompts=limits.max_prompts),
        lifespan=lifespan,
        # FastAPI's Swagger UI and ReDoc pages load their scripts from a CDN: blank offline.
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    if api_key:
        app.add_middleware(ApiKey, key=api_key)
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error(exc.errors()), status_code=422)

    @app.exception_handler(QueueFull)
    async def busy(request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)}
        )

    @app.exception_handler(DataError)
    async def bad_data(request: Request, exc: DataError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    page = files("dmporec").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        """A page to try the model: paste a history and candidates, see them ranked."""
        return HTMLResponse(page)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Where the API is described, with nothing loaded from elsewhere."""
        return HTMLResponse(DOCS_PAGE.format(**limits.model_dump()))

    @app.get("/healthz")
    async def healthz() -> Health:
        return Health(
            status="ok",
            model=ranker.name,
            batches=batcher.batches,
            requests=batcher.requests,
            batch_sizes={str(k): v for k, v in sorted(batcher.sizes.items())},
            dropped=batcher.dropped,
            expired=batcher.expired,
            recommendations=recommendations["answered"],
        )

    @app.post("/v1/rank", response_model=RankResponse)
    async def rank(body: RankBody, http: Request) -> Any:
        """Rank the candidates for the history: best first, with scores in [0, 1]."""
        start = time.perf_counter()
        # Before the history is cut to data.max_prompt_tokens: a seen title anywhere in it counts.
        check_unseen(clean_request(body.history, body.candidates, body.domain, ranker.norm))
        # Cleaning and bounding tokenize: off the event loop.
        request = await asyncio.to_thread(
            ranker.request, body.history, body.candidates, body.domain
        )
        scores = await unless_disconnected(http, batcher.rank(request))
        if scores is None:  # nobody is listening; 499 as nginx logs it
            return Response(status_code=499)
        return RankResponse(
            ranked=ranked_response(body.candidates, scores, ranker, body.top_k),
            model=ranker.name,
            elapsed_ms=round((time.perf_counter() - start) * 1000, 2),
        )

    @app.post("/v1/explain", response_model=ExplainResponse)
    async def explain(body: ExplainBody, http: Request) -> Any:
        """Why the top candidate (or the given one, against `versus`): the history titles whose
        removal lowers its score most (dmporec.explain.leave_one_out), with the cost; the
        model's generated text only with `generate: true`."""
        start = time.perf_counter()
        candidates = body.candidates or [body.candidate, *(body.versus or [])]
        # Before the history is cut to data.max_prompt_tokens: a seen title anywhere in it counts.
        check_unseen(clean_request(body.history, candidates, body.domain, ranker.norm))
        request = await asyncio.to_thread(ranker.request, body.history, candidates, body.domain)
        ranked, item = None, 0
        if body.candidates is not None:
            scores = await unless_disconnected(http, batcher.rank(request))
            if scores is None:
                return Response(status_code=499)
            ranked = ranked_response(body.candidates, scores, ranker)
            item = top_k(candidates, scores, 1)[0][0]
        why = None
        if len(candidates) > 1:
            # Its model calls wait in the batcher's queue, as /v1/recommend's do; the titles
            # left out are capped so that they cost at most /v1/rank's largest request.
            queued = QueuedRanker(batcher, asyncio.get_running_loop())
            max_titles = titles_within(len(candidates), limits.max_prompts)
            work = asyncio.to_thread(leave_one_out, queued, request, item, max_titles)
            explanation = await unless_disconnected(http, work)
            if explanation is None:
                queued.cancel()
                return Response(status_code=499)
            versus = [c for i, c in enumerate(candidates) if i != item]
            why = why_response(explanation, body.history, versus, ranker, request.wording)
        text = None
        if body.generate:
            text = await asyncio.to_thread(
                ranker.generate_explanation,
                body.history,
                candidates[item],
                body.domain,
                body.max_new_tokens,
            )
        return ExplainResponse(
            title=candidates[item],
            why=why,
            explanation=text,
            ranked=ranked,
            model=ranker.name,
            elapsed_ms=round((time.perf_counter() - start) * 1000, 2),
        )

    @app.post("/v1/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendBody, http: Request) -> Any:
        """Top-K from the catalogue for the history: retrieve M candidates, rerank them with the
        model, fuse (each item says what every stage gave it)."""
        start = time.perf_counter()
        if recommender is None:
            return JSONResponse(
                {
                    "error": "this server has no catalogue to recommend from: start it with "
                    "--model RUN_DIR (or an export with catalogue.jsonl) or --catalogue FILE"
                },
                status_code=404,
            )
        plan = await asyncio.to_thread(
            recommender.plan,
            body.history,
            k=body.top_k,
            m=body.retrieve,
            rerank=body.rerank,
            pivots=body.pivots,
            domain=body.domain,
        )
        # The rerank's model calls wait in the batcher's queue (its deadline, its 503s), and
        # share forward passes with other requests waiting there.
        queued = QueuedRanker(batcher, asyncio.get_running_loop())
        doc = await unless_disconnected(
            http, asyncio.to_thread(recommender.finish, plan, queued, use_hybrid=body.hybrid)
        )
        if doc is None:
            queued.cancel()
            return Response(status_code=499)
        elapsed = time.perf_counter() - start
        recommendations["answered"] += 1
        return RecommendResponse(**doc, model=ranker.name, elapsed_ms=round(elapsed * 1000, 2))

    return app


def run_serve(args: argparse.Namespace) -> int:
    """The `serve` command: load the model once, then serve until interrupted."""
    import uvicorn

    from dmporec.ranker import load_ranker

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"dmporec: warning: serving on {args.host} without an API key: anyone who can reach "
            f"it can use it (set --api-key or {API_KEY_ENV})",
            file=sys.stderr,
        )
    recommender = serve_recommender(args)
    ranker = load_ranker(args.model)
    max_batch = 1 if args.no_batching else args.max_batch
    app = create_app(
        ranker,
        max_batch=max_batch,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue,
        deadline_s=args.deadline_s,
        api_key=api_key,
        recommender=recommender,
    )
    print(
        f"dmporec: serving {ranker.name} on http://{args.host}:{args.port} "
        f"(a page at /, the API schema at /openapi.json, batches of up to {max_batch})",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def serve_recommender(args: argparse.Namespace) -> Recommender | None:
    """The Recommender behind /v1/recommend, or None (said) where --model has no catalogue and
    --catalogue gives none; a bad catalogue file or option stops the server before it starts."""
    from dmporec.config import ConfigError
    from dmporec.ranker import title_normalization
    from dmporec.rerank import load_recommender

    norm = title_normalization(args.model)
    try:
        return load_recommender(
            args.model,
            norm,
            catalogue_file=args.catalogue,
            retriever=args.retriever,
            use_hybrid=not args.no_hybrid,
        )
    except ConfigError as e:
        if args.catalogue is not None or args.retriever is not None:
            raise
        print(f"dmporec: /v1/recommend off: {e}", file=sys.stderr)
        return None


def _at_least(low: float, kind: type = int) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= low:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="run dir, stage dir, model dir or model name"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--api-key",
        help="require this key on /v1/ (Authorization: Bearer KEY or X-API-Key: KEY); "
        "set one whenever --host is not 127.0.0.1. A key given here is visible to every user "
        f"of the machine (ps, shell history): prefer the environment variable {API_KEY_ENV}, "
        "which is read when --api-key is not given",
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--max-batch",
        type=_at_least(1),
        default=8,
        help="ranking requests scored together (default 8)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=_at_least(0, float),
        default=5.0,
        help="how long the first request waits for others to join its batch (default 5)",
    )
    parser.add_argument(
        "--max-queue",
        type=_at_least(1),
        default=64,
        help="requests that may wait for the model; one more gets 503 with Retry-After (default 64)",
    )
    parser.add_argument(
        "--deadline-s",
        type=_at_least(0.1, float),
        default=DEADLINE_S,
        help="a request that has waited this long for the model gets 503 with Retry-After "
        f"instead of waiting on (default {DEADLINE_S:g})",
    )
    parser.add_argument(
        "--no-batching", action="store_true", help="score one request at a time (max-batch 1)"
    )
    parser.add_argument(
        "--catalogue",
        metavar="FILE.jsonl",
        help="/v1/recommend's catalogue instead of the run's (RUN/catalogue.jsonl): JSON lines "
        '{"title": ..., "item_id": ...}',
    )
    parser.add_argument(
        "--retriever",
        choices=RETRIEVERS,
        help="/v1/recommend's retriever (default bpr-mf where the run's training data is at hand, "
        "else popularity; see `dmporec recommend --help`)",
    )
    parser.add_argument(
        "--no-hybrid",
        action="store_true",
        help="/v1/recommend fuses by reciprocal rank even where the run has a fitted hybrid",
    )
    limits = Limits()
    parser.epilog = (
        f"limits per request: {limits.max_history} history titles, {limits.max_candidates} "
        f"candidates, {limits.max_title_chars} characters a title\n"
        f"  (422 above, naming the field); bodies over {limits.max_body_bytes:,} bytes get 413\n"
        f"API key: --api-key or ${API_KEY_ENV}; clients send Authorization: Bearer KEY\n"
        "  or X-API-Key: KEY\n"
        "API schema: GET /openapi.json; guide: docs/usage.md (/docs is a plain page pointing\n"
        "  there: Swagger UI would load from a CDN)"
    )
