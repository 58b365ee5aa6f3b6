"""Rank candidates for users with a trained run: load it once, clean titles as training did, answer.

`dmporec recommend --model RUN_DIR --history "A" "B" --candidates "X" "Y" "Z" [--top-k 2] [--json]`
or `--users FILE.json` (a JSON list of {"user", "history", "candidates"[, "domain"]}; without
candidates in any record, top-K from the catalogue for each {"user", "history"} or {"user": ID}).

Without --candidates, top-K from the whole catalogue (dmporec.rerank): `dmporec recommend --model
RUN_DIR --history "A" "B" --top-k 10` (or `--user ID`, a user of the run's data files) retrieves
--retrieve M candidates from the run's catalogue (RUN/catalogue.jsonl, or --catalogue FILE) with
--retriever (BPR-MF by default), reranks them with the model (--rerank pivot: 2P(M-1) - P(P-1)
prompts; all-pairs: M(M-1); none) and fuses the two orders (the run's hybrid, else reciprocal
rank; --no-hybrid). Every item shows its retriever rank, LLM score and fused score.

--model is a run directory, a stage directory, a model directory or a model name
(dmporec.ranker). A score is the candidate's mean probability of being ranked first against each
other candidate, asked in both listing orders (ranking.py has the rule and its cost).

The input is checked before the model loads (blank or duplicate titles, an empty history, a
candidate already in the history, more than --max-candidates), so bad input fails at once. The
number of prompts to score (N(N-1) per user) is printed to stderr first, a progress bar over
them appears there once scoring has taken 2 s, and a history cut to data.max_prompt_tokens says
how many titles it kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dmporec.catalogue import DEFAULT_RETRIEVER, RETRIEVERS
from dmporec.config import ConfigError
from dmporec.explain import (
    EXPLAIN_TITLES,
    EXPLAIN_VERSUS,
    Explanation,
    explain_prompts,
    leave_one_out,
)
from dmporec.ranker import Ranker, load_ranker, ranked_items, title_normalization

# find_stage and run_config are re-exported, as before the split: rerank.py imports them here.
from dmporec.ranker import find_stage as find_stage
from dmporec.ranker import run_config as run_config
from dmporec.ranking import top_k
from dmporec.recommend_queries import (
    MAX_CANDIDATES,
    PROGRESS_DELAY_S,
    UserQuery,
    bound_query,
    n_prompts,
    ranks_candidates,
    read_queries,
    read_users_file,
)
from dmporec.recommend_top_k import run_top_k
from dmporec.rerank import PIVOTS, RERANKS, RETRIEVE, TOP_K
from dmporec.wording import WORDINGS


def format_table(items: list[dict[str, Any]]) -> str:
    lines = [f"{'rank':>4}  {'score':>6}  title"]
    lines += [f"{it['rank']:>4}  {it['score']:.4f}  {it['title']}" for it in items]
    return "\n".join(lines)


def run_recommend(args: argparse.Namespace) -> int:
    """The `recommend` command: check the input, load, rank, then print a table per user or one
    JSON document. Without --candidates (or --users), top-K from the catalogue (`run_top_k`)."""
    if args.users and (args.history is not None or args.candidates or args.user):
        raise ConfigError("give either --users FILE or --history and --candidates, not both")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    if args.max_candidates < 1:
        raise ConfigError(f"--max-candidates must be at least 1, got {args.max_candidates}")
    entries = read_users_file(Path(args.users)) if args.users else None
    if entries is not None and not ranks_candidates(entries):
        return run_top_k(args, entries)  # a file of histories (or run users) without candidates
    if not args.users and not args.candidates:
        return run_top_k(args)
    catalogue_options = [
        name
        for name, value in (
            ("--catalogue", args.catalogue),
            ("--retriever", args.retriever),
            ("--retrieve", args.retrieve),
            ("--rerank", args.rerank),
            ("--pivots", args.pivots),
            ("--no-hybrid", args.no_hybrid),
            ("--user", args.user),
        )
        if value
    ]
    if catalogue_options:
        raise ConfigError(
            f"{', '.join(catalogue_options)}: for top-K from the catalogue, without --candidates"
        )
    if not args.users and not args.history:
        raise ConfigError("give --history and --candidates (one or more titles each), or --users")
    queries = read_queries(args, title_normalization(args.model), entries)
    total = sum(n_prompts(len(q.request.candidates)) for q in queries)
    users = f"{len(queries)} user{'s' * (len(queries) != 1)}"
    print(
        f"recommend: {users}: {total} prompts to score (N(N-1) for N candidates: every pair "
        "in both listing orders)",
        file=sys.stderr,
    )
    ranker = load_ranker(args.model)
    file = Path(args.users) if args.users else None
    queries = [bound_query(ranker, q, file) for q in queries]
    results: list[dict[str, Any]] = []
    best: list[int] = []  # each user's top candidate, the one --explain explains
    step = ranker.eval_cfg.batch_size
    with tqdm(
        total=total, desc="recommend", unit="prompt", delay=PROGRESS_DELAY_S, file=sys.stderr
    ) as bar:
        for start in range(0, len(queries), step):
            chunk = queries[start : start + step]
            scores = ranker.rank([q.request for q in chunk], progress=bar.update)
            for query, user_scores in zip(chunk, scores, strict=True):
                ranked = ranked_items(query.candidates, user_scores, args.top_k)
                results.append({"user": query.user, "ranked": ranked})
                best.append(top_k(query.candidates, user_scores, 1)[0][0])
    explained = explain_users(ranker, queries, best) if args.explain else None
    if explained is not None:
        for query, result, explanation in zip(queries, results, explained, strict=True):
            wording = query.request.wording
            result["explanation"] = explanation and explanation.to_json(wording)
    if args.json:
        doc: dict[str, Any] = {"model": ranker.name}
        doc.update({"users": results} if args.users else results[0])
        doc.pop("user", None)
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return 0
    print(f"model: {ranker.name}")
    for i, (query, result) in enumerate(zip(queries, results, strict=True)):
        print(
            ("" if not args.users else f"\nuser {result['user']}\n")
            + format_table(result["ranked"])
        )
        if explained is not None:
            explanation = explained[i]
            top = query.candidates[best[i]]
            print(
                f"why {top}: a lone candidate has no score to explain"
                if explanation is None
                else explanation.describe(query.request.wording)
            )
    return 0


def explain_users(
    ranker: Ranker, queries: list[UserQuery], best: list[int]
) -> list[Explanation | None]:
    """--explain: each user's top candidate (`best`) explained against the others
    (explain.leave_one_out); None for a lone candidate (no score to explain)."""
    cost = sum(
        explain_prompts(len(q.request.candidates), len(q.request.history))
        for q in queries
        if len(q.request.candidates) > 1
    )
    print(
        f"recommend: --explain: {cost} prompts more (each top candidate against the others, "
        f"with the whole history and without each of its newest {EXPLAIN_TITLES} titles)",
        file=sys.stderr,
    )
    explained: list[Explanation | None] = []
    with tqdm(
        total=cost, desc="explain", unit="prompt", delay=PROGRESS_DELAY_S, file=sys.stderr
    ) as bar:
        for query, item in zip(queries, best, strict=True):
            if len(query.request.candidates) < 2:
                explained.append(None)
            else:
                explained.append(leave_one_out(ranker, query.request, item, progress=bar.update))
    return explained


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="run dir, stage dir, model dir or model name"
    )
    parser.add_argument(
        "--history",
        nargs="*",
        metavar="TITLE",
        help="the user's history (without --candidates: none gives the most popular titles)",
    )
    parser.add_argument(
        "--candidates",
        nargs="+",
        metavar="TITLE",
        help="titles to rank (without it: top-K from the whole catalogue)",
    )
    parser.add_argument(
        "--users",
        metavar="FILE.json",
        help='a JSON list of users instead: {"user", "history", "candidates"[, "domain"]} ranks '
        "their candidates; without candidates in any record, top-K from the catalogue for each "
        '{"user", "history"}, or {"user": ID} alone for a user of the run\'s data files',
    )
    parser.add_argument(
        "--top-k", type=int, help=f"print only the best K (from the catalogue: default {TOP_K})"
    )
    parser.add_argument(
        "--max-candidates",
        type=int,
        default=MAX_CANDIDATES,
        metavar="N",
        help="refuse a list of more candidates (or an all-pairs rerank of more): the cost grows "
        f"as N(N-1) prompts (default {MAX_CANDIDATES}: {n_prompts(MAX_CANDIDATES)} prompts per user)",
    )
    parser.add_argument(
        "--domain",
        default="movies",
        help=f"prompt wording: {', '.join(WORDINGS)}, or five comma-separated words "
        "role,history,past,gerund,candidates (e.g. 'music,songs,listened to,listening to,songs')",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="say why the top one: the history titles whose removal lowers its score most "
        "(leave-one-out over the newest "
        f"{EXPLAIN_TITLES} titles, against the other candidates or, from the catalogue, the next "
        f"{EXPLAIN_VERSUS}: (L+1) x 2(N-1) prompts more, printed with the time it took)",
    )
    top = parser.add_argument_group(
        "top-K from the catalogue (no --candidates)",
        "The catalogue is the run's training items (RUN/catalogue.jsonl, written on first use; "
        "`export` copies it). A retriever draws M candidates from it, the model reranks them "
        "and the two orders are fused: by the run's list hybrid (STAGE/hybrid/list-model.json) "
        "or else its pair hybrid (STAGE/hybrid/model.json) if it has one, else by reciprocal "
        "rank. Each item shows its retriever rank, LLM score and fused "
        "score.",
    )
    top.add_argument("--user", metavar="ID", help="recommend for this user of the run's data files")
    top.add_argument(
        "--catalogue",
        metavar="FILE.jsonl",
        help='recommend from this catalogue instead: JSON lines {"title": ..., "item_id": ...}',
    )
    top.add_argument(
        "--retriever",
        choices=RETRIEVERS,
        help=f"the classic scorer that draws the candidates (default {DEFAULT_RETRIEVER}: fitted on "
        "the run's training histories, it beat popularity on real MovieLens-1M users, pairwise "
        "accuracy 0.634 vs 0.602, and needs no extra library; als needs implicit, embedding "
        "MiniLM; popularity, the only one without a run's data)",
    )
    top.add_argument(
        "--retrieve",
        type=int,
        metavar="M",
        help=f"candidates the model reranks (default {RETRIEVE}, or K if more); the top K come "
        "from them",
    )
    top.add_argument(
        "--rerank",
        choices=RERANKS,
        help="pivot (default): each candidate against the retriever's top P, both listing "
        "orders, 2P(M-1)-P(P-1) prompts (M=20, P=2: 74); all-pairs: every pair, M(M-1) "
        "prompts (380), the exact mode; none: the retriever's order",
    )
    top.add_argument(
        "--pivots", type=int, metavar="P", help=f"pivots of the pivot rerank (default {PIVOTS})"
    )
    top.add_argument(
        "--no-hybrid",
        action="store_true",
        help="fuse by reciprocal rank even where the run has a fitted hybrid",
    )
