"""Classic baselines on the authors' files: random, popularity, BPR-MF, like-rate, ALS, MiniLM,
SASRec.

    .venv/bin/python benchmarks/baselines.py [--n 20] [--seed 0] [--n-boot 1000] [--models ...]
    .venv/bin/python benchmarks/baselines.py --train TRAIN --test TEST --out runs/x.json

For each dataset (rec_Amazon_Movie_*, rec_data_ml_1m_* in ../shared/data/dmpo, or --data), or
the one data set --train/--test name (records or the authors' JSON, titles as they are written):
- Titles: HTML entities decoded, whitespace collapsed; for MovieLens-1M also strip_year=True,
  because the authors' train files drop the release year that the test file keeps.
- Fit: popularity, BPR-MF, ALS and SASRec read the histories of the training users
  (*_sft_ranking.json: 100) and of the test users (*_eval_ranking.json: 1000): a test history is
  the model's input at test time, never a label, and 100 histories alone leave most test titles
  unseen. No test user's positive or negative is ever read by a fit; like-rate (how often the
  training users liked a title when they rated it) reads the training users' labels only. Random and the embedding model need no fit. ALS needs
  `implicit` (the cf extra), SASRec Cornac (the seq extra, its default settings); a model whose
  library is missing is said and left out.
- Pairwise: the 1000 test pairs; chosen = score(positive), rejected = score(negative);
  metrics.pairwise_report (95% bootstrap CIs) and grouped AUC (each test user has one pair
  in these files, so it equals accuracy). Each model is compared with popularity on the same
  pairs (metrics.paired_test: difference in accuracy with its paired-bootstrap CI, McNemar p).
- Listwise: each test user's positive among N=20 candidates, listwise.candidate_sets: 19 titles
  sampled uniformly from the catalog (every title of the training and test records: histories,
  positives, negatives) that the user never rated, seeded per user. Sampled-negative metrics, not
  full-catalog ranking (see dmporec.listwise). Ties are averaged over random tie-breaks.
- Times: "fit s" of the embedding model is loading it and encoding every title it will score
  once (cached); "score s" is scoring the pairs and the candidate sets.
Prints a markdown table per dataset and writes benchmarks/results/baselines.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from dmporec.baselines import (
    ALS,
    BPRMF,
    EmbeddingSimilarity,
    LikeRate,
    Popularity,
    RandomScorer,
    Scorer,
    minilm_encoder,
    positive_ranks,
    users_chosen_rejected,
)
from dmporec.data import load_records
from dmporec.files import atomic_write_text
from dmporec.listwise import CandidateSet, candidate_sets, default_catalog
from dmporec.metrics import (
    grouped_auc,
    listwise_report,
    pair_correct,
    paired_test,
    pairwise_report,
)
from dmporec.records import Record, TitleNormalization

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "baselines.json"
DATASETS = {
    "Amazon Movies and TV": ("rec_Amazon_Movie", TitleNormalization()),
    "MovieLens-1M": ("rec_data_ml_1m", TitleNormalization(strip_year=True)),
}


def evaluate(
    scorer: Scorer, test: list[Record], sets: list[CandidateSet], seed: int, n_boot: int
) -> tuple[dict, np.ndarray]:
    """Pairwise and listwise metrics of one scorer, and its per-pair correctness."""
    start = time.perf_counter()
    users, chosen, rejected = users_chosen_rejected(scorer, test)
    ranks, ties = positive_ranks(scorer, test, sets)
    score_s = time.perf_counter() - start
    metrics = pairwise_report(chosen, rejected, seed=seed, n_boot=n_boot)
    metrics["grouped_auc"] = grouped_auc(users, chosen, rejected)
    metrics.update(listwise_report(ranks, ties, seed=seed, n_boot=n_boot))
    metrics["score_s"] = round(score_s, 1)
    return metrics, pair_correct(chosen, rejected)


def run_dataset(
    train_file: Path, test_file: Path, norm: TitleNormalization, args: argparse.Namespace
) -> dict:
    train = load_records(train_file, norm)
    test = load_records(test_file, norm)
    catalog = default_catalog([*train, *test])
    sets = candidate_sets(test, n=args.n, seed=args.seed, catalog=catalog)

    def fit_embedding() -> EmbeddingSimilarity:
        emb = EmbeddingSimilarity(minilm_encoder())  # every title it will score, in big batches
        histories = {i.title for r in test for i in r.history}
        pairs = {t for r in test for t in (r.positive.title, *(n.title for n in r.negatives))}
        emb.embed(sorted(histories | pairs | {t for titles, _ in sets for t in titles}))
        return emb

    def fit_sasrec() -> Scorer:
        from dmporec.sequential import SASRec

        return SASRec.fit([*train, *test], seed=args.seed)

    fits = {
        "random": lambda: RandomScorer(args.seed),
        "popularity": lambda: Popularity.fit([*train, *test]),
        "BPR-MF": lambda: BPRMF.fit([*train, *test], seed=args.seed),
        "like-rate": lambda: LikeRate.fit(train),  # labels: the training users' only
        "ALS": lambda: ALS.fit([*train, *test], seed=args.seed),
        "embedding (MiniLM)": fit_embedding,
        "SASRec": fit_sasrec,
    }
    rows, correct = [], {}
    for name, fit in fits.items():
        if args.models and name not in args.models and name != "popularity":
            continue  # popularity always: every row is compared with it
        start = time.perf_counter()
        try:
            scorer = fit()
        except ImportError as e:
            print(f"  {name}: skipped ({e})", flush=True)
            continue
        fit_s = time.perf_counter() - start
        metrics, correct[name] = evaluate(scorer, test, sets, args.seed, args.n_boot)
        metrics["fit_s"] = round(fit_s, 1)
        rows.append({"model": name, "metrics": metrics})
        print(f"  {name}: fit {fit_s:.1f} s, score {metrics['score_s']} s", flush=True)
    for row in rows:
        row["vs_popularity"] = paired_test(
            correct[row["model"]], correct["popularity"], seed=args.seed, n_boot=args.n_boot
        )
    return {
        "train": str(train_file),
        "test": str(test_file),
        "train_users": len(train),
        "test_pairs": len(test),
        "catalog_titles": len(catalog),
        "normalization": norm.model_dump(),
        "rows": rows,
        "table": table(rows),
    }


def table(rows: list[dict]) -> str:
    def ci(m: dict, key: str) -> str:
        return f"{m[key]:.3f} [{m[f'{key}_ci_low']:.3f}, {m[f'{key}_ci_high']:.3f}]"

    head = (
        "| model | pairs | accuracy [95% CI] | AUC coin-flip | AUC stable | GAUC | "
        "acc - popularity [95% CI], McNemar p | HR@1 | HR@5 [95% CI] | NDCG@5 | NDCG@10 | MRR "
        "| fit s | score s |\n" + "|---" * 14 + "|"
    )
    lines = [head]
    for row in rows:
        m, vs = row["metrics"], row["vs_popularity"]
        diff = (
            "-"
            if row["model"] == "popularity"
            else f"{vs['difference']:+.3f} [{vs['difference_ci_low']:+.3f}, "
            f"{vs['difference_ci_high']:+.3f}], p={vs['p_value']:.2g}"
        )
        cells = [
            row["model"],
            str(m["pairs"]),
            ci(m, "accuracy"),
            f"{m['auc']:.3f}",
            f"{m['auc_stable']:.3f}",
            f"{m['grouped_auc']:.3f}",
            diff,
            f"{m['hr@1']:.3f}",
            ci(m, "hr@5"),
            f"{m['ndcg@5']:.3f}",
            f"{m['ndcg@10']:.3f}",
            f"{m['mrr']:.3f}",
            f"{m['fit_s']}",
            f"{m['score_s']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dmpo")
    parser.add_argument("--n", type=int, default=20, help="candidates per listwise set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument(
        "--models",
        type=lambda v: [m.strip() for m in v.split(",") if m.strip()],
        default=[],
        help="only these rows, comma-separated (names as in the table: random, BPR-MF, ALS, "
        "'embedding (MiniLM)', SASRec); popularity always runs; default: all",
    )
    parser.add_argument("--train", type=Path, help="one data set's training records ...")
    parser.add_argument("--test", type=Path, help="... and its test pairs (both or neither)")
    parser.add_argument("--name", default="data", help="that data set's name in the output")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON written")
    args = parser.parse_args()
    if (args.train is None) != (args.test is None):
        parser.error("--train and --test go together")
    datasets = (
        {args.name: (args.train, args.test, TitleNormalization())}
        if args.train
        else {
            name: (args.data / f"{p}_sft_ranking.json", args.data / f"{p}_eval_ranking.json", norm)
            for name, (p, norm) in DATASETS.items()
        }
    )
    start = time.perf_counter()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", "benchmarks/baselines.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "args": {k: str(v) for k, v in vars(args).items()},
        "datasets": {},
    }
    for name, (train, test, norm) in datasets.items():
        print(f"{name}:", flush=True)
        result["datasets"][name] = run_dataset(train, test, norm, args)
        print(f"\n### {name}\n\n{result['datasets'][name]['table']}\n", flush=True)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"{result['wall_s']} s in all; wrote {args.out}")


if __name__ == "__main__":
    main()
