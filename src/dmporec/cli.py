"""The `dmporec` command: sft | dmpo | evaluate | run, each with --config and key=value overrides."""

from __future__ import annotations

import argparse
import sys

from accelerate import PartialState

from dmporec.config import ConfigError, load_config
from dmporec.records import DataError

EPILOG = """overrides: section.key=value, parsed as YAML, e.g.
  dmporec run --config configs/demo.yaml sft.epochs=1 dmpo.k=2 output_dir=runs/try
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmporec",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {
        "run": "zero-shot eval, SFT, eval, DMPO, eval; prints a table (finished stages are skipped)",
        "sft": "train the SFT adapter into OUTPUT_DIR/sft",
        "dmpo": "train the DMPO adapter on top of OUTPUT_DIR/sft into OUTPUT_DIR/dmpo",
        "evaluate": "evaluate zero_shot, sft, dmpo or a stage directory on the test pairs",
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
        if name == "evaluate":
            p.add_argument(
                "--stage",
                default="dmpo",
                help="zero_shot | sft | dmpo | path to a stage dir (default dmpo)",
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
    return parser


def _quiet_libraries() -> None:
    """Keep the console for our own progress bars: no per-tensor loading bars or deprecation chatter."""
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()
    try:
        if args.command == "prepare":
            from dmporec.stages import prepare

            return prepare.run(args)
        cfg = load_config(args.config, args.overrides)
        from dmporec.stages.common import prepare_run

        if args.command == "run":
            from dmporec.stages.pipeline import run_pipeline

            table = run_pipeline(cfg)
            if PartialState().is_main_process:
                print(table)
            return 0
        cfg = prepare_run(cfg)
        if args.command == "sft":
            from dmporec.stages.sft import run_sft

            print(f"sft adapter: {run_sft(cfg) / 'adapter'}")
        elif args.command == "dmpo":
            from dmporec.stages.dmpo import run_dmpo

            print(f"dmpo adapter: {run_dmpo(cfg, args.sft_dir) / 'adapter'}")
        else:
            from dmporec.stages.evaluate import MD_HEADER, markdown_row, run_evaluate

            print(MD_HEADER + "\n" + markdown_row(args.stage, run_evaluate(cfg, args.stage)))
        return 0
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"dmporec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
