"""What `--help` says: every command in the summary, serve's limits, defaults and API key, the
baselines `run` scores, the authors' window order. Parsers only: no model is loaded."""

import re
from pathlib import Path

import pytest

from dmporec.cli import _parse, _parser, main
from dmporec.serve import API_KEY_ENV, Limits


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse's wrapping undone


def test_the_summary_names_every_command():
    parser = _parser([])
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"download", "random-model"} <= set(commands)
    summary = " ".join(parser.description.split())
    for name in commands:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", summary), name


def test_serve_help_states_limits_defaults_and_the_key(capsys):
    text = _help(capsys, "serve")
    limits = Limits()
    assert "max_body_bytes" not in text  # no such flag
    assert (
        f"{limits.max_history} history titles, {limits.max_candidates} candidates, "
        f"{limits.max_title_chars} characters a title" in text
    )
    assert f"bodies over {limits.max_body_bytes:,} bytes get 413" in text
    assert "interface to listen on (default 127.0.0.1)" in text and "(default 8000)" in text
    assert "visible to every user of the machine (ps, shell history)" in text
    assert f"prefer the environment variable {API_KEY_ENV}" in text
    assert "X-API-Key: KEY" in text and "/openapi.json" in text


def test_run_help_names_the_baselines(capsys):
    text = _help(capsys, "run")
    for baseline in ("random", "popularity", "BPR-MF", "MiniLM", "baselines=false"):
        assert baseline in text, baseline


def test_prepare_help_says_which_order_the_window_follows(capsys):
    text = _help(capsys, "prepare")
    assert "in the ratings file's order for --source movielens" in text
    assert "in time order (ties in file order) for every other source, movielens100k" in text
    assert "--max-untitled-fraction" in text


USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"


def test_usage_md_states_the_server_limits_and_the_window_rule():
    text = " ".join(USAGE.read_text(encoding="utf-8").split())
    limits = Limits()
    assert f"more than {limits.max_history} history titles" in text
    assert f"more than {limits.max_candidates} candidates" in text
    assert f"titles over {limits.max_title_chars} characters" in text
    assert "X-API-Key: KEY" in text and "DMPOREC_API_KEY" in text and "`ps`" in text
    assert "/openapi.json" in text and "normalized_title" in text
    # The authors' window: file order for movielens only, time order for MovieLens-100K too.
    assert "in the file's order (MovieLens;" not in text
    assert "in the ratings file's order for `--source movielens`" in text
    assert "`movielens100k`'s u.data included" in text


def test_overrides_may_follow_an_option(capsys):
    """`dmporec evaluate -c X --stage sft eval.split=valid` reads the override after --stage
    (argparse alone rejects it); anything else left over is still an error."""
    args = _parse(["evaluate", "-c", "x.yaml", "a.b=1", "--stage", "sft", "eval.split=valid"])
    assert args.stage == "sft" and args.overrides == ["a.b=1", "eval.split=valid"]
    with pytest.raises(SystemExit):
        _parse(["evaluate", "-c", "x.yaml", "--stage", "sft", "--nope"])
    assert "unrecognized arguments: --nope" in capsys.readouterr().err
