"""Fetch the authors' released few-shot files (github BZX667/DMPO at a pinned commit) and check
each against the sha256 manifest shipped with dmporec (all 21 files).

    dmporec download [--dataset movies|games|ml-1m|all] [--out data/dmpo] [--force]

A file already there with the right hash is kept; a new one is written to a temp file, checked,
then renamed, so a failed or tampered download never leaves a file behind. `--base-url` (or
$DMPOREC_DOWNLOAD_URL) points at a mirror holding the same files.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from importlib.resources import files
from pathlib import Path

from tqdm.auto import tqdm

COMMIT = "fe6ecb5b0ad4b5e57d4e9d97f6c62e7091d3e5a8"
BASE_URL = f"https://raw.githubusercontent.com/BZX667/DMPO/{COMMIT}/data/"
DATASETS = {"movies": "rec_Amazon_Movie_", "games": "rec_Amazon_Game_", "ml-1m": "rec_data_ml_1m_"}
URL_ENV = "DMPOREC_DOWNLOAD_URL"


class DownloadError(Exception):
    """A file could not be fetched or did not match its hash; the message says which and why."""


class Offline(DownloadError):
    """The server cannot be reached at all: no use trying the other files."""


def manifest() -> dict[str, str]:
    """File name -> sha256, from the manifest in the package."""
    text = files("dmporec").joinpath("dmpo_files.sha256").read_text(encoding="utf-8")
    pairs = (line.split() for line in text.splitlines() if line.strip() and line[0] != "#")
    return {name: digest for digest, name in pairs}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(
    name: str, digest: str, out: Path, base_url: str, timeout: float = 30.0, force: bool = False
) -> str:
    """Download one file into `out` unless it is there already (or `force`); returns 'kept' or
    'downloaded'. A good file there is replaced only by a checked new one."""
    import httpx

    target = out / name
    if not force and target.is_file() and _sha256(target) == digest:
        return "kept"
    url = base_url.rstrip("/") + "/" + name
    fd, tmp_name = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f, httpx.stream("GET", url, timeout=timeout) as response:
            if response.status_code != 200:
                raise DownloadError(f"{url}: HTTP {response.status_code}")
            size = int(response.headers.get("content-length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=name, leave=False) as bar:
                for chunk in response.iter_bytes():
                    f.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        if h.hexdigest() != digest:
            raise DownloadError(
                f"{url}: sha256 {h.hexdigest()[:16]}... is not the manifest's {digest[:16]}...; "
                "nothing written (a changed or corrupt file, or the wrong mirror)"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        return "downloaded"
    except httpx.InvalidURL as e:
        raise Offline(f"{url}: not a valid URL ({e}); check --base-url") from None
    except httpx.TransportError as e:
        host = httpx.URL(url).host
        raise Offline(
            f"cannot reach {host} ({type(e).__name__}: {e}); offline? Fetch the files where "
            f"you can and copy them into {out}, or point --base-url at a mirror"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def download(
    datasets: list[str], out: str | Path, base_url: str | None = None, *, force: bool = False
) -> dict[str, str]:
    """Fetch the files of `datasets`; returns each file's outcome. Raises DownloadError after
    trying every file if any failed (the message lists them)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_url = base_url or os.environ.get(URL_ENV) or BASE_URL
    wanted = {
        name: digest
        for name, digest in manifest().items()
        if any(name.startswith(DATASETS[d]) for d in datasets)
    }
    outcome, failures = {}, []
    for name, digest in tqdm(sorted(wanted.items()), desc="download", unit="file"):
        try:
            outcome[name] = fetch(name, digest, out, base_url, force=force)
        except Offline:
            raise
        except DownloadError as e:
            outcome[name] = "failed"
            failures.append(str(e))
    if failures:
        raise DownloadError(
            f"{len(failures)} of {len(wanted)} files failed: " + " | ".join(failures)
        )
    return outcome


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        default="all",
        choices=[*DATASETS, "all"],
        help="which of the paper's three datasets (default all)",
    )
    parser.add_argument("--out", default="data/dmpo", help="folder to write (default data/dmpo)")
    parser.add_argument("--base-url", help=f"a mirror of the files (default ${URL_ENV} or GitHub)")
    parser.add_argument("--force", action="store_true", help="download even files already there")


def run_download(args: argparse.Namespace) -> int:
    import sys

    datasets = list(DATASETS) if args.dataset == "all" else [args.dataset]
    try:
        outcome = download(datasets, args.out, args.base_url, force=args.force)
    except DownloadError as e:
        print(f"dmporec: error: {e}", file=sys.stderr)
        return 2
    done = sum(v == "downloaded" for v in outcome.values())
    print(
        f"download: {done} downloaded, {len(outcome) - done} already there; all {len(outcome)} "
        f"match the manifest (BZX667/DMPO @ {COMMIT[:7]}) in {args.out}"
    )
    return 0
