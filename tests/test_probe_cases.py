"""The hostile-input probe's cases, each turned into a test: one clear line (exit code 2 or a
4xx), no traceback, nothing written; and a fuzz test over records, configs and API bodies."""

import json
import os
import stat
import subprocess
import sys
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmporec.alpaca import to_alpaca_rows
from dmporec.cli import main
from dmporec.config import ConfigError, load_config
from dmporec.files import atomic_write_text
from dmporec.ranker import Ranker
from dmporec.records import DataError, Item, read_records
from dmporec.serve import create_app


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"user_id": "u", "history": ["A\xff"], "positive": "B", "negatives": ["C"]}\n', "UTF-8"),
        (b'[{"instruction": "x\xfe", "input": "", "output": "y"}]', "UTF-8"),
        (None, "is a directory"),
    ],
)
def test_bad_data_files_are_one_line(tmp_path, capsys, content, message):
    data = tmp_path / ("data.json" if content and content.startswith(b"[") else "data.jsonl")
    if content is None:
        data.mkdir()
    else:
        data.write_bytes(content)
    out = tmp_path / "run"
    code = main(
        ["sft", "model.name=builtin:tiny-qwen3", f"data.sft_train={data}", f"output_dir={out}"]
    )
    assert code == 2 and message in _one_line_error(capsys)
    assert not (out / "sft" / "adapter").exists()


def test_output_dir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("keep me")
    assert main(["sft", "data.demo={train_users: 4}", f"output_dir={target}"]) == 2
    assert "is not a directory" in _one_line_error(capsys)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    ("override", "message"),
    [("eval.listwise=1", "at least 2 candidates"), ("sft.layout=fast", "sft.layout")],
)
def test_settings_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize(
    "args", [["--max-batch", "0"], ["--max-queue", "-1"], ["--batch-wait-ms", "nan"]]
)
def test_serve_options_are_checked(args):
    out = subprocess.run(
        [sys.executable, "-m", "dmporec", "serve", "--model", "x", *args],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "must be >=" in out.stderr and "Traceback" not in out.stderr


def test_alpaca_refuses_titles_that_would_not_read_back(demo):
    record = replace(demo.train[0], history=[Item("Heat>  <Title:Up"), *demo.train[0].history])
    with pytest.raises(DataError, match="<Title:"):
        to_alpaca_rows([record], "sft")


def test_results_are_written_with_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


@pytest.fixture(scope="module")
def client(tiny, tiny_cfg):
    ranker = Ranker.create(tiny[0], tiny[1], tiny_cfg, "tiny")
    with TestClient(create_app(ranker, api_key="s3cret"), raise_server_exceptions=False) as c:
        yield c


AUTH = {"Authorization": "Bearer s3cret"}


def test_api_key(client):
    body = {"history": ["Heat"], "candidates": ["Up", "Jaws"]}
    assert client.post("/v1/rank", json=body).status_code == 401
    assert client.post("/v1/rank", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/v1/rank", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.post("/v1/rank", json=body, headers=AUTH).status_code == 200
    assert client.get("/healthz").status_code == 200  # open, for load balancers


@pytest.mark.parametrize(
    "body",
    [
        '{"history": ["\\ud800"], "candidates": ["a", "b"]}',
        '{"history": ["x"], "candidates": ["a", "b"], "top_k": "\\ud800"}',
        '{"history": ["x"], "candidates": ["a", "b"], "top_k": true}',
    ],
)
def test_lone_surrogates_and_loose_ints_are_422(client, body):
    r = client.post("/v1/rank", content=body, headers={"content-type": "application/json", **AUTH})
    assert r.status_code == 422 and len(r.json()["error"].splitlines()) == 1


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
TITLES = st.lists(st.text(max_size=6), max_size=3)
RECORD = st.fixed_dictionaries(
    {},
    optional={
        "user_id": JSON,
        "history": TITLES | JSON,
        "positive": st.text(max_size=6) | JSON,
        "negatives": TITLES | JSON,
        "domain": JSON,
    },
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(lines=st.lists(RECORD | JSON, min_size=1, max_size=3), raw=st.binary(max_size=20))
def test_fuzz_records_are_read_or_refused_in_one_line(tmp_path_factory, lines, raw):
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    path.write_bytes(b"\n".join(json.dumps(x).encode() for x in lines) + b"\n" + raw)
    try:
        read_records(path)
    except DataError as e:
        assert len(str(e).splitlines()) == 1 and str(path) in str(e)


KEYS = [
    "sft.learning_rate",
    "dmpo.k",
    "eval.listwise",
    "data.max_prompt_tokens",
    "model.dtype",
    "sft.epochs",
    "output_dir",
    "dmpo.beta",
    "eval.orders",
    "nope.key",
    "sft",
]


@FUZZ
@given(overrides=st.lists(st.tuples(st.sampled_from(KEYS), st.text(max_size=8)), max_size=3))
def test_fuzz_configs_load_or_fail_in_one_line(overrides):
    try:
        load_config(None, [f"{k}={v}" for k, v in overrides])
    except ConfigError as e:
        assert "Traceback" not in str(e)


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "history": TITLES | JSON,
            "candidates": TITLES | JSON,
            "top_k": JSON,
            "domain": JSON,
        },
    )
    | JSON
)
def test_fuzz_api_bodies_get_an_answer_or_a_4xx(client, body):
    r = client.post("/v1/rank", json=body, headers=AUTH)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        assert len(r.json()["error"].splitlines()) == 1
