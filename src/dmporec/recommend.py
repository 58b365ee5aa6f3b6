"""Rank candidates for users with a trained run: load it once, clean titles as training did, answer.

`dmporec recommend --model RUN_DIR --history "A" "B" --candidates "X" "Y" "Z" [--top-k 2] [--json]`
or `--users FILE.json` (a JSON list of {"user", "history", "candidates"[, "domain"]}).

Without --candidates, top-K from the whole catalogue (dmporec.rerank): `dmporec recommend --model
RUN_DIR --history "A" "B" --top-k 10` (or `--user ID`, a user of the run's data files) retrieves
--retrieve M candidates from the run's catalogue (RUN/catalogue.jsonl, or --catalogue FILE) with
--retriever (BPR-MF by default), reranks them with the model (--rerank pivot: 2P(M-1) - P(P-1)
prompts; all-pairs: M(M-1); none) and fuses the two orders (the run's hybrid, else reciprocal
rank; --no-hybrid). Every item shows its retriever rank, LLM score and fused score.

--model is a run directory (its dmpo stage, else its sft stage), a stage directory (has
lineage.json: the base model plus the adapters to merge), a plain model directory (config.json,
e.g. what `dmporec export` writes), or a model name (`builtin:smollm2-135m`, a hub id) for the
untrained zero-shot model. Titles go through the run's `data.title_normalization`, so
"Am&eacute;lie" reads as the model saw it in training. A score is the candidate's mean
probability of being ranked first against each other candidate, asked in both listing orders
(ranking.py has the rule and its cost).

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
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from tqdm.auto import tqdm

from dmporec.catalogue import DEFAULT_RETRIEVER, RETRIEVERS
from dmporec.collate import PromptBound
from dmporec.config import ConfigError, DataConfig, EvalConfig, RunConfig, load_config
from dmporec.data import load_records
from dmporec.model import (
    LINEAGE,
    ModelConfig,
    load_base_model,
    load_stage_model,
    load_tokenizer,
)
from dmporec.prompts import ChatFormat, history_text, title_tag
from dmporec.ranking import (
    PairEncoder,
    RankRequest,
    check_request,
    check_unseen,
    pair_answers,
    rank_candidates,
    top_k,
)
from dmporec.records import (
    DataError,
    Record,
    TitleNormalization,
    normalize_title,
    read_text_file,
)
from dmporec.rerank import PIVOTS, RERANKS, RETRIEVE, TOP_K, load_recommender
from dmporec.wording import WORDINGS, Wording, resolve_wording

# A short answer is all the explanation needs; it also bounds a request's generation time.
EXPLAIN_MAX_NEW_TOKENS = 64
# recommend's default --max-candidates: 870 prompts per user.
MAX_CANDIDATES = 30
# Seconds of scoring before recommend shows its progress bar: quick answers print nothing more.
PROGRESS_DELAY_S = 2.0


def explain_instruction(
    history: Sequence[str], title: str, wording: Wording = WORDINGS["movies"]
) -> str:
    """The question behind /v1/explain, in the paper's wording up to the history.

    >>> explain_instruction(["Heat"], "Up")
    "You are an assistant working on movie recommendations. Here is the user's history of movies they have watched:  <Title:Heat> . In one or two sentences, explain why the user would enjoy watching the movie  <Title:Up> ."

    The adapters were trained on ranking answers only, so the explanation comes from what the
    base model already knows; a heavily trained adapter may answer in the ranking format.
    """
    return (
        history_text(list(history), wording)
        + f". In one or two sentences, explain why the user would enjoy {wording.gerund} the "
        + f"{wording.role} "
        + title_tag(title)
        + "."
    )


@dataclass
class Ranker:
    """A loaded model with everything needed to rank and explain; safe to share between threads
    (model calls are serialized: they would only compete for the same cores)."""

    model: torch.nn.Module
    tokenizer: Any
    chat: ChatFormat
    norm: TitleNormalization
    name: str
    eval_cfg: EvalConfig = field(default_factory=EvalConfig)
    data_cfg: DataConfig = field(default_factory=DataConfig)
    encoder: PairEncoder = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.encoder = PairEncoder(self.tokenizer, self.chat)

    @classmethod
    def create(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        model_cfg: ModelConfig,
        name: str,
        run_cfg: RunConfig | None = None,
    ) -> Ranker:
        """Wire a loaded model; the run config (if any) supplies title cleaning and scorer settings."""
        chat = ChatFormat.from_tokenizer(
            tokenizer,
            use_chat_template=model_cfg.use_chat_template,
            template_kwargs=model_cfg.chat_template_kwargs,
        )
        norm = run_cfg.data.title_normalization if run_cfg else TitleNormalization()
        eval_cfg = run_cfg.eval if run_cfg else EvalConfig()
        data_cfg = run_cfg.data if run_cfg else DataConfig()
        return cls(model.eval(), tokenizer, chat, norm, name, eval_cfg, data_cfg)

    def request(
        self,
        history: Sequence[str],
        candidates: Sequence[str],
        domain: Any = "movies",
        *,
        file: str | Path | None = None,
        record: int | str | None = None,
    ) -> RankRequest:
        """A checked request with titles cleaned as in training (`clean_request`), its history
        cut to data.max_prompt_tokens (`bounded`)."""
        request = clean_request(history, candidates, domain, self.norm, file=file, record=record)
        return self.bounded(request, file=file, record=record)

    def bounded(
        self,
        request: RankRequest,
        *,
        file: str | Path | None = None,
        record: int | str | None = None,
    ) -> RankRequest:
        """`request` with its history cut to the newest titles that fit data.max_prompt_tokens
        (DataError instead under data.overlong=refuse)."""
        return self.encoder.bounded(request, self._bound(), file=file, record=record)

    def _bound(self) -> PromptBound:
        return PromptBound.of(self.data_cfg)

    def rank(
        self, requests: Sequence[RankRequest], progress: Callable[[int], None] | None = None
    ) -> list[list[float]]:
        """Scores of each request's candidates (ranking.rank_candidates: `progress(n)` hears of
        the prompts scored as they are)."""
        with self._lock:
            return rank_candidates(
                self.model,
                self.encoder,
                requests,
                layout=self.eval_cfg.layout,
                max_batch_tokens=self.eval_cfg.max_batch_tokens,
                progress=progress,
            )

    def answers(
        self,
        requests: Sequence[RankRequest],
        pairs_of: Sequence[Sequence[tuple[int, int]]],
        progress: Callable[[int], None] | None = None,
        *,
        max_group_tokens: int = 2048,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The answer log-probs of each request's ordered pairs (ranking.pair_answers): a subset
        of the pairs, for the pivot rerank (dmporec.rerank)."""
        with self._lock:
            return pair_answers(
                self.model,
                self.encoder,
                requests,
                pairs_of,
                layout=self.eval_cfg.layout,
                max_batch_tokens=self.eval_cfg.max_batch_tokens,
                max_group_tokens=max_group_tokens,
                progress=progress,
            )

    @torch.no_grad()
    def explain(
        self,
        history: Sequence[str],
        title: str,
        domain: Any = "movies",
        max_new_tokens: int = EXPLAIN_MAX_NEW_TOKENS,
    ) -> str:
        """A greedy, bounded answer to `explain_instruction` (titles cleaned as in training)."""
        titles, wording = [normalize_title(t, self.norm) for t in history], resolve_wording(domain)

        def prompt_ids(kept: int) -> list[int]:
            text = explain_instruction(titles[-kept:], normalize_title(title, self.norm), wording)
            prompt = self.chat.prefix + text + self.chat.suffix
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

        kept = self._bound().fit(
            len(titles), lambda kept: len(prompt_ids(kept)) + max_new_tokens, file=None, record=None
        )
        device = next(self.model.parameters()).device
        ids = torch.tensor([prompt_ids(kept)], device=device)
        with self._lock:
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def clean_request(
    history: Sequence[str],
    candidates: Sequence[str],
    domain: Any,
    norm: TitleNormalization,
    *,
    file: str | Path | None = None,
    record: int | str | None = None,
) -> RankRequest:
    """A checked request (ranking.check_request) with titles cleaned by `norm`, as in training;
    no model needed. `domain` is a wording: a built-in name, five comma-separated words or an
    object. DataError names the field."""

    def clean(titles: Sequence[str]) -> tuple[str, ...]:
        return tuple(normalize_title(t, norm) for t in titles)

    try:
        wording = resolve_wording(domain)
    except ValueError as e:
        raise DataError(str(e), file=file, record=record, field="domain") from None
    return check_request(
        RankRequest(clean(history), clean(candidates), wording), file=file, record=record
    )


def find_stage(path: Path) -> Path | None:
    """The stage to load from a stage dir or a run dir (dmpo, else sft); None if neither."""
    if (path / LINEAGE).is_file():
        return path
    for stage in ("dmpo", "sft"):
        if (path / stage / LINEAGE).is_file():
            return path / stage
    return None


def run_config(stage_dir: Path) -> RunConfig | None:
    """The config a stage was trained with (its run directory's config.yaml), if there is one."""
    path = stage_dir.parent / "config.yaml"
    return load_config(path) if path.is_file() else None


def title_normalization(spec: str) -> TitleNormalization:
    """The title cleaning `load_ranker(spec)` will use (a run's), read without loading a model."""
    path = Path(spec).expanduser()
    stage = find_stage(path) if path.is_dir() else None
    cfg = run_config(stage) if stage is not None else None
    return cfg.data.title_normalization if cfg is not None else TitleNormalization()


def load_ranker(spec: str, device: torch.device | None = None) -> Ranker:
    """A Ranker for a run dir, stage dir, model dir or model name (see the module docstring)."""
    path = Path(spec).expanduser()
    if path.is_dir() and (stage := find_stage(path)) is not None:
        model, tokenizer, model_cfg = load_stage_model(stage, device)
        return Ranker.create(model, tokenizer, model_cfg, str(stage), run_config(stage))
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{spec}: not a run dir (with dmpo/ or sft/), a stage dir (with {LINEAGE}) "
            "or a model dir (with config.json)"
        )
    if not path.is_dir() and spec.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"{spec}: no such directory")
    try:
        model_cfg = ModelConfig(name=spec)
    except ValidationError as e:
        raise ConfigError(f"--model {spec}: {e.errors()[0]['msg']}") from None
    try:
        tokenizer = load_tokenizer(model_cfg)  # fails fast (and cheaply) for a bad name
    except ValueError as e:  # an unknown builtin or a malformed hub id
        raise ConfigError(f"--model {spec}: {e}") from None
    except OSError as e:
        raise FileNotFoundError(f"{spec}: cannot load a model from it ({e})") from None
    model = load_base_model(model_cfg, device)
    return Ranker.create(model, tokenizer, model_cfg, spec)


def ranked_items(
    titles: Sequence[str], scores: Sequence[float], k: int | None = None
) -> list[dict[str, Any]]:
    """[{rank, title, score}] best first (ties keep the input order), the first k if given."""
    return [
        {"rank": r, "title": titles[i], "score": round(s, 6)}
        for r, (i, s) in enumerate(top_k(titles, scores, k), 1)
    ]


@dataclass(frozen=True)
class UserQuery:
    user: str
    candidates: list[str]  # as given, for display
    request: RankRequest  # cleaned titles, for the model
    record: int | None = None  # its index in the --users file


def n_prompts(n_candidates: int) -> int:
    """Prompts a list of n candidates costs: every pair in both listing orders."""
    return n_candidates * (n_candidates - 1)


def check_query(
    request: RankRequest,
    max_candidates: int,
    *,
    file: str | Path | None = None,
    record: int | None = None,
) -> RankRequest:
    """`request`, unless it has more than `max_candidates` candidates or one of its history's
    titles (ranking.check_unseen): DataError naming the field."""
    n = len(request.candidates)
    if n > max_candidates:
        raise DataError(
            f"{n} candidates ({n_prompts(n)} prompts) is over --max-candidates={max_candidates} "
            f"({n_prompts(max_candidates)} prompts); raise --max-candidates to rank them all",
            file=file,
            record=record,
            field="candidates",
        )
    return check_unseen(request, file=file, record=record)


def _titles(value: Any, file: Path, index: int, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise DataError("expected a list of title strings", file=file, record=index, field=key)
    return value


def read_users(
    path: Path, norm: TitleNormalization, domain: str, max_candidates: int = MAX_CANDIDATES
) -> list[UserQuery]:
    """The --users file: a JSON list of {"user", "history", "candidates"[, "domain"]}, every
    record checked (`clean_request`, `check_query`); no model needed."""
    text = read_text_file(path)
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg} at line {e.lineno})", file=path) from None
    if not isinstance(entries, list) or not entries:
        raise DataError("expected a non-empty JSON list of users", file=path)
    queries = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"expected an object, got {type(entry).__name__}", file=path, record=i)
        for key in ("history", "candidates"):
            if key not in entry:
                raise DataError("missing", file=path, record=i, field=key)
        history = _titles(entry["history"], path, i, "history")
        candidates = _titles(entry["candidates"], path, i, "candidates")
        request = clean_request(
            history, candidates, entry.get("domain", domain), norm, file=path, record=i
        )
        request = check_query(request, max_candidates, file=path, record=i)
        queries.append(UserQuery(str(entry.get("user", i)), candidates, request, i))
    return queries


def read_queries(args: argparse.Namespace, norm: TitleNormalization) -> list[UserQuery]:
    """The users to rank, from --users or --history/--candidates, checked before any model loads."""
    if args.users:
        return read_users(Path(args.users), norm, args.domain, args.max_candidates)
    request = clean_request(args.history, args.candidates, args.domain, norm)
    return [UserQuery("-", list(args.candidates), check_query(request, args.max_candidates))]


def bound_query(ranker: Ranker, query: UserQuery, file: Path | None) -> UserQuery:
    """`query` with its history cut to data.max_prompt_tokens, saying so on stderr (as training
    and evaluation count what they cut)."""
    request = ranker.bounded(query.request, file=file, record=query.record)
    kept, given = len(request.history), len(query.request.history)
    if kept < given:
        who = "the history" if file is None else f"user {query.user}'s history"
        print(
            f"recommend: {who} is over data.max_prompt_tokens={ranker.data_cfg.max_prompt_tokens} "
            f"tokens with its candidates: kept its newest {kept} of {given} titles "
            "(data.overlong=refuse stops instead)",
            file=sys.stderr,
        )
    return replace(query, request=request)


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
    queries = read_queries(args, title_normalization(args.model))
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
    results = []
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
    if args.json:
        doc: dict[str, Any] = {"model": ranker.name}
        doc.update({"users": results} if args.users else {"ranked": results[0]["ranked"]})
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        print(f"model: {ranker.name}")
        for r in results:
            print(("" if not args.users else f"\nuser {r['user']}\n") + format_table(r["ranked"]))
    return 0


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
    name = ranker.name if ranker is not None else args.model
    if args.json:
        out: dict[str, Any] = {"model": name, **({"user": user} if user else {}), **doc}
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print(f"model: {name}\n{format_top_k(doc)}")
    return 0


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
    parser.add_argument("--users", metavar="FILE.json", help="rank a JSON list of users instead")
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
    top = parser.add_argument_group(
        "top-K from the catalogue (no --candidates)",
        "The catalogue is the run's training items (RUN/catalogue.jsonl, written on first use; "
        "`export` copies it). A retriever draws M candidates from it, the model reranks them "
        "and the two orders are fused: by the run's hybrid (STAGE/hybrid/model.json) if it has "
        "one, else by reciprocal rank. Each item shows its retriever rank, LLM score and fused "
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
