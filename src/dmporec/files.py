"""General file helpers: a file (text or bytes) written whole or not at all (temp file, then
rename), and JSON lines read and appended."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _probe_umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: done once, at import
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _probe_umask()


def process_umask() -> int:
    """The process umask: Linux says it without changing it; elsewhere, the one at import."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return _UMASK_AT_IMPORT


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file so a reader never sees half of it: write a temp file, then rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`atomic_write_text` for bytes (a .npz built in memory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~process_umask())  # mkstemp makes it 0600; be an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def files_digest(*paths: str | os.PathLike) -> str:
    """sha256 of the files' bytes in order (16 hex digits): which inputs a result was made from."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, blank lines skipped."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_steps(path: Path) -> list[dict[str, Any]]:
    """A training log's rows (metrics.jsonl), one per optimizer step in step order: a resumed run
    logs some steps again, and the latest row of a step is kept."""
    by_step = {row["step"]: row for row in read_jsonl(path)}
    return [by_step[s] for s in sorted(by_step)]


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line (a metrics log's row), making the directory if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
