"""The hybrid stage: a trained stage's pair margins fused with the classic scorers' (dmporec.hybrid),
fitted on the validation users' pairs, scored on the test pairs with paired tests against every
component.

Per split, the classic scorers are fitted as the baselines row fits them: on the training users'
histories and that split's (a history is model input, never a label; like-rate on the training
users' labels; SASRec too when the config has a `sasrec` section), so the test-side scorers are
the ones the table's baseline rows report. The LLM's margins come from `dmporec evaluate` of
the stage on each split (reused when already scored with the same settings; the validation
pairs into STAGE/hybrid-eval-valid/<the validation file's digest>).

The same fusion fitted on the classic scorers alone (classic-model.json) is scored beside it: what
the LLM adds over combining the classic scorers is the hybrid's paired test against it.

Writes STAGE/hybrid/: model.json (the weights), pairs-valid.jsonl and pairs-test.jsonl (every
component's margin and the fused one, per pair), eval.json (metrics), eval.md (weights, metrics
and paired tests). Recomputed on every call from what the evaluations hold, so it never reuses a
result made with other settings.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from dmporec.baselines import fit_scorers, users_chosen_rejected
from dmporec.config import ConfigError, RunConfig
from dmporec.data import stage_records, training_labels
from dmporec.evaluation import chosen_rejected_scores, read_predictions
from dmporec.files import atomic_write_text
from dmporec.hybrid import LLM, Hybrid, popularity_margin
from dmporec.metrics import grouped_auc, pair_correct, paired_auc_test, paired_test, pairwise_report

HYBRID = "hybrid"
# The stage's scores of the validation pairs the hybrid is fitted on: VALID_EVAL/<file digest>.
VALID_EVAL = "hybrid-eval-valid"
# Components fused: the LLM and every classic scorer but random (noise by construction).
SKIPPED = ("random",)


def _split_pairs(cfg: RunConfig, stage: str, split: str) -> dict[str, Any]:
    """users, per-pair (chosen, rejected) of the LLM and of every classic scorer, on one split."""
    from dmporec.stages.common import file_digest
    from dmporec.stages.evaluate import run_evaluate, stage_dirs

    scfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"split": split})})
    # The validation pairs go to the hybrid's own directory, one per validation file (by its
    # content): STAGE/eval-valid may hold another file's scores (the learning curve's
    # training-pair diagnostics), and fitting on another file keeps the first one's scores.
    where = stage_dirs(scfg, stage)[1]
    if split == "valid":
        d = cfg.data
        key = (
            file_digest(d.valid).removeprefix("sha256:") if d.valid else f"held-out-{d.valid_users}"
        )
        where = stage_dirs(scfg, stage)[0] / VALID_EVAL / key
    run_evaluate(scfg, stage, where)
    rows = read_predictions(where)
    records = stage_records(cfg.data, "eval" if split == "test" else "valid")
    scores = {LLM: chosen_rejected_scores(rows, cfg.eval.orders)}
    users = np.array([r["user_id"] for r in rows])
    fitted = [*stage_records(cfg.data, "sft_train"), *records]
    labelled = training_labels(cfg.data)
    sasrec = cfg.sasrec.model_dump() if cfg.sasrec is not None else None
    for scorer in fit_scorers(fitted, seed=cfg.eval.seed, sasrec=sasrec, labelled=labelled):
        if scorer.name in SKIPPED:
            continue
        who, chosen, rejected = users_chosen_rejected(scorer, records)
        if list(who) != list(users):
            raise ConfigError(
                f"hybrid: the {split} pairs scored by {stage} are not the pairs of the data "
                "file; evaluate the stage again"
            )
        scores[scorer.name] = (chosen, rejected)
    return {"users": users, "scores": scores, "rows": rows}


def margins(scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each component's margin per pair (popularity on a log scale: hybrid.popularity_margin)."""
    return {
        name: popularity_margin(c, r) if name == "popularity" else np.asarray(c) - np.asarray(r)
        for name, (c, r) in scores.items()
    }


def run_hybrid(cfg: RunConfig, stage: str, label: str = "hybrid") -> dict[str, Any]:
    """Fit the hybrid of `stage` ('sft', 'dmpo' or a stage directory) on the validation users
    (data.valid, or data.valid_users held out of training) and score the test pairs. Returns a
    results-table row (with its per-pair scores, both fitted fusions and its paired tests) and
    writes STAGE/hybrid/."""
    from dmporec.stages.evaluate import stage_dirs

    if not cfg.data.valid and not cfg.data.valid_users:
        raise ConfigError(
            "hybrid: needs validation users to fit on (data.valid, or data.valid_users > 0); "
            "test users never touch the fit"
        )
    start = time.perf_counter()
    out = stage_dirs(cfg, stage)[0] / HYBRID
    valid = _split_pairs(cfg, stage, "valid")
    test = _split_pairs(cfg, stage, "test")
    missing = sorted(set(valid["scores"]) ^ set(test["scores"]))
    if missing:
        raise ConfigError(f"hybrid: {', '.join(missing)} scored one split only")
    model = Hybrid.fit(margins(valid["scores"]), valid["users"])
    model.save(out / "model.json")
    # The same fusion without the LLM: what the LLM adds over combining the classic scorers.
    classic_valid = {c: v for c, v in margins(valid["scores"]).items() if c != LLM}
    classic = Hybrid.fit(classic_valid, valid["users"])
    classic.save(out / "classic-model.json")
    fused, fused_classic = {}, {}
    for split, part in (("valid", valid), ("test", test)):
        m = margins(part["scores"])
        fused[split] = model.margin(m)
        fused_classic[split] = classic.margin(m)
        lines = [
            json.dumps(
                {
                    "user_id": row["user_id"],
                    "positive": row["positive"],
                    "negative": row["negative"],
                    **{name: float(v[i]) for name, v in m.items()},
                    "hybrid": float(fused[split][i]),
                    "classic_fusion": float(fused_classic[split][i]),
                }
            )
            for i, row in enumerate(part["rows"])
        ]
        atomic_write_text(out / f"pairs-{split}.jsonl", "".join(f"{line}\n" for line in lines))
    chosen, rejected = fused["test"] / 2, -fused["test"] / 2
    ec = cfg.eval
    metrics: dict[str, Any] = pairwise_report(chosen, rejected, seed=ec.seed, n_boot=ec.n_boot)
    metrics["grouped_auc"] = grouped_auc(test["users"], chosen, rejected)
    metrics["first_listed_rate"] = None
    metrics["valid_accuracy"] = float(np.mean(pair_correct(fused["valid"], -fused["valid"])))

    def pair(a: str, ab: tuple[Any, Any], b: str, bb: tuple[Any, Any]) -> dict[str, Any]:
        """A against B on the test pairs: accuracy (McNemar) and both AUCs (over users)."""
        t = paired_test(pair_correct(*ab), pair_correct(*bb), seed=ec.seed)
        auc = paired_auc_test(test["users"], *ab, *bb, seed=ec.seed, n_boot=ec.n_boot)
        return {"a": a, "b": b, **t, **auc}

    others = {**test["scores"], CLASSIC: (fused_classic["test"] / 2, -fused_classic["test"] / 2)}
    tests = [pair(label, (chosen, rejected), LLM_NAMES.get(n, n), s) for n, s in others.items()]
    # The LLM alone against each classic scorer, on the same pairs (asked for either way).
    llm = test["scores"][LLM]
    llm_tests = [
        pair(f"{out.parent.name} alone", llm, n, s) for n, s in test["scores"].items() if n != LLM
    ]
    wall = round(time.perf_counter() - start, 1)
    atomic_write_text(
        out / "eval.json",
        json.dumps({"model": model.__dict__, "classic_model": classic.__dict__,
                    "metrics": metrics, "paired_tests": tests, "llm_paired_tests": llm_tests,
                    "wall_s": wall}, indent=2) + "\n",
    )  # fmt: skip
    from dmporec.tables import paired_table

    atomic_write_text(
        out / "eval.md",
        f"{model.table()}\n\nWithout the LLM (the same fit on the classic scorers alone):\n\n"
        f"{classic.table()}\n\nTest pairs: accuracy {metrics['accuracy']:.3f} "
        f"[{metrics['accuracy_ci_low']:.3f}, {metrics['accuracy_ci_high']:.3f}], coin-flip AUC "
        f"{metrics['auc']:.3f} [{metrics['auc_ci_low']:.3f}, {metrics['auc_ci_high']:.3f}]; "
        f"validation accuracy {metrics['valid_accuracy']:.3f} (the pairs it was fitted on)."
        f"\n\n{paired_table(tests)}\n\nIts LLM alone against each classic scorer, on the same "
        f"test pairs:\n\n{paired_table(llm_tests)}\n",
    )
    print(model.table())
    return {
        "model": label,
        "hybrid_dir": str(out),
        "metrics": metrics,
        "train_s": wall,
        "eval_s": None,
        "train_peak_rss_mib": None,
        "eval_peak_rss_mib": None,
        "pair_scores": {
            "users": test["users"].tolist(),
            "chosen": chosen.tolist(),
            "rejected": rejected.tolist(),
        },  # fmt: skip
        # As eval.json has them: what an experiment's hybrid evaluation keeps in its row.
        "fusion": model.__dict__,
        "classic_fusion": classic.__dict__,
        "paired_tests": tests,
        "llm_paired_tests": llm_tests,
    }


CLASSIC = "classic_fusion"
LLM_NAMES = {LLM: "its LLM", CLASSIC: "the same fusion without the LLM"}
