"""The `dmporec` command: prepare | sft | dmpo | evaluate | hybrid | run | experiment | report |
recommend | serve | export | download | random-model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dmporec.config import ConfigError, load_config
from dmporec.records import DataError

EPILOG = """overrides: section.key=value, parsed as YAML, e.g.
  dmporec run --config configs/demo.yaml sft.epochs=1 dmpo.k=2 output_dir=runs/try
"""


def _is_main_process() -> bool:
    from dmporec.stages.common import process_state

    return process_state().is_main_process


def _parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line; the model commands' own options (whose modules import torch) are added
    only for the command `argv` names, so `dmporec --help` stays fast."""
    parser = argparse.ArgumentParser(
        prog="dmporec",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {
        "run": "the classic baselines (random, popularity, BPR-MF, MiniLM similarity;\n"
        "baselines=false skips them), zero-shot eval, SFT, eval, DMPO, eval; prints a table\n"
        "with paired tests between the rows (finished stages are skipped)",
        "sft": "train the SFT adapter into OUTPUT_DIR/sft",
        "dmpo": "train the DMPO adapter on top of OUTPUT_DIR/sft into OUTPUT_DIR/dmpo",
        "evaluate": "evaluate zero_shot, sft, dmpo or a stage directory on the test pairs",
        "hybrid": "fuse a trained stage's pair margins with the classic scorers (popularity,\n"
        "BPR-MF, ALS, MiniLM) by a logistic regression fitted on the validation users only\n"
        "(data.valid or data.valid_users); score the test pairs, with paired tests against\n"
        "every component; writes STAGE/hybrid/",
    }
    for name, text in helps.items():
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", "-c", help="YAML config (see configs/)")
        if name == "hybrid":
            p.add_argument(
                "--stage", default="dmpo", help="sft | dmpo | path to a stage dir (default dmpo)"
            )
        if name == "evaluate":
            p.add_argument(
                "--stage",
                default="dmpo",
                help="zero_shot | sft | dmpo | path to a stage dir (default dmpo)",
            )
            p.add_argument(
                "--out",
                help="write the evaluation to this directory (default STAGE/eval, or "
                "STAGE/eval-valid with eval.split=valid; zero-shot: OUTPUT_DIR/zero_shot): "
                "one model on several test files, each in its own directory",
            )
        if name == "dmpo":
            p.add_argument(
                "--sft-dir", help="finished SFT stage to start from (default OUTPUT_DIR/sft)"
            )
        p.add_argument("overrides", nargs="*", metavar="key=value")
    from dmporec.stages import prepare

    text = "build few-shot datasets (records, alpaca files, stats) from a raw ratings dump"
    p = sub.add_parser(
        "prepare",
        help=text,
        description=text,
        epilog=prepare.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_arguments(p)
    text = "run the cells of an experiment file (grid, sweep, cross-domain); one results table"
    p = sub.add_parser(
        "experiment",
        help=text,
        description=text,
        epilog="example: dmporec experiment --config configs/sweep-ml-1m.yaml\n"
        "overrides (key=value) apply to every cell, after the file's own.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", "-c", required=True, help="experiment YAML (see configs/experiments/)"
    )
    p.add_argument("--cells", metavar="A,B", help="run only these cells (comma-separated names)")
    p.add_argument(
        "--rerun",
        metavar="A,B",
        help="run these finished cells again: their new rows replace the old, here and published",
    )
    p.add_argument(
        "--publish",
        metavar="DIR",
        help="publish every finished row, the tables and plots to DIR, and restore the cells it "
        "holds first (default: the file's publish key)",
    )
    p.add_argument(
        "--restore",
        metavar="FILE",
        action="append",
        help="restore the cells this results.jsonl holds (e.g. another checkout's "
        "OUTPUT_DIR/results.jsonl), replacing their rows here and, once published, there; "
        "per-pair scores and training statistics from the run directory beside it; repeatable",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value")
    text = "write RUN_DIR/report.md with tables and plots of a run or an experiment"
    p = sub.add_parser("report", help=text, description=text)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `run` or `experiment` output directory")
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    _add_model_commands(sub, words[0] if words else None)
    return parser


# Commands that use a trained model (run dir, stage dir or model name) rather than a run config.
MODEL_COMMANDS = {
    "recommend": "rank candidate titles for a user's history (or a JSON file of users)",
    "serve": "HTTP service: POST /v1/rank and /v1/explain, GET /healthz, /openapi.json",
    "export": "merge a run's adapters into its base model; write safetensors, tokenizer, card",
    "download": "fetch the authors' released files (pinned commit) and check their sha256",
    "random_model": "write a random-weight model from a real config and tokenizer (for tests)",
}


def _add_model_commands(sub: argparse._SubParsersAction, wanted: str | None) -> None:
    import importlib

    for name, text in MODEL_COMMANDS.items():
        wanted_here = wanted is not None and wanted.replace("-", "_") == name
        module = importlib.import_module(f"dmporec.{name}") if wanted_here else None
        p = sub.add_parser(
            name.replace("_", "-"),
            help=text,
            description=module.__doc__ if module else text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if module is not None:
            module.add_arguments(p)


def _run_model_command(args: argparse.Namespace) -> int:
    import importlib

    name = args.command.replace("-", "_")
    module = importlib.import_module(f"dmporec.{name}")
    try:
        return getattr(module, f"run_{name}")(args)
    except FileExistsError as e:  # export to a non-empty --out without --force
        print(f"dmporec: error: {e}", file=sys.stderr)
        return 2


def _quiet_libraries() -> None:
    """Keep the console for our own progress bars: no per-tensor loading bars or deprecation chatter."""
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments; key=value overrides may also follow an option (`evaluate -c X --stage sft
    eval.split=valid`), which argparse alone leaves unrecognised."""
    parser = _parser(argv)
    args, extra = parser.parse_known_args(argv)
    loose = [e for e in extra if "=" in e and not e.startswith("-")]
    if extra and (loose != extra or not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if loose:
        args.overrides = [*args.overrides, *loose]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _quiet_libraries()
    try:
        if args.command == "prepare":
            from dmporec.stages import prepare

            return prepare.run(args)
        if args.command == "report":
            from dmporec.report import write_report

            print(f"report: {write_report(args.run_dir)}")
            return 0
        if args.command == "experiment":
            from dmporec.stages.experiment import run_experiment

            only = [c for c in (args.cells or "").split(",") if c]
            rerun = [c for c in (args.rerun or "").split(",") if c]
            table = run_experiment(
                args.config, args.overrides, only, rerun, args.publish, args.restore
            )
            if _is_main_process():
                print(table)
            return 0
        if args.command.replace("-", "_") in MODEL_COMMANDS:
            return _run_model_command(args)
        cfg = load_config(args.config, args.overrides)
        from dmporec.stages.common import prepare_run

        if args.command == "run":
            from dmporec.stages.pipeline import run_pipeline

            table = run_pipeline(cfg)
            if _is_main_process():
                print(table)
            return 0
        cfg = prepare_run(cfg, record=args.command not in ("evaluate", "hybrid"))
        if args.command == "sft":
            from dmporec.stages.sft import run_sft

            adapter = run_sft(cfg) / "adapter"
            if _is_main_process():
                print(f"sft adapter: {adapter}")
        elif args.command == "dmpo":
            from dmporec.stages.dmpo import run_dmpo

            adapter = run_dmpo(cfg, args.sft_dir) / "adapter"
            if _is_main_process():
                print(f"dmpo adapter: {adapter}")
        elif args.command == "hybrid":
            from dmporec.stages.hybrid import run_hybrid
            from dmporec.tables import summary_table

            row = run_hybrid(cfg, args.stage, f"hybrid ({Path(args.stage).name} + classic)")
            if _is_main_process():
                print(summary_table([row]) + f"\n\n(results in {row['hybrid_dir']})")
        else:
            from dmporec.evaluation import MD_HEADER, markdown_row
            from dmporec.stages.evaluate import run_evaluate

            metrics = run_evaluate(cfg, args.stage, args.out)
            if _is_main_process():
                print(MD_HEADER + "\n" + markdown_row(args.stage, metrics))
        return 0
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"dmporec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if argv is not None:  # called from Python (a script's loop): the interrupt is the caller's
            raise
        # Stages resume from their last checkpoint (every epoch, or sft/dmpo.save_every_steps)
        # and scoring from its kept batches: the same command picks up from there.
        print(
            "dmporec: interrupted; the same command resumes from the last checkpoint "
            "(sft/dmpo.save_every_steps sets how often one is written) and keeps scored batches",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
