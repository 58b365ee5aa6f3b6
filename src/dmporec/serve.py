"""HTTP service over a loaded Ranker (FastAPI): POST /v1/rank, POST /v1/recommend, POST
/v1/explain, GET /healthz, and GET / (a page to try it: history and candidates in, ranked
candidates with score bars and the top one's explanation out, or the history alone in and the
top 10 of the catalogue out; it calls the same endpoints).

/v1/recommend answers top-K from the catalogue (dmporec.rerank: retrieve M, rerank with the
model, fuse) for a history alone: the run's catalogue (RUN/catalogue.jsonl, built on first use),
an export's, or --catalogue FILE; without any, it answers 404 saying so. A request may cost at
most the prompts of /v1/rank's largest (N(N-1) for N = the candidate limit).

`dmporec serve --model RUN_DIR [--host 127.0.0.1] [--port 8000] [--max-batch 8] [--batch-wait-ms 5]
[--catalogue FILE] [--retriever NAME] [--no-hybrid]`
loads the base model and merges the run's adapters once, then serves. The API's schema is at
/openapi.json; /docs is a plain page pointing there and to docs/usage.md (no Swagger UI: it
loads from a CDN, which an offline machine cannot reach).

Batching (dmporec.batching): concurrent /v1/rank requests are scored together, up to
`--max-batch` per forward pass after waiting at most `--batch-wait-ms` for company;
`--no-batching` scores one at a time. A request whose client hangs up while it waits is dropped
before it reaches the model; at most `--max-queue` requests wait, and one more gets 503 with a
Retry-After estimated from the recent batch times.

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
import hmac
import json
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from importlib.resources import files
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    model_validator,
)
from starlette.requests import Request

from dmporec.batching import Batcher, QueueFull, unless_disconnected
from dmporec.catalogue import RETRIEVERS
from dmporec.ranking import check_unseen
from dmporec.recommend import EXPLAIN_MAX_NEW_TOKENS, Ranker, clean_request, ranked_items
from dmporec.records import DataError, normalize_title
from dmporec.rerank import PIVOTS, RERANKS, RETRIEVE, TOP_K, Recommender, rerank_prompts

Domain = Literal["movies", "games", "books"]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Limits(BaseModel):
    """What one request may ask for; larger requests are refused, not truncated."""

    model_config = ConfigDict(extra="forbid")
    max_history: int = Field(50, ge=1, description="Titles in a history.")
    max_candidates: int = Field(
        20, ge=1, description="Candidates per request (cost grows as N(N-1) prompts)."
    )
    max_title_chars: int = Field(200, ge=1, description="Characters in one title.")
    max_body_bytes: int = Field(64 * 1024, ge=1, description="Request body size (413 above).")
    max_new_tokens: int = Field(
        EXPLAIN_MAX_NEW_TOKENS, ge=1, description="Longest explanation, in tokens."
    )
    max_top_k: int = Field(40, ge=1, description="Items one /v1/recommend returns.")
    max_retrieve: int = Field(
        40, ge=1, description="Candidates one /v1/recommend reranks (its `retrieve`, M)."
    )

    @property
    def max_prompts(self) -> int:
        """The prompts a /v1/recommend may cost: those of /v1/rank's largest request."""
        return self.max_candidates * (self.max_candidates - 1)


class RankedItem(BaseModel):
    rank: int
    title: str = Field(description="The candidate as sent, character for character.")
    normalized_title: str = Field(
        description="The candidate as the model read it: cleaned as the run's training titles "
        "were (HTML entities decoded, whitespace collapsed; data.title_normalization)."
    )
    score: float = Field(description="Mean probability of being ranked first, over opponents.")


class RankResponse(BaseModel):
    ranked: list[RankedItem]
    model: str
    elapsed_ms: float


class ExplainResponse(BaseModel):
    title: str = Field(description="The candidate explained: the given one or the top ranked.")
    explanation: str
    ranked: list[RankedItem] | None = Field(None, description="The ranking, if one was needed.")
    model: str
    elapsed_ms: float


class RecommendedItem(BaseModel):
    rank: int = Field(
        description="The final order (by fused_score; by the retriever without a rerank)."
    )
    title: str = Field(description="The catalogue title, as the model reads it.")
    item_id: str | None = Field(description="The catalogue's item id, where it has one.")
    retriever_rank: int = Field(description="Its rank among the retriever's candidates.")
    retriever_score: float = Field(description="The retriever's score.")
    llm_score: float | None = Field(
        description="Mean log-prob margin over the pivots (all candidates for all-pairs); "
        "None without a rerank."
    )
    fused_score: float | None = Field(description="The hybrid's or reciprocal-rank fusion's score.")


class RecommendResponse(BaseModel):
    recommended: list[RecommendedItem]
    retriever: str
    rerank: str = Field(description="pivot, all-pairs or none (always none for an empty history).")
    pivots: int | None
    candidates: int = Field(description="M: the candidates retrieved (and reranked).")
    prompts: int = Field(description="Prompts the rerank scored.")
    fusion: str = Field(description="hybrid, rrf (reciprocal rank) or none.")
    history_matched: int = Field(description="History titles found in the catalogue.")
    history_titles: int
    catalogue_titles: int
    notes: list[str] = Field(description="What was done differently from what was asked, and why.")
    model: str
    elapsed_ms: float


class Health(BaseModel):
    status: str
    model: str
    batches: int = Field(description="Scoring calls so far.")
    requests: int = Field(description="Ranking requests scored so far.")
    recommendations: int = Field(0, description="/v1/recommend requests answered so far.")


def _not_blank(title: str) -> str:
    if not title.strip():
        raise ValueError("title is empty")
    if any("\ud800" <= c <= "\udfff" for c in title):
        raise ValueError("title holds a lone surrogate (\\uD800-\\uDFFF); send valid Unicode")
    return title


def _printable(value: Any) -> Any:
    """`value` with lone surrogates escaped, so an error that echoes the input can be sent."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


# Values a 422 echoes back (the input, a key) are cut to this many characters, so a 60 KB
# title does not come back as a 60 KB error.
ECHO_CHARS = 200
# At most this many validation errors are listed in one 422 (the rest are counted).
MAX_ERRORS = 20


def _clip(value: Any) -> Any:
    """An echoed value cut to ECHO_CHARS characters, the cut said with the original size: a
    string keeps its first characters; a list or object longer than that as JSON becomes the
    start of its JSON text."""
    if isinstance(value, str):
        if len(value) <= ECHO_CHARS:
            return value
        return f"{value[:ECHO_CHARS]}... ({len(value):,} characters)"
    if isinstance(value, list | dict):
        text = json.dumps(value, ensure_ascii=False)
        if len(text) <= ECHO_CHARS:
            return value
        size = f"{len(value):,} {'items' if isinstance(value, list) else 'keys'}"
        return f"{text[:ECHO_CHARS]}... ({size}, {len(text):,} characters of JSON)"
    return value


def _clipped(error: dict[str, Any]) -> dict[str, Any]:
    """A pydantic error (already JSON-safe) with the echoed input, location and context cut."""
    out = dict(error)
    out["loc"] = [_clip(part) for part in error.get("loc", [])]
    if "input" in out:
        out["input"] = _clip(out["input"])
    if isinstance(out.get("ctx"), dict):
        out["ctx"] = {k: _clip(v) for k, v in out["ctx"].items()}
    return out


def ranked_response(
    titles: list[str], scores: list[float], ranker: Ranker, k: int | None = None
) -> list[dict[str, Any]]:
    """The ranked items of a response: each candidate as sent beside the title the model read."""
    return [
        {**item, "normalized_title": normalize_title(item["title"], ranker.norm)}
        for item in ranked_items(titles, scores, k)
    ]


def request_models(
    limits: Limits, ranker: Ranker
) -> tuple[type[BaseModel], type[BaseModel], type[BaseModel]]:
    """The /v1/rank, /v1/explain and /v1/recommend bodies, with the app's limits in their schema."""
    Title = Annotated[
        str, StringConstraints(max_length=limits.max_title_chars), AfterValidator(_not_blank)
    ]

    def distinct(candidates: list[str]) -> list[str]:
        # Compared after title cleaning: "Heat" and "Heat " are the same item to the model.
        seen: dict[str, int] = {}
        for i, title in enumerate(candidates):
            clean = normalize_title(title, ranker.norm)
            if clean in seen:
                raise ValueError(f"duplicate candidate {title!r} (positions {seen[clean]} and {i})")
            seen[clean] = i
        return candidates

    History = Annotated[list[Title], Field(min_length=1, max_length=limits.max_history)]
    Candidates = Annotated[
        list[Title],
        Field(min_length=1, max_length=limits.max_candidates),
        AfterValidator(distinct),
    ]

    class RankBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        history: History = Field(description="Titles from the user's history.")
        candidates: Candidates = Field(description="Distinct titles to rank.")
        top_k: StrictInt | None = Field(None, ge=1, description="Return only the best K.")
        domain: Domain = "movies"

    class ExplainBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        history: History
        candidates: Candidates | None = Field(
            None, description="Ranked first; the top is explained."
        )
        candidate: Title | None = Field(None, description="Or: the one title to explain.")
        domain: Domain = "movies"
        max_new_tokens: StrictInt = Field(limits.max_new_tokens, ge=1, le=limits.max_new_tokens)

        @model_validator(mode="after")
        def _one_target(self) -> "ExplainBody":
            if (self.candidates is None) == (self.candidate is None):
                raise ValueError("give either 'candidates' or 'candidate'")
            return self

    class RecommendBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        history: Annotated[list[Title], Field(max_length=limits.max_history)] = Field(
            description="Titles from the user's history; empty: the most popular titles."
        )
        top_k: StrictInt = Field(TOP_K, ge=1, le=limits.max_top_k, description="Items returned.")
        retrieve: StrictInt | None = Field(
            None,
            ge=1,
            le=limits.max_retrieve,
            description=f"M: candidates reranked (default {RETRIEVE}, or top_k if more).",
        )
        rerank: Literal[RERANKS] = Field(  # type: ignore[valid-type]
            "pivot",
            description="pivot: each candidate against the retriever's top `pivots`, both "
            "listing orders, 2P(M-1) - P(P-1) prompts; all-pairs: M(M-1); none: the retriever's "
            "order.",
        )
        pivots: StrictInt = Field(PIVOTS, ge=1, le=limits.max_retrieve)
        hybrid: bool = Field(True, description="Fuse by the run's hybrid where it has one.")
        domain: Domain = "movies"

        @model_validator(mode="after")
        def _affordable(self) -> "RecommendBody":
            if self.retrieve is None:
                self.retrieve = max(RETRIEVE, self.top_k)
            if self.rerank != "none" and self.retrieve > limits.max_retrieve:
                raise ValueError(
                    f"retrieve={self.retrieve} (top_k={self.top_k}) is over the "
                    f"{limits.max_retrieve} candidates a request may rerank"
                )
            if self.rerank != "none" and self.retrieve < self.top_k:
                raise ValueError(
                    f"retrieve={self.retrieve} is under top_k={self.top_k}: the top K come from "
                    "the M reranked candidates"
                )
            prompts = rerank_prompts(self.retrieve, self.rerank, self.pivots)
            if prompts > limits.max_prompts:
                raise ValueError(
                    f"rerank {self.rerank} of {self.retrieve} candidates"
                    + (f" with {self.pivots} pivots" if self.rerank == "pivot" else "")
                    + f" is {prompts} prompts, over the {limits.max_prompts} a request may cost"
                )
            return self

    return RankBody, ExplainBody, RecommendBody


API_KEY_ENV = "DMPOREC_API_KEY"

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
<code>{{"history": [...], "candidate": title}}</code>: a short explanation.</li>
<li><code>GET /healthz</code>; <code>GET /</code>: a page to try it.</li>
</ul>
<p>Limits: {max_history} history titles, {max_candidates} candidates, {max_title_chars}
characters a title (422 above), bodies up to {max_body_bytes} bytes (413 above).
With an API key set, <code>/v1/</code> needs <code>Authorization: Bearer KEY</code> or
<code>X-API-Key: KEY</code>.</p>
</body></html>
"""


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by its Content-Length header or, when
    that is missing or wrong (chunked uploads), by the bytes actually received."""

    def __init__(self, app: Callable, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"error": f"request body larger than {self.max_bytes} bytes"}, status_code=413
        )
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the app's root_path (uvicorn --root-path)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class ApiKey:
    """ASGI middleware: /v1/ routes need `Authorization: Bearer KEY` or `X-API-Key: KEY`
    (401 otherwise; compared in constant time). /, /healthz, /docs and /openapi.json stay open."""

    def __init__(self, app: Callable, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _route_path(scope).startswith("/v1/"):
            headers = dict(scope["headers"])
            given = headers.get(b"x-api-key", b"")
            bearer = headers.get(b"authorization", b"")
            if bearer[:7].lower() == b"bearer ":
                given = bearer[7:].strip()
            if not hmac.compare_digest(given, self.key):
                response = JSONResponse(
                    {"error": "missing or wrong API key (Authorization: Bearer KEY or X-API-Key)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _describe(error: dict[str, Any]) -> str:
    """'candidates[2]: String should have at most 200 characters' from a pydantic error."""
    where = ""
    loc = list(error["loc"])
    for part in loc[1:] if loc[:1] == ["body"] else loc:
        where += f"[{part}]" if isinstance(part, int) else f"{'.' if where else ''}{part}"
    message = error["msg"].removeprefix("Value error, ")
    text = f"{where}: {message}" if where else message
    # One line whatever the client sent: control characters of echoed keys are escaped.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def create_app(
    ranker: Ranker,
    limits: Limits | None = None,
    *,
    max_batch: int = 8,
    batch_wait_ms: float = 5.0,
    max_queue: int = 64,
    api_key: str | None = None,
    recommender: Recommender | None = None,
) -> FastAPI:
    """The service around an already loaded ranker (tests inject the tiny model here);
    /v1/recommend needs a `recommender` (its catalogue and retriever)."""
    limits = limits or Limits()
    if max_batch < 1 or batch_wait_ms < 0 or max_queue < 1:
        raise ValueError("max_batch and max_queue must be >= 1 and batch_wait_ms >= 0")
    batcher = Batcher(ranker, max_batch, batch_wait_ms, max_queue)
    RankBody, ExplainBody, RecommendBody = request_models(limits, ranker)
    # /v1/recommend's queue: requests waiting for the model, answered, and the mean seconds one
    # takes (for Retry-After); the ranker's lock serializes them with /v1/rank's batches.
    recommending: dict[str, float] = {"waiting": 0, "answered": 0, "seconds": 10.0}

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
        errors = [_clipped(e) for e in _printable(jsonable_encoder(exc.errors()))]
        shown, more = errors[:MAX_ERRORS], len(errors) - MAX_ERRORS
        text = "; ".join(map(_describe, shown)) + (f"; and {more} more" if more > 0 else "")
        return JSONResponse({"error": text, "detail": shown}, status_code=422)

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
            recommendations=int(recommending["answered"]),
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
        """A short greedy explanation of why the top candidate (or the given one) fits the
        history; the prompt is recommend.explain_instruction."""
        start = time.perf_counter()
        ranked = None
        title = body.candidate
        if body.candidates is not None:
            check_unseen(clean_request(body.history, body.candidates, body.domain, ranker.norm))
            request = await asyncio.to_thread(
                ranker.request, body.history, body.candidates, body.domain
            )
            scores = await unless_disconnected(http, batcher.rank(request))
            if scores is None:
                return Response(status_code=499)
            ranked = ranked_response(body.candidates, scores, ranker)
            title = ranked[0]["title"]
        text = await asyncio.to_thread(
            ranker.explain, body.history, title, body.domain, body.max_new_tokens
        )
        return ExplainResponse(
            title=title,
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
        if recommending["waiting"] >= max_queue:
            raise QueueFull(max(1, math.ceil(recommending["waiting"] * recommending["seconds"])))
        recommending["waiting"] += 1
        try:
            plan = await asyncio.to_thread(
                recommender.plan,
                body.history,
                k=body.top_k,
                m=body.retrieve,
                rerank=body.rerank,
                pivots=body.pivots,
                domain=body.domain,
            )
            if await http.is_disconnected():
                return Response(status_code=499)
            doc = await asyncio.to_thread(recommender.finish, plan, ranker, use_hybrid=body.hybrid)
        finally:
            recommending["waiting"] -= 1
        elapsed = time.perf_counter() - start
        recommending["answered"] += 1
        recommending["seconds"] = 0.8 * recommending["seconds"] + 0.2 * elapsed
        return RecommendResponse(**doc, model=ranker.name, elapsed_ms=round(elapsed * 1000, 2))

    return app


def run_serve(args: argparse.Namespace) -> int:
    """The `serve` command: load the model once, then serve until interrupted."""
    import uvicorn

    from dmporec.recommend import load_ranker

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
    from dmporec.recommend import title_normalization
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
        help="ranking requests that may wait; one more gets 503 with Retry-After (default 64)",
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
