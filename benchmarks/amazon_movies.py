"""Zero-shot, SFT, DPO (k=1) and DMPO (k=3) on the authors' Amazon Movies and TV files.

    .venv/bin/python benchmarks/amazon_movies.py [--eval-pairs 1000] [--out runs/bench-amazon-movies]

Packaged SmolLM2-135M-Instruct, fp32 on CPU, settings of configs/amazon-movies-smollm2.yaml.
DPO and DMPO start from the same SFT adapter and read the same 100 users
(rec_Amazon_Movie_dpo_ranking_3.json: k=1 keeps each user's first negative). Prints a table and
writes results.json after every stage, so a run cut short still reports what finished; finished
stages are reused when it is started again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dmporec.config import load_config
from dmporec.records import atomic_write_text
from dmporec.stages.common import read_summary
from dmporec.stages.dmpo import run_dmpo
from dmporec.stages.evaluate import run_evaluate
from dmporec.stages.sft import run_sft

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "amazon-movies-smollm2.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/bench-amazon-movies")
    parser.add_argument(
        "--eval-pairs", type=int, default=1000, help="first N test pairs (1000 = all)"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. sft.epochs=2")
    args = parser.parse_args()
    out = Path(args.out)
    base = load_config(CONFIG, [f"data.max_eval_pairs={args.eval_pairs}", *args.overrides])
    main_cfg = base.model_copy(update={"output_dir": str(out / "main")})
    dpo_cfg = main_cfg.model_copy(
        update={
            "output_dir": str(out / "dpo-k1"),
            "dmpo": main_cfg.dmpo.model_copy(update={"k": 1}),
        }
    )
    rows: list[dict] = []

    def record(name: str, cfg, stage: str, train_dir: Path | None) -> None:
        t0 = time.perf_counter()
        metrics = run_evaluate(cfg, stage)
        eval_dir = Path(cfg.output_dir) / ("zero_shot" if stage == "zero_shot" else f"{stage}/eval")
        train = read_summary(train_dir) if train_dir else {}
        ev = read_summary(eval_dir) or {"wall_s": round(time.perf_counter() - t0, 1)}
        rows.append(
            {
                "model": name,
                **{
                    k: metrics[k]
                    for k in (
                        "pairs",
                        "accuracy",
                        "accuracy_ci_low",
                        "accuracy_ci_high",
                        "auc",
                        "auc_ci_low",
                        "auc_ci_high",
                        "auc_stable",
                        "first_listed_rate",
                    )
                },
                "train_wall_s": (train or {}).get("wall_s"),
                "train_peak_rss_mib": (train or {}).get("peak_rss_mib"),
                "eval_wall_s": ev.get("wall_s"),
                "eval_peak_rss_mib": ev.get("peak_rss_mib"),
            }
        )
        atomic_write_text(
            out / "results.json",
            json.dumps(
                {"config": str(CONFIG), "eval_pairs": args.eval_pairs, "rows": rows}, indent=2
            )
            + "\n",
        )
        print(table(rows), flush=True)

    record("zero-shot", main_cfg, "zero_shot", None)
    sft_dir = run_sft(main_cfg)
    record("SFT", main_cfg, "sft", sft_dir)
    record("DPO (k=1)", dpo_cfg, "dmpo", run_dmpo(dpo_cfg, sft_dir))
    record(f"DMPO (k={main_cfg.dmpo.k})", main_cfg, "dmpo", run_dmpo(main_cfg, sft_dir))


def table(rows: list[dict]) -> str:
    lines = [
        "| model | pairs | accuracy [95% CI] | AUC coin-flip [95% CI] | AUC stable | first-listed | train s | train peak MiB | eval s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['pairs']} | {r['accuracy']:.3f} [{r['accuracy_ci_low']:.3f}, {r['accuracy_ci_high']:.3f}] "
            f"| {r['auc']:.3f} [{r['auc_ci_low']:.3f}, {r['auc_ci_high']:.3f}] | {r['auc_stable']:.3f} "
            f"| {r['first_listed_rate']:.2f} | {r['train_wall_s'] or '-'} | {r['train_peak_rss_mib'] or '-'} | {r['eval_wall_s']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
