"""Zero-shot, SFT, DPO (k=1) and DMPO (k=3) on the authors' Amazon Movies and TV files.

    .venv/bin/python benchmarks/amazon_movies.py [--eval-pairs 1000] [--out runs/bench-amazon-movies]

Packaged SmolLM2-135M-Instruct, fp32 on CPU, settings of configs/amazon-movies-smollm2.yaml.
DPO and DMPO start from the same SFT adapter and read the same 100 users
(rec_Amazon_Movie_dpo_ranking_3.json: k=1 keeps each user's first negative). Prints a table and
writes results.json (OUT and benchmarks/results/amazon_movies.json) after every stage, so a run cut short still reports what finished; finished
stages are reused when it is started again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dmporec.config import RunConfig, load_config
from dmporec.files import atomic_write_text
from dmporec.stages.dmpo import run_dmpo
from dmporec.stages.pipeline import evaluate_row
from dmporec.stages.sft import run_sft
from dmporec.tables import summary_table

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "amazon-movies-smollm2.yaml"
RESULTS = Path(__file__).resolve().parent / "results" / "amazon_movies.json"


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

    def record(name: str, cfg: RunConfig, stage: str, train_dir: Path | None) -> None:
        rows.append(evaluate_row(cfg, stage, name, train_dir))
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "config": str(CONFIG),
            "eval_pairs": args.eval_pairs,
            "overrides": args.overrides,
            "rows": rows,
            "table": summary_table(rows),
        }
        for path in (out / "results.json", RESULTS):
            atomic_write_text(path, json.dumps(result, indent=2) + "\n")
        print(result["table"], flush=True)

    record("zero-shot", main_cfg, "zero_shot", None)
    sft_dir = run_sft(main_cfg)
    record("SFT", main_cfg, "sft", sft_dir)
    record("DPO (k=1)", dpo_cfg, "dmpo", run_dmpo(dpo_cfg, sft_dir))
    record(f"DMPO (k={main_cfg.dmpo.k})", main_cfg, "dmpo", run_dmpo(main_cfg, sft_dir))


if __name__ == "__main__":
    main()
