"""`recommend` without --candidates: top-K from the run's catalogue for a history, a user of the
run's data files (--user) or each user of a --users file without candidates, retrieved, reranked
by the model and fused by dmporec.rerank."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
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
from dmporec.recommend_queries import PROGRESS_DELAY_S, n_prompts, titles_of
from dmporec.records import DataError, Record, TitleNormalization
from dmporec.rerank import PIVOTS, RETRIEVE, TOP_K, Plan, load_recommender
from dmporec.wording import resolve_wording

# The data files --user looks in, in this order: a test user's history is the model's input at
# test time, and its positive was never trained on.
USER_FILES = ("eval", "valid", "sft_train", "dmpo_train")


def find_users(
    spec: str, user_ids: list[str], norm: TitleNormalization
) -> dict[str, tuple[Record, str]]:
    """The records of `user_ids` found in the run's data files (USER_FILES order: the first
    file holding a user wins) with each file's key, every file read once; ConfigError without a
    run. Ids found nowhere are left out (`missing_user` says so)."""
    path = Path(spec).expanduser()
    stage = find_stage(path) if path.is_dir() else None
    cfg = run_config(stage) if stage is not None else None
    if cfg is None:
        raise ConfigError(f"--user needs --model RUN_DIR (a run's data files); {spec} is not one")
    wanted, found, looked = set(user_ids), {}, []
    for key in USER_FILES:
        file = getattr(cfg.data, key)
        if file is None or file in looked or wanted <= found.keys():
            continue
        looked.append(file)
        for record in load_records(file, norm):
            if record.user_id in wanted and record.user_id not in found:
                found[record.user_id] = (record, key)
    return found


def missing_user(spec: str, user_id: str, **where: Any) -> DataError:
    """The error for a user id that none of the run's data files holds."""
    cfg = run_config(find_stage(Path(spec).expanduser()))  # find_users found the run
    files = [str(getattr(cfg.data, key)) for key in USER_FILES if getattr(cfg.data, key)]
    return DataError(
        f"user {user_id!r} is in none of the run's data files ({', '.join(dict.fromkeys(files))})",
        field="user",
        **where,
    )


@dataclass(frozen=True)
class TopKUser:
    """One history to recommend for: given, or that of a user of the run's data files."""

    label: str | None  # the --users file's "user" (None for --history / --user)
    history: list[str]
    domain: Any
    user_id: str | None = None  # a user of the run's data files: the retriever's fitted user
    info: dict[str, Any] | None = None  # that user's {"id", "file", "positive"}
    record: int | None = None  # its index in the --users file


def run_user(user_id: str, found: dict[str, tuple[Record, str]], **fields: Any) -> TopKUser:
    record, key = found[user_id]
    info = {"id": user_id, "file": key, "positive": record.positive.title}
    return TopKUser(history=[i.title for i in record.history], user_id=user_id, info=info, **fields)


def read_top_k_users(
    args: argparse.Namespace, norm: TitleNormalization, entries: list[dict[str, Any]] | None
) -> list[TopKUser]:
    """The histories to recommend for: --history, --user ID, or each record of a --users file
    without candidates ({"user": LABEL, "history": [...]}, or {"user": ID} alone: that user of
    the run's data files), checked before any model loads."""
    if entries is None:
        if args.history is None and not args.user:
            raise ConfigError(
                "give --history (titles; none for the most popular), --user ID, --candidates "
                "or --users"
            )
        if args.history is not None and args.user:
            raise ConfigError("give either --history or --user, not both")
        if not args.user:
            return [TopKUser(None, list(args.history), args.domain)]
        found = find_users(args.model, [args.user], norm)
        if args.user not in found:
            raise missing_user(args.model, args.user)
        return [run_user(args.user, found, label=None, domain=args.domain)]
    path = Path(args.users)
    ids = []
    for i, entry in enumerate(entries):
        if "domain" in entry:
            try:
                resolve_wording(entry["domain"])
            except ValueError as e:
                raise DataError(str(e), file=path, record=i, field="domain") from None
        if "history" in entry:
            for j, title in enumerate(titles_of(entry["history"], path, i, "history")):
                if not title.strip():
                    raise DataError(f"title {j} is empty", file=path, record=i, field="history")
        elif "user" not in entry:
            raise DataError(
                "missing: give 'history', or 'user' alone for a user of the run's data files "
                "(or 'candidates' in every record to rank them)",
                file=path,
                record=i,
                field="history",
            )
        else:
            ids.append(str(entry["user"]))
    found = find_users(args.model, ids, norm) if ids else {}
    users = []
    for i, entry in enumerate(entries):
        label, domain = str(entry.get("user", i)), entry.get("domain", args.domain)
        if "history" in entry:
            users.append(TopKUser(label, entry["history"], domain, record=i))
        elif label in found:
            users.append(run_user(label, found, label=label, domain=domain, record=i))
        else:
            raise missing_user(args.model, label, file=path, record=i)
    return users


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


def run_top_k(args: argparse.Namespace, entries: list[dict[str, Any]] | None = None) -> int:
    """`recommend` without --candidates: retrieve from the catalogue, rerank with the model,
    fuse (dmporec.rerank), for one history or each user of a --users file (its `entries`).
    Everything but the LLM's scoring is done, and the input checked, before the model loads."""
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
    users = read_top_k_users(args, norm, entries)
    recommender = load_recommender(
        args.model,
        norm,
        catalogue_file=args.catalogue,
        retriever=args.retriever,
        use_hybrid=not args.no_hybrid,
    )
    plans = []
    for user in users:
        try:
            plans.append(
                recommender.plan(
                    user.history,
                    k=k,
                    m=m,
                    rerank=rerank,
                    pivots=pivots,
                    user_id=user.user_id,
                    domain=user.domain,
                )  # fmt: skip
            )
        except DataError as e:
            if user.record is None:
                raise
            message = str(e).removeprefix(f"field '{e.field}': ") if e.field else str(e)
            raise DataError(message, file=args.users, record=user.record, field=e.field) from None
    prompts = sum(plan.prompts for plan in plans)
    who = f"{len(users)} user{'s' * (len(users) != 1)}: " if entries is not None else ""
    print(
        f"recommend: {who}{plans[0].retriever} retrieved {len(plans[0].retrieved.indices)} "
        f"candidates from {len(recommender.catalogue):,} catalogue titles; {prompts} prompts "
        f"to score ({plans[0].rerank} rerank)",
        file=sys.stderr,
    )
    ranker = load_ranker(args.model) if any(p.rerank != "none" for p in plans) else None
    docs = []
    with tqdm(
        total=prompts, desc="recommend", unit="prompt", delay=PROGRESS_DELAY_S, file=sys.stderr
    ) as bar:
        for plan in plans:
            scorer = ranker if plan.rerank != "none" else None
            docs.append(
                recommender.finish(plan, scorer, use_hybrid=not args.no_hybrid, progress=bar.update)
            )
    for user, doc in zip(users, docs, strict=True):
        say_user(user, doc, k)
    whys = explain_tops(ranker, plans, docs) if args.explain else None
    name = ranker.name if ranker is not None else args.model
    answers: list[dict[str, Any]] = []
    for i, (user, plan, doc) in enumerate(zip(users, plans, docs, strict=True)):
        who = {"user": user.label} if user.label is not None else {}
        answer: dict[str, Any] = {**who, **({"run_user": user.info} if user.info else {}), **doc}
        if whys is not None:
            why = whys[i]
            answer["explanation"] = (
                why.to_json(plan.wording) if isinstance(why, Explanation) else None
            )
            answer["why"] = why.describe(plan.wording) if isinstance(why, Explanation) else why
        answers.append(answer)
    if args.json:
        for answer in answers:
            answer.pop("why", None)
        out: dict[str, Any] = {"model": name}
        if entries is not None:
            out["users"] = answers
        else:
            run = answers[0].pop("run_user", None)
            out.update({**({"user": run} if run else {}), **answers[0]})
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    print(f"model: {name}")
    for answer in answers:
        head = f"\nuser {answer['user']}\n" if "user" in answer else ""
        print(head + format_top_k(answer) + (f"\n{answer['why']}" if "why" in answer else ""))
    return 0


def say_user(user: TopKUser, doc: dict[str, Any], k: int) -> None:
    """stderr: the answer's notes and, for a user of the run's data files, where their positive
    (never trained on, for a test user) landed; `user.info` gets its rank."""
    who = f"user {user.label}: " if user.label is not None else ""
    for note in doc["notes"]:
        print(f"recommend: {who}{note}", file=sys.stderr)
    if user.info is None:
        return
    found = [it["rank"] for it in doc["recommended"] if it["title"] == user.info["positive"]]
    user.info["positive_rank"] = found[0] if found else None
    where = f"rank {found[0]}" if found else f"not in the top {k}"
    print(
        f"recommend: user {user.user_id} ({user.info['file']} file, {len(user.history)} history "
        f"titles): their positive {user.info['positive']!r} is {where}",
        file=sys.stderr,
    )


def explain_tops(
    ranker: Ranker | None, plans: list[Plan], docs: list[dict[str, Any]]
) -> list[Explanation | str]:
    """--explain: each answer's first item against its next EXPLAIN_VERSUS
    (explain.leave_one_out: why the model scores it above them; the fused order also weighs the
    retriever), or why not."""
    requests: list[RankRequest | str] = []
    for plan, doc in zip(plans, docs, strict=True):
        items = [it["title"] for it in doc["recommended"][: EXPLAIN_VERSUS + 1]]
        if ranker is None or plan.rerank == "none" or len(items) < 2:
            reason = (
                "no item to compare it with"
                if len(items) == 1 and ranker
                else ("no model scores (rerank none)")
            )
            requests.append(f"why {items[0] if items else 'nothing'}: nothing to explain: {reason}")
        else:
            request = RankRequest(plan.history, tuple(items), plan.wording)
            requests.append(ranker.bounded(check_request(request)))
    cost = sum(
        explain_prompts(len(r.candidates), len(r.history))
        for r in requests
        if isinstance(r, RankRequest)
    )
    print(
        f"recommend: --explain: {cost} prompts more (the first item against the next "
        f"{EXPLAIN_VERSUS}, with the whole history and without each of its newest "
        f"{EXPLAIN_TITLES} titles)",
        file=sys.stderr,
    )
    with tqdm(
        total=cost, desc="explain", unit="prompt", delay=PROGRESS_DELAY_S, file=sys.stderr
    ) as bar:
        return [
            leave_one_out(ranker, r, 0, progress=bar.update) if isinstance(r, RankRequest) else r
            for r in requests
        ]
