"""`dmporec download` against a local HTTP server on 127.0.0.1 serving copies of the authors'
files: checked against the shipped manifest, atomic, clear when offline or a hash differs."""

import functools
import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from dmporec.cli import main
from dmporec.download import manifest

DMPO = Path(__file__).resolve().parents[2] / "shared" / "data" / "dmpo"
pytestmark = pytest.mark.skipif(
    not DMPO.is_dir(), reason="the authors' files are not beside this checkout"
)


def test_the_shipped_manifest_is_the_shared_one():
    lines = [x.split() for x in (DMPO / "SHA256SUMS").read_text().splitlines() if x[:1] != "#"]
    assert manifest() == {name: digest for digest, name in lines if name}
    assert len(manifest()) == 21 and sum("Amazon_Game" in n for n in manifest()) == 7


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "mirror"
    root.mkdir()
    for path in DMPO.glob("rec_*.json"):
        shutil.copy(path, root / path.name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_checks_every_file_and_keeps_good_ones(mirror, tmp_path, capsys):
    root, url = mirror
    out = tmp_path / "data"
    assert main(["download", "--dataset", "ml-1m", "--out", str(out), "--base-url", url]) == 0
    got = sorted(p.name for p in out.iterdir())
    assert got == sorted(n for n in manifest() if n.startswith("rec_data_ml_1m_"))
    assert all(_sha(out / n) == manifest()[n] for n in got)
    assert "7 downloaded, 0 already there" in capsys.readouterr().out
    assert main(["download", "--dataset", "ml-1m", "--out", str(out), "--base-url", url]) == 0
    assert "0 downloaded, 7 already there" in capsys.readouterr().out


def test_a_changed_file_is_refused_and_nothing_is_written(mirror, tmp_path, capsys):
    root, url = mirror
    bad = root / "rec_Amazon_Movie_sft_ranking.json"
    bad.write_bytes(bad.read_bytes().replace(b"movie", b"movje", 1))
    out = tmp_path / "data"
    assert main(["download", "--dataset", "movies", "--out", str(out), "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert "1 of 7 files failed" in err and "rec_Amazon_Movie_sft_ranking.json: sha256" in err
    assert not (out / bad.name).exists() and len(list(out.iterdir())) == 6  # no partial files


def test_missing_files_and_offline_are_one_line(mirror, tmp_path, capsys):
    root, url = mirror
    out = tmp_path / "data"
    # The mirror lacks the Video Games files (not in ../shared): HTTP 404 for each.
    assert main(["download", "--dataset", "games", "--out", str(out), "--base-url", url]) == 2
    assert "7 of 7 files failed" in capsys.readouterr().err
    assert main(["download", "--out", str(out), "--base-url", "http://127.0.0.1:9/"]) == 2
    (err,) = [x for x in capsys.readouterr().err.splitlines() if "dmporec" in x]  # not the bar
    assert "cannot reach 127.0.0.1" in err and "offline?" in err
    assert list(out.iterdir()) == []
