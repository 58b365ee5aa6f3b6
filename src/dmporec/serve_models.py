"""The request and response bodies of `dmporec serve` (pydantic), their limits, and the one-line
422 text a request that breaks them gets (echoed values cut, fields named)."""

# No `from __future__ import annotations`: FastAPI reads the request models, which are built
# per app (their limits are the app's), from the endpoint annotations at runtime.

import json
from typing import Annotated, Any, Literal

from fastapi.encoders import jsonable_encoder
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    model_validator,
)

from dmporec.explain import EXPLAIN_MAX_NEW_TOKENS, Explanation
from dmporec.ranker import Ranker, ranked_items
from dmporec.records import normalize_title
from dmporec.rerank import PIVOTS, RERANKS, RETRIEVE, TOP_K, rerank_prompts
from dmporec.wording import Wording

Domain = Literal["movies", "games", "books"]


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


class Reason(BaseModel):
    title: str = Field(description="The history title, as sent.")
    normalized_title: str = Field(description="The title as the model read it.")
    position: int = Field(description="Its index in the history sent.")
    drop: float = Field(
        description="The item's score with the whole history minus its score with this title "
        "left out: how much the title raised it (negative: lowered)."
    )


class Why(BaseModel):
    """Grounded reasons (dmporec.explain.leave_one_out): the history titles whose removal lowers
    the item's score most."""

    score: float = Field(
        description="The item's score against `versus` with the whole history: its mean "
        "probability of being ranked first over each of them, both listing orders (with "
        "`candidates`, its /v1/rank score)."
    )
    versus: list[str] = Field(description="The titles it is scored against, as sent.")
    reasons: list[Reason] = Field(description="Each title left out, by drop, largest first.")
    because: str = Field(
        description="'because you watched A, B (score drop x, y)': up to 3 titles with a "
        "positive drop; or why there is none."
    )
    cost: str = Field(description="What the reasons cost and cover, in words.")
    history_titles: int = Field(
        description="Titles of the history the model read (the newest that fit "
        "data.max_prompt_tokens)."
    )
    left_out: int = Field(
        description="The newest this many titles were left out one at a time: at most 10, "
        "fewer where the prompts would pass the request limit."
    )
    prompts: int = Field(description="(left_out + 1) x 2 x len(versus).")
    seconds: float


class ExplainResponse(BaseModel):
    title: str = Field(description="The candidate explained: the given one or the top ranked.")
    why: Why | None = Field(
        description="Why, from the model's scores; null for an item with no opponent."
    )
    explanation: str | None = Field(
        None,
        description="The model's generated text, with `generate: true` only (a model trained "
        "on ranking answers may repeat their format, as the demo's SmolLM2 run does).",
    )
    ranked: list[RankedItem] | None = Field(None, description="The ranking, if one was needed.")
    model: str
    elapsed_ms: float


def why_response(
    explanation: Explanation,
    history: list[str],
    versus: list[str],
    ranker: Ranker,
    wording: Wording,
) -> dict[str, Any]:
    """`explanation` with its titles as sent: the history the model read is the newest
    `history_titles` of `history` (cleaned), so position p is history[offset + p]."""
    offset = len(history) - explanation.history_titles
    doc = explanation.to_json(wording)
    del doc["title"]  # the response's own `title` is the one as sent
    doc["versus"] = versus
    doc["cost"] = explanation.cost()
    doc["reasons"] = [
        {
            "title": history[offset + r.position],
            "normalized_title": normalize_title(history[offset + r.position], ranker.norm),
            "position": offset + r.position,
            "drop": round(r.drop, 6),
        }
        for r in explanation.reasons
    ]
    return doc


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
    fusion: str = Field(description="list-hybrid, hybrid, rrf (reciprocal rank) or none.")
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
    requests: int = Field(description="Requests (model calls) scored so far.")
    batch_sizes: dict[str, int] = Field(
        {}, description="Requests per scoring call -> how many calls scored that many."
    )
    dropped: int = Field(0, description="Queued requests dropped: their clients left.")
    expired: int = Field(0, description="Queued requests answered 503 at their deadline.")
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


def validation_error(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """A 422's body from pydantic's errors: `error`, one line naming each field (at most
    MAX_ERRORS, the rest counted), and `detail`, the errors with echoed values cut."""
    clipped = [_clipped(e) for e in _printable(jsonable_encoder(errors))]
    shown, more = clipped[:MAX_ERRORS], len(clipped) - MAX_ERRORS
    text = "; ".join(map(_describe, shown)) + (f"; and {more} more" if more > 0 else "")
    return {"error": text, "detail": shown}


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

    Versus = Annotated[
        list[Title],
        Field(min_length=1, max_length=max(1, limits.max_candidates - 1)),
        AfterValidator(distinct),
    ]

    class ExplainBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        history: History
        candidates: Candidates | None = Field(
            None, description="Ranked first; the top is explained against the others."
        )
        candidate: Title | None = Field(None, description="Or: the one title to explain.")
        versus: Versus | None = Field(
            None,
            description="With 'candidate': the titles its score is taken against (e.g. the "
            "items listed below it).",
        )
        generate: bool = Field(
            False,
            description="Also the model's generated text (greedy, up to max_new_tokens): a "
            "model trained on ranking answers may repeat their format.",
        )
        domain: Domain = "movies"
        max_new_tokens: StrictInt = Field(limits.max_new_tokens, ge=1, le=limits.max_new_tokens)

        @model_validator(mode="after")
        def _one_target(self) -> "ExplainBody":
            if (self.candidates is None) == (self.candidate is None):
                raise ValueError("give either 'candidates' or 'candidate'")
            if self.versus is not None and self.candidate is None:
                raise ValueError(
                    "'versus' goes with 'candidate' (with 'candidates' the top is "
                    "scored against the others)"
                )
            if self.candidate is not None and self.versus is None and not self.generate:
                raise ValueError(
                    "'candidate' alone has no score to explain: give 'versus' (the titles it "
                    "was ranked against) or 'generate': true"
                )
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
