"""`recommend` without --candidates: top-K from the run's catalogue for a history or a user of the
run's data files (--user), retrieved, reranked by the model and fused by dmporec.rerank."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dmporec.config import ConfigError
from dmporec.data import load_records
from dmporec.explain import (
    EXPLAIN_TITLES,
    EXPLAIN_VERSUS,
    Explanation,
    explain_prompts,
    leave_one_out,
)
from dmporec.ranker import Ranker, find_stage, load_ranker, run_config, title_normalization
from dmporec.ranking import RankRequest, check_request
from dmporec.recommend_queries import PROGRESS_DELAY_S, n_prompts
from dmporec.records import DataError, Record, TitleNormalization
from dmporec.rerank import PIVOTS, RETRIEVE, TOP_K, Plan, load_recommender

# The data files --user looks in, in this order: a test user's history is the model's input at
# test time, and its positive was never trained on.
USER_FILES = ("eval", "valid", "sft_train", "dmpo_train")


def find_user(spec: str, user_id: str, norm: TitleNormalization) -> tuple[Record, str]:
    """The record of `user_id` in the run's data files (USER_FILES order) and the file's key;
    ConfigError without a run, DataError naming the files when no file has the user."""
    path = Path(spec).expanduser()
    stage = find_stage(path) if path.is_dir() else None
    cfg = run_config(stage) if stage is not None else None
    if cfg is None:
        raise ConfigError(f"--user needs --model RUN_DIR (a run's data files); {spec} is not one")
    looked = []
    for key in USER_FILES:
        file = getattr(cfg.data, key)
        if file is None or file in looked:
            continue
        looked.append(file)
        for record in load_records(file, norm):
            if record.user_id == user_id:
                return record, key
    raise DataError(
        f"user {user_id!r} is in none of the run's data files ({', '.join(map(str, looked))})",
        field="user",
    )


def format_top_k(doc: dict[str, Any]) -> str:
    """The table of a top-K answer: final rank, then what each stage gave the item."""
    head = (
        f"retriever {doc['retriever']}: {doc['candidates']} of {doc['catalogue_titles']:,} "
        f"catalogue titles; rerank {doc['rerank']}"
        + (f" (P={doc['pivots']})" if doc["pivots"] else "")
        + f": {doc['prompts']} prompts; fusion {doc['fusion']}"
    )

    def num(value: float | None, spec: str) -> str:
        return f"{'-':>8}" if value is None else f"{value:{spec}}"

    lines = [head, f"{'rank':>4}  {'fused':>8}  {'llm':>8}  {'retr':>4}  title"]
    lines += [
        f"{it['rank']:>4}  {num(it['fused_score'], '>8.4f')}  {num(it['llm_score'], '>+8.3f')}"
        f"  {it['retriever_rank']:>4}  {it['title']}"
        for it in doc["recommended"]
    ]
    return "\n".join(lines)


def run_top_k(args: argparse.Namespace) -> int:
    """`recommend` without --candidates: retrieve from the catalogue, rerank with the model,
    fuse (dmporec.rerank). Everything but the LLM's scoring is done, and the input checked,
    before the model loads."""
    if args.history is None and not args.user:
        raise ConfigError(
            "give --history (titles; none for the most popular), --user ID, --candidates or --users"
        )
    if args.history is not None and args.user:
        raise ConfigError("give either --history or --user, not both")
    k = args.top_k or TOP_K
    m = args.retrieve if args.retrieve is not None else max(RETRIEVE, k)
    rerank = args.rerank or "pivot"
    pivots = args.pivots if args.pivots is not None else PIVOTS
    for name, value in (("--retrieve", m), ("--pivots", pivots)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if rerank != "none" and m < k:
        raise ConfigError(
            f"--retrieve {m} is under --top-k {k}: the top K come from the M reranked "
            "candidates; raise --retrieve or lower --top-k"
        )
    if rerank == "all-pairs" and m > args.max_candidates:
        raise ConfigError(
            f"--rerank all-pairs of {m} candidates is {n_prompts(m)} prompts, over "
            f"--max-candidates={args.max_candidates}; use --rerank pivot (2P(M-1) prompts) or "
            "raise --max-candidates"
        )
    norm = title_normalization(args.model)
    history, user = list(args.history or []), None
    if args.user:
        record, key = find_user(args.model, args.user, norm)
        history = [item.title for item in record.history]
        user = {"id": args.user, "file": key, "positive": record.positive.title}
    recommender = load_recommender(
        args.model,
        norm,
        catalogue_file=args.catalogue,
        retriever=args.retriever,
        use_hybrid=not args.no_hybrid,
    )
    plan = recommender.plan(
        history, k=k, m=m, rerank=rerank, pivots=pivots, user_id=args.user, domain=args.domain
    )
    print(
        f"recommend: {plan.retriever} retrieved {len(plan.retrieved.indices)} candidates from "
        f"{len(recommender.catalogue):,} catalogue titles; {plan.prompts} prompts to score "
        f"({plan.rerank} rerank)",
        file=sys.stderr,
    )
    ranker = load_ranker(args.model) if plan.rerank != "none" else None
    with tqdm(
        total=plan.prompts, desc="recommend", unit="prompt", delay=PROGRESS_DELAY_S, file=sys.stderr
    ) as bar:
        doc = recommender.finish(plan, ranker, use_hybrid=not args.no_hybrid, progress=bar.update)
    for note in doc["notes"]:
        print(f"recommend: {note}", file=sys.stderr)
    if user is not None:
        found = [it["rank"] for it in doc["recommended"] if it["title"] == user["positive"]]
        user["positive_rank"] = found[0] if found else None
        where = f"rank {found[0]}" if found else f"not in the top {k}"
        print(
            f"recommend: user {args.user} ({user['file']} file, {len(history)} history titles): "
            f"their positive {user['positive']!r} is {where}",
            file=sys.stderr,
        )
    why = explain_top(ranker, plan, doc) if args.explain else None
    name = ranker.name if ranker is not None else args.model
    if args.json:
        out: dict[str, Any] = {"model": name, **({"user": user} if user else {}), **doc}
        if args.explain:
            out["explanation"] = why.to_json(plan.wording) if isinstance(why, Explanation) else None
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print(f"model: {name}\n{format_top_k(doc)}")
        if why is not None:
            print(why.describe(plan.wording) if isinstance(why, Explanation) else why)
    return 0


def explain_top(ranker: Ranker | None, plan: Plan, doc: dict[str, Any]) -> Explanation | str:
    """--explain: the first item against the next EXPLAIN_VERSUS (explain.leave_one_out: why the
    model scores it above them; the fused order also weighs the retriever), or why not."""
    items = [it["title"] for it in doc["recommended"][: EXPLAIN_VERSUS + 1]]
    if ranker is None or len(items) < 2:
        reason = "no model scores (rerank none)" if ranker is None else "no item to compare it with"
        return f"why {items[0] if items else 'nothing'}: nothing to explain: {reason}"
    request = ranker.bounded(check_request(RankRequest(plan.history, tuple(items), plan.wording)))
    cost = explain_prompts(len(items), len(request.history))
    print(
        f"recommend: --explain: {cost} prompts more (the first item against the next "
        f"{len(items) - 1}, with the whole history and without each of its newest "
        f"{EXPLAIN_TITLES} titles)",
        file=sys.stderr,
    )
    with tqdm(
        total=cost, desc="explain", unit="prompt", delay=PROGRESS_DELAY_S, file=sys.stderr
    ) as bar:
        return leave_one_out(ranker, request, 0, progress=bar.update)
