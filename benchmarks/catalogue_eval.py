"""Top-10 from a run's catalogue evaluated as recommender papers report it (issue #35, items 6
and 3): HR@10 and NDCG@10 of each test user's positive, for the classic scorers, the LLM
reranking the retriever's top M, and the fused ranking; and the pivot rerank against all pairs.

    .venv/bin/python benchmarks/catalogue_eval.py --model RUN [--test FILE] [--valid FILE]
        [--out DIR] [--part all|list-hybrid|test|agreement] [--llm-users 200]
        [--valid-users 25] [--list-users 100] [--install] [--retrieve 20] [--pivots 2]
        [--sampled 100] [--protocols full,sampled]

Candidates. The catalogue is the run's (RUN/catalogue.jsonl if it has one, else built from its
training records as `recommend` builds it; never written). A user is known to have rated their
history and their record's negatives: that is all the data files say (the authors' files hold a
window of a user's last 40 ratings; the history is its positives, the negatives some of its
rated-low items; nothing outside the window is known, so an "unrated" candidate may have been
rated). Each test user's positive is ranked among (a) full: every catalogue title they are not
known to have rated, (b) sampled: 100 of those drawn uniformly (seeded per user), the SASRec
protocol (dmporec.listwise.unrated_candidates). A positive the catalogue lacks is added to
that user's candidates only (papers rank every item), at a seeded random place among the
catalogue's uncounted titles, and counted in the output.

Rows. The classic scorers of dmporec.baselines.fit_scorers (random, popularity, BPR-MF,
like-rate (fitted on the training users' labels), ALS,
MiniLM similarity, and SASRec where Cornac is installed; one not installed is skipped with a
printed line), fitted as the hybrid stage fits them: on the run's training histories plus the
evaluated users' histories (a history is model input, never a label); each scores every
candidate, ties averaged over random tie-breaks. The retriever is the `recommend --retriever`
choice with the best full NDCG@10 on the validation users (chosen there only). llm: the
retriever's top M (among the user's candidates, as `recommend` retrieves; its ties broken by
catalogue order, as there) reordered by the LLM's pivot rerank, the rest after them in the
retriever's order. fused: the run's pair hybrid (STAGE/hybrid/model.json) over the same M, as
`recommend` fuses with it, or reciprocal-rank fusion without one (where a list hybrid is
installed, `recommend` returns the fused-list row instead, below). The LLM rows
cover --llm-users test users (a seeded draw), and every classic row is reported on the same
users too, for the paired tests.

Statistics. Means with 95% percentile bootstrap CIs over users; paired tests between rows on
the same users: the mean difference of per-user NDCG@10 (and HR@10) with its paired bootstrap
CI, and the two-sided Wilcoxon signed-rank p-value of the per-user NDCG@10 differences, users
where both rows score the same left out (dmporec.metrics.paired_user_test).

Agreement (issue #35, item 3). On --valid-users validation users (a seeded draw), the pivot
rerank and all pairs over the same top M of the full catalogue: the positive's NDCG@10 under
each (LLM order and fused), top-10 overlap and Kendall tau between the two orders (over the M,
and over all pairs' top 10), NDCG@10 of pivot's LLM order with all-pairs' as graded truth
(relevance M - rank), prompts and seconds per request. Few validation users have their positive
in the top M, so the positive's NDCG@10 compares the two on those few; the order agreement
uses every user.

Resuming. LLM results are appended per user to DIR/test-llm.jsonl and DIR/agreement.jsonl, whose
first line holds the settings they were made with; a rerun reuses them, refuses other settings
(naming them) and checks each reused user's retrieved candidates against this run's. The caches
hold the LLM's scores, not the fusion: the fused rows are made from them when read, with the
stage's hybrid as it is when the run begins (test.json and agreement.json name its file and
digest), so refitting a hybrid never costs an LLM pass. Writes
DIR/test.json and DIR/agreement.json (every row's per-user values, so rows can be paired later)
and prints tables. The LLM's seconds are those of the machine; run it alone.

List hybrid (dmporec.list_hybrid). On --list-users validation users (a seeded draw), each
user's sampled list (the positive and --sampled unrated titles, the test protocol's) is reranked
as `recommend` reranks it (cached in DIR/valid-llm.jsonl, resumed like the test users'), and the
hybrid's weights are fitted on the (positive, other candidate) pairs of those lists: what
`recommend` ranks, unrated titles, where the pair hybrid was fitted on rated pairs. Writes
DIR/list-model.json, DIR/list-classic-model.json (the same fit without the LLM: what the LLM
adds is fused-list's paired test against it) and DIR/list-hybrid.json (weights, settings,
users); --install also writes the first to STAGE/hybrid/list-model.json, which `recommend` and
`serve` then rank with. The test part adds the rows fused-list and fused-list-classic (over the
cached scores of the same M candidates, no LLM call) when DIR holds list hybrids made with these
settings, and the target is then fused-list's; the fused row stays the pair hybrid's (or RRF).

The per-user steps are dmporec.topk_eval's, the statistics over users dmporec.topk_stats'.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dmporec.baselines import fit_scorers
from dmporec.catalogue import (
    CATALOGUE,
    RETRIEVERS,
    Catalogue,
    catalogue_from_records,
    catalogue_text,
    read_catalogue,
    training_records,
)
from dmporec.config import ConfigError, RunConfig
from dmporec.data import load_records, training_labels
from dmporec.files import atomic_write_text, files_digest
from dmporec.hybrid import SELECTED_BY, Hybrid
from dmporec.list_hybrid import adapters_digest, fit_list_hybrid, install, list_fused
from dmporec.ranker import Ranker, find_stage, load_ranker, run_config
from dmporec.records import DataError, Record
from dmporec.rerank import PIVOTS, RETRIEVE
from dmporec.stages.common import fingerprint, read_settings
from dmporec.topk_eval import (
    K,
    ResultCache,
    candidate_sets,
    check_reused,
    classic_ranks,
    differences,
    draw,
    fit_with_sasrec,
    fused_now,
    ndcg_of,
    recommender,
    rerank_user,
    reranked_rank,
    say,
    with_positives,
)
from dmporec.topk_stats import (
    FUSED_ROW,
    LIST_CLASSIC_ROW,
    LIST_ROW,
    LLM_ROW,
    PROTOCOLS,
    agreement_of,
    agreement_results,
    protocol_results,
)

SAMPLED = 100
# Settings older caches recorded that no longer bear on them: the pair hybrid's digest (the fused
# rows are made when read, topk_eval.fused_now).
RETIRED = ("hybrid",)
# Under --out: the list hybrid, the same fit without the LLM, and what they were fitted on.
LIST_MODELS = {LIST_ROW: "list-model.json", LIST_CLASSIC_ROW: "list-classic-model.json"}
LIST_DOC = "list-hybrid.json"


@dataclass
class Setup:
    stage: Path
    cfg: RunConfig
    train: list[Record]
    catalogue: Catalogue  # the run's
    files: dict[str, Path]  # test, valid


def load_setup(args: argparse.Namespace) -> Setup:
    stage = find_stage(Path(args.model).expanduser())
    cfg = run_config(stage) if stage is not None else None
    if stage is None or cfg is None:
        raise ConfigError(f"--model {args.model}: not a trained run (a run or stage directory)")
    files = {
        "test": Path(args.test or cfg.data.eval or ""),
        "valid": Path(args.valid or cfg.data.valid or ""),
    }
    for name, path in files.items():
        if not path.is_file():
            raise ConfigError(
                f"--{name}: {path or 'not given'}: no such file (the run's config names "
                f"{cfg.data.eval if name == 'test' else cfg.data.valid})"
            )
    train = training_records(cfg)
    path = stage.parent / CATALOGUE
    norm = cfg.data.title_normalization
    catalogue = (
        read_catalogue(path, norm)
        if path.is_file()
        else catalogue_from_records(train, "the run's training data")
    )
    return Setup(stage, cfg, train, catalogue, files)


def split_records(setup: Setup, name: str) -> list[Record]:
    records = load_records(setup.files[name], setup.cfg.data.title_normalization)
    shared = {r.user_id for r in records} & {r.user_id for r in setup.train}
    if shared:
        raise DataError(
            f"{len(shared)} user ids are also training users' (e.g. {sorted(shared)[0]!r}): "
            "the classic scorers are fitted on both and would merge them",
            file=setup.files[name],
        )
    return records


def common_settings(setup: Setup, args: argparse.Namespace, split: str) -> dict[str, Any]:
    """What the cached LLM reranks depend on. Not the stage's hybrid: the fused rows are made
    from the cached LLM scores when read (topk_eval.fused_now)."""
    data = setup.cfg.data
    train = dict.fromkeys(Path(f) for f in (data.sft_train, data.dmpo_train) if f)
    return {
        "model.settings": fingerprint(read_settings(setup.stage) or {}),
        "model.adapters": adapters_digest(setup.stage),
        "data.train": files_digest(*train),
        f"data.{split}": files_digest(setup.files[split]),
        "data.valid": files_digest(setup.files["valid"]),  # the retriever is chosen there
        "data.title_normalization": data.title_normalization.model_dump(),
        "data.max_prompt_tokens": data.max_prompt_tokens,
        "catalogue": fingerprint(catalogue_text(setup.catalogue)),
        "retrieve": args.retrieve,
        "pivots": args.pivots,
        "seed": setup.cfg.eval.seed,
    }


def run_test(args, setup: Setup, retriever: str, ranker_of, out: Path) -> None:
    seed, n_boot = setup.cfg.eval.seed, setup.cfg.eval.n_boot
    test = split_records(setup, "test")
    catalogue = with_positives(setup.catalogue, test, seed)
    added = len(catalogue) - len(setup.catalogue)
    say(
        f"catalogue_eval: {len(test):,} test users; {len(setup.catalogue):,} catalogue titles; "
        f"{added} test positives not among them, added to their users' candidates"
    )
    chosen = args.protocols.split(",")
    sets = candidate_sets(setup.catalogue, catalogue, test, args.sampled, seed)
    scorers = fit_with_sasrec([*setup.train, *test], seed, labelled=training_labels(setup.cfg.data))
    classic = {p: classic_ranks(scorers, test, sets[p], f"test users, {p} ranking") for p in chosen}
    llm_idx = draw(len(test), min(args.llm_users, len(test)), seed, "llm-users")
    settings = {
        **common_settings(setup, args, "test"), "sampled": args.sampled, "retriever": retriever,
    }  # fmt: skip
    if chosen != list(PROTOCOLS):  # a cache of both protocols stays valid for the default
        settings["protocols"] = chosen
    lists: dict[str, Hybrid] = {}
    by_name = {s.name: s for s in scorers}
    llm: dict[str, dict[str, dict[str, list[float]]]] = {p: {} for p in chosen}
    seconds: dict[str, list[float]] = {p: [] for p in chosen}
    prompts: dict[str, list[int]] = {p: [] for p in chosen}
    fusion: dict[str, Any] = {"fusion": None, "file": None, "digest": None}
    if llm_idx:
        rec, fusion = recommender(
            setup.stage, setup.cfg.data.title_normalization, catalogue, retriever, scorers
        )
        cache = ResultCache(out / "test-llm.jsonl", settings, RETIRED)
        lists = read_list_hybrids(setup, args, out, retriever)
        for i in tqdm(llm_idx, desc="LLM rerank (test users)", unit="user", file=sys.stderr):
            record = test[i]
            result = cache.results.get(record.user_id)
            if result is None:
                result = {"user": record.user_id}
                for p in chosen:
                    result[p] = rerank_user(
                        rec, ranker_of(), record, sets[p][i], m=args.retrieve, rerank="pivot",
                        pivots=args.pivots,
                    )  # fmt: skip
                cache.add(result)
            else:
                for p in chosen:
                    check_reused(rec, record, sets[p][i], args.retrieve, result[p], cache.path)
            for p in chosen:
                scored = {LLM_ROW: result[p]["llm"], FUSED_ROW: fused_now(rec, result[p], record)} | {
                    row: list_fused(hybrid, result[p], record, by_name)
                    for row, hybrid in lists.items()
                }  # fmt: skip
                for row, scores in scored.items():
                    rank, ties = reranked_rank({**result[p], "scores": scores}, "scores")
                    llm[p].setdefault(row, {"rank": [], "ties": []})
                    llm[p][row]["rank"].append(rank)
                    llm[p][row]["ties"].append(ties)
                seconds[p].append(result[p]["seconds"])
                prompts[p].append(result[p]["prompts"])
    protocols, table, tests_table, targets = protocol_results(
        classic, llm, llm_idx, len(test), n_boot, seed
    )
    print("\n".join(table) + "\n\n" + "\n".join(tests_table) + "\n" + "\n".join(targets))
    doc = {
        **header(args),
        "settings": settings,
        "test_file": str(setup.files["test"]),
        "catalogue": {
            "titles": len(setup.catalogue),
            "source": setup.catalogue.source,
            "positives_added": added,
        },  # fmt: skip
        "rated": "history and the record's negatives (all the data files say a user rated)",
        "fitted_on": f"{len(setup.train):,} training users' histories + the test histories",
        "retriever": retriever,
        "fusion": fusion["fusion"],
        "fusion_file": fusion_file(fusion),
        "list_hybrids": {
            row: {"file": str(out / LIST_MODELS[row]), "weights": h.table()}
            for row, h in lists.items()
        },  # fmt: skip
        "k": K,
        "llm_users": len(llm_idx),
        "llm_per_request": {
            p: {
                "seconds_mean": float(np.mean(seconds[p])),
                "prompts_mean": float(np.mean(prompts[p])),
            }
            for p in chosen
            if seconds[p]
        },
        "llm_seconds_per_user": sum(float(np.mean(v)) for v in seconds.values() if v) or None,
        "protocols": protocols,
        "table": "\n".join(table),
        "tests_table": "\n".join(tests_table),
        "per_user": {
            "users": [r.user_id for r in test],
            "llm_users": [test[i].user_id for i in llm_idx],
            "classic": classic,  # aligned with "users"
            "llm": llm,  # aligned with "llm_users"
        },
    }
    atomic_write_text(out / "test.json", json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    say(f"catalogue_eval: wrote {out / 'test.json'}")


def fusion_file(fusion: dict[str, Any]) -> dict[str, str] | None:
    """The pair hybrid the fused rows were made with (its file and digest, as it was read when
    the run began), or None (reciprocal rank)."""
    return {"file": fusion["file"], "digest": fusion["digest"]} if fusion["file"] else None


def list_settings(setup: Setup, args: argparse.Namespace, retriever: str) -> dict[str, Any]:
    return {
        **common_settings(setup, args, "valid"), "sampled": args.sampled, "retriever": retriever,
        "list_users": args.list_users,
    }  # fmt: skip


def read_list_hybrids(
    setup: Setup, args: argparse.Namespace, out: Path, retriever: str
) -> dict[str, Hybrid]:
    """DIR's list hybrids by row ({} without them); ConfigError when they were made with other
    settings."""
    path = out / LIST_DOC
    if not path.is_file() or not args.list_users:
        return {}
    try:
        doc = json.loads(path.read_text())
        then = doc["settings"]
        fitted = {row: Hybrid.from_dict(doc["hybrids"][row]) for row in LIST_MODELS}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a list hybrid this script wrote ({e!r}); delete it or "
                          "use another --out") from None  # fmt: skip
    older = sorted({h.selected_by for h in fitted.values()} - {SELECTED_BY})
    if older:
        raise ConfigError(
            f"{path}: the list hybrid's C was chosen by {', '.join(older)}, not {SELECTED_BY} as "
            "Hybrid.fit chooses it now; run --part list-hybrid again (its LLM reranks are reused)"
        )
    said = differences(then, list_settings(setup, args, retriever), RETIRED)
    if said:
        raise ConfigError(
            f"{path}: the list hybrid was fitted with other settings ({said}); run --part "
            "list-hybrid with these, or use another --out"
        )
    return fitted


def run_list_hybrid(
    args, setup: Setup, retriever: str, valid, catalogue, scorers, ranker_of, out: Path
) -> None:
    """Fit the list hybrid on --list-users validation users' sampled lists (module docstring)."""
    seed = setup.cfg.eval.seed
    idx = draw(len(valid), min(args.list_users, len(valid)), seed, "list-hybrid-users")
    sets = candidate_sets(setup.catalogue, catalogue, valid, args.sampled, seed)["sampled"]
    settings = list_settings(setup, args, retriever)
    rec, _ = recommender(
        setup.stage, setup.cfg.data.title_normalization, catalogue, retriever, scorers
    )
    cache = ResultCache(out / "valid-llm.jsonl", {k: v for k, v in settings.items()
                                                   if k != "list_users"}, RETIRED)  # fmt: skip
    results = []
    for i in tqdm(idx, desc="LLM rerank (list hybrid, validation users)", unit="user",
                  file=sys.stderr):  # fmt: skip
        record = valid[i]
        result = cache.results.get(record.user_id)
        if result is None:
            result = {"user": record.user_id, "sampled": rerank_user(
                rec, ranker_of(), record, sets[i], m=args.retrieve, rerank="pivot",
                pivots=args.pivots,
            )}  # fmt: skip
            cache.add(result)
        else:
            check_reused(rec, record, sets[i], args.retrieve, result["sampled"], cache.path)
        results.append(result["sampled"])
    by_name = {s.name: s for s in scorers}
    fitted = {}
    for row, with_llm in ((LIST_ROW, True), (LIST_CLASSIC_ROW, False)):
        try:
            fitted[row], left_out = fit_list_hybrid(
                results, [valid[i] for i in idx], by_name, llm=with_llm
            )
        except ValueError as e:
            raise ConfigError(f"list hybrid: {e} (--list-users {args.list_users})") from None
    hybrid = fitted[LIST_ROW]
    table = "\n\n".join(f"{row}: {h.table()}" for row, h in fitted.items())
    print(
        f"list hybrid over {len(idx) - left_out} validation users' lists (1 + {args.sampled} "
        f"unrated, the top {args.retrieve} of {retriever} reranked; {left_out} left out: their "
        f"positive not among them, or no history), and the same fit without the LLM:\n{table}"
    )
    for row, h in fitted.items():
        h.save(out / LIST_MODELS[row])
    doc = {
        **header(args),
        "settings": settings,
        "valid_file": str(setup.files["valid"]),
        "users": [valid[i].user_id for i in idx],
        "left_out": left_out,
        "retriever": retriever,
        "hybrids": {row: asdict(h) for row, h in fitted.items()},
        "table": table,
    }
    atomic_write_text(out / LIST_DOC, json.dumps(doc, indent=1) + "\n")
    say(f"catalogue_eval: wrote {', '.join(LIST_MODELS.values())} and {LIST_DOC} in {out}")
    if args.install:
        where = install(hybrid, setup.stage, settings)
        say(
            f"catalogue_eval: installed as {where}: `recommend` and `serve` rank with it "
            "(--no-hybrid turns it off)"
        )


def run_agreement(
    args, setup: Setup, retriever: str, valid, catalogue, sets, scorers, ranker_of, out: Path
) -> None:
    seed, n_boot = setup.cfg.eval.seed, setup.cfg.eval.n_boot
    idx = draw(len(valid), min(args.valid_users, len(valid)), seed, "agreement-users")
    settings = {**common_settings(setup, args, "valid"), "retriever": retriever}
    rec, fusion = recommender(
        setup.stage, setup.cfg.data.title_normalization, catalogue, retriever, scorers
    )
    cache = ResultCache(out / "agreement.jsonl", settings, RETIRED)
    rows = []
    for i in tqdm(idx, desc="pivot vs all pairs (validation users)", unit="user", file=sys.stderr):
        record = valid[i]
        full = sets[i]
        result = cache.results.get(record.user_id)
        if result is None:
            result = {"user": record.user_id}
            for mode in ("pivot", "all-pairs"):
                result[mode] = rerank_user(
                    rec, ranker_of(), record, full, m=args.retrieve, rerank=mode, pivots=args.pivots
                )
            if result["pivot"]["retrieved"] != result["all-pairs"]["retrieved"]:
                raise AssertionError("pivot and all-pairs reranked different candidates")
            cache.add(result)
        else:
            check_reused(rec, record, full, args.retrieve, result["pivot"], cache.path)
        pivot, every = ({**result[m], "fused": fused_now(rec, result[m], record)}
                        for m in ("pivot", "all-pairs"))  # fmt: skip
        rows.append({"user": record.user_id, **agreement_of(
            pivot, every, result["pivot"]["positive_position"]
        ), **{f"{mode}_{key}": result[mode][key] for mode in ("pivot", "all-pairs")
              for key in ("prompts", "seconds")}})  # fmt: skip
    title = (
        f"pivot (P={args.pivots}) vs all pairs over the same top {args.retrieve} of {retriever}, "
        f"{len(rows)} validation users:"
    )
    means, tests, lines = agreement_results(rows, title, n_boot, seed)
    print("\n".join(lines))
    doc = {
        **header(args),
        "settings": settings,
        "valid_file": str(setup.files["valid"]),
        "users": len(rows),
        "retriever": retriever,
        "fusion": fusion["fusion"],  # the fused_* statistics'
        "fusion_file": fusion_file(fusion),
        "means": means,
        "tests": tests,
        "table": "\n".join(lines),
        "per_user": rows,
    }
    atomic_write_text(out / "agreement.json", json.dumps(doc, indent=1) + "\n")
    say(f"catalogue_eval: wrote {out / 'agreement.json'}")


def header(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "date": date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "torch_threads": torch.get_num_threads(),
        "model": args.model,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="the trained run (or stage) directory")
    parser.add_argument("--test", help="test users (default: the run's data.eval)")
    parser.add_argument(
        "--valid", help="validation users: the retriever's choice, the agreement (data.valid)"
    )
    parser.add_argument(
        "--out",
        default="runs/catalogue-eval",
        help="where results go (default runs/catalogue-eval)",
    )
    parser.add_argument(
        "--part",
        choices=("all", "list-hybrid", "test", "agreement"),
        default="all",
        help="list-hybrid: fit the list hybrid on validation users' sampled lists; test: the "
        "rows on the test users; agreement: pivot vs all pairs on validation users; all: the "
        "three in that order",
    )
    parser.add_argument(
        "--llm-users", type=int, default=200, help="test users the LLM rows cover (default 200)"
    )
    parser.add_argument(
        "--valid-users",
        type=int,
        default=25,
        help="validation users of the agreement (all pairs: M(M-1) prompts each; default 25)",
    )
    parser.add_argument(
        "--list-users",
        type=int,
        default=100,
        help="validation users whose sampled lists fit the list hybrid (default 100; 0: none)",
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help="write the fitted list hybrid to STAGE/hybrid/list-model.json, where `recommend` "
        "and `serve` rank with it",
    )
    parser.add_argument(
        "--retrieve", type=int, default=RETRIEVE, help=f"M, reranked (default {RETRIEVE})"
    )
    parser.add_argument(
        "--pivots", type=int, default=PIVOTS, help=f"P of the pivot rerank (default {PIVOTS})"
    )
    parser.add_argument(
        "--sampled",
        type=int,
        default=SAMPLED,
        help=f"unrated titles drawn per user in the sampled protocol (default {SAMPLED})",
    )
    parser.add_argument(
        "--protocols",
        default=",".join(PROTOCOLS),
        help="which test rankings to run, comma-separated: full (the catalogue), sampled (1 + "
        "--sampled); default both. `--protocols sampled --sampled 19 --retrieve 20` is the "
        "LLaRA / S-DPO protocol, the LLM reranking all 20 candidates",
    )
    args = parser.parse_args(argv)
    for name in ("llm_users", "valid_users", "list_users", "retrieve", "pivots", "sampled"):
        if getattr(args, name) < (0 if name.endswith("users") else 1):
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.protocols or set(args.protocols.split(",")) - set(PROTOCOLS):
        parser.error(f"--protocols {args.protocols!r}: a comma-separated subset of {PROTOCOLS}")
    if args.part == "list-hybrid" and not args.list_users:
        parser.error("--part list-hybrid needs --list-users of at least 1")
    if args.install and (args.part not in ("all", "list-hybrid") or not args.list_users):
        parser.error("--install installs the list hybrid: it needs --part all or list-hybrid "
                     "and --list-users of at least 1")  # fmt: skip
    if args.retrieve < K:
        parser.error(f"--retrieve must be at least {K}: the top {K} come from it")
    try:
        setup = load_setup(args)
        out = Path(args.out)
        seed = setup.cfg.eval.seed
        valid = split_records(setup, "valid")
        say(f"catalogue_eval: fitting the classic scorers on {len(setup.train):,} training + "
            f"{len(valid):,} validation users' histories")  # fmt: skip
        scorers = fit_scorers(
            [*setup.train, *valid], seed=seed, say=say, labelled=training_labels(setup.cfg.data)
        )
        catalogue = with_positives(setup.catalogue, valid, seed)
        sets = candidate_sets(setup.catalogue, catalogue, valid, None, seed)["full"]
        ranks = classic_ranks(scorers, valid, sets, "validation users, full ranking")
        choice = {n: float(ndcg_of(r).mean()) for n, r in ranks.items() if n in RETRIEVERS}
        retriever = max(choice, key=lambda n: (choice[n], -RETRIEVERS.index(n)))
        say(
            f"catalogue_eval: retriever {retriever} (validation NDCG@{K}, full ranking: "
            + ", ".join(f"{n} {v:.4f}" for n, v in choice.items())
            + ")"
        )
        loaded: list[Ranker] = []

        def ranker_of() -> Ranker:  # loaded once, and only when something is left to score
            if not loaded:
                loaded.append(load_ranker(str(setup.stage)))
            return loaded[0]

        if args.part in ("all", "list-hybrid") and args.list_users:
            run_list_hybrid(args, setup, retriever, valid, catalogue, scorers, ranker_of, out)
        if args.part in ("all", "test"):
            run_test(args, setup, retriever, ranker_of, out)
        if args.part in ("all", "agreement") and args.valid_users:
            run_agreement(args, setup, retriever, valid, catalogue, sets, scorers, ranker_of, out)
    except (ConfigError, DataError) as e:
        print(f"catalogue_eval: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
