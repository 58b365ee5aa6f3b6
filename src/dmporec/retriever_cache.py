"""Fitted factor retrievers (BPR-MF, ALS) kept on disk beside a run, so `recommend` and `serve`
fit them once per run and data, not on every call.

Files, in RUN/retrievers/ (beside RUN/catalogue.jsonl), one pair per retriever:

    bpr-mf.npz   the fitted arrays (BPR-MF: p, q, b; ALS: its factors and training matrix)
    bpr-mf.json  {"key": {...}, "key_sha256": "...", "users": [...], "items": [...]}

`users` and `items` list the ids and titles in index order. The key is everything the fit
depends on: the training records as the scorer reads them (a hash of each record's user id and
history titles, in order), the fit's settings (`fit`'s keyword defaults with the caller's on
top, the seed among them), the source of dmporec.baselines (a changed fit refits), the library
that fits it (torch or implicit, with its version) and FORMAT. A file of another key is
refitted and replaced, saying what differs; an unreadable one is refitted, saying so in one
line. Each file is written to a temp file and renamed, the .npz first; both carry the key's
hash, so a pair cut apart by a crash reads as unreadable. A directory that cannot be written (a
mounted or read-only run) fits in memory for the call, said. To clear: delete RUN/retrievers/.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import sys
import zipfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from dmporec import baselines
from dmporec.baselines import ALS, BPRMF
from dmporec.files import atomic_write_bytes, atomic_write_text
from dmporec.records import Record

DIRECTORY = "retrievers"  # under the run directory
FORMAT = 1
CACHED: dict[str, type[BPRMF] | type[ALS]] = {"bpr-mf": BPRMF, "als": ALS}
_LIBRARY = {"bpr-mf": "torch", "als": "implicit"}
ARRAYS = {
    "bpr-mf": ("p", "q", "b"),
    "als": ("user_factors", "item_factors", "matrix_data", "matrix_indices", "matrix_indptr"),
}
# What each part of the key is, as a mismatch says it.
_PARTS = {
    "format": "another cache format",
    "retriever": "another retriever",
    "records": "other training records",
    "settings": "other settings",
    "code": "another dmporec.baselines",
    "library": "another library version",
}
# What reading a damaged or missing .npz or .json raises (read_scorer names the file).
UNREADABLE = (OSError, ValueError, KeyError)


def say_stderr(text: str) -> None:
    print(text, file=sys.stderr)


def fit_settings(name: str, **given: Any) -> dict[str, Any]:
    """The settings `CACHED[name].fit` runs with: its keyword defaults, `given` on top."""
    params = inspect.signature(CACHED[name].fit).parameters
    settings = {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
    if unknown := sorted(set(given) - set(settings)):
        raise TypeError(f"{name}: unknown fit settings {unknown}")
    return settings | given


def records_sha256(records: Sequence[Record]) -> str:
    """A hash of what the factor models read of `records` (baselines.interactions): each
    record's user id and history titles, in order."""
    h = hashlib.sha256()
    for r in records:
        line = json.dumps([r.user_id, [i.title for i in r.history]], ensure_ascii=False)
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None  # ALS without implicit: its fit says how to install it


def fit_key(name: str, records: Sequence[Record], settings: dict[str, Any]) -> dict[str, Any]:
    """What a fit of `name` on `records` with `settings` depends on (see the module docstring),
    as JSON reads it back."""
    code = Path(inspect.getfile(baselines)).read_bytes()
    key = {
        "format": FORMAT,
        "retriever": name,
        "records": records_sha256(records),
        "settings": settings,
        "code": hashlib.sha256(code).hexdigest(),
        "library": {_LIBRARY[name]: _version(_LIBRARY[name])},
    }
    return json.loads(json.dumps(key))


def _sha256(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


class Stale(Exception):
    """A cache file of another key; the message says what differs."""


def cached_fit(
    name: str,
    records: Sequence[Record],
    directory: Path,
    *,
    say: Callable[[str], None] = say_stderr,
    **settings: Any,
) -> BPRMF | ALS:
    """`CACHED[name].fit(records, **settings)`, read from `directory` when a fit of the same key
    is there, else fitted and written there (or kept in memory, said, where it cannot be)."""
    settings = fit_settings(name, **settings)
    key = fit_key(name, records, settings)
    npz, meta = directory / f"{name}.npz", directory / f"{name}.json"
    if npz.exists() or meta.exists():
        try:
            scorer = read_scorer(name, key, npz, meta)
            say(f"{name} read from {npz} (fitted before on these {len(records):,} training users)")
            return scorer
        except Stale as e:
            say(f"{npz} was fitted on {e}; refitting {name}")
        except UNREADABLE as e:
            say(f"{name} in {directory} unreadable ({e}); refitting {name}")
    else:
        say(f"fitting {name} on {len(records):,} training users")
    scorer = CACHED[name].fit(records, **settings)
    try:
        write_scorer(scorer, key, npz, meta)
    except OSError as e:
        say(f"{name} not kept ({e}); fitted for this call only")
    return scorer


def write_scorer(scorer: BPRMF | ALS, key: dict[str, Any], npz: Path, meta: Path) -> None:
    """`scorer`'s arrays to `npz` and its key and indices to `meta`, each atomically."""
    if isinstance(scorer, BPRMF):
        values = [scorer.p, scorer.q, scorer.b]
    else:
        values = [scorer.x, scorer.y, scorer.matrix.data, scorer.matrix.indices]
        values.append(scorer.matrix.indptr)
    arrays = dict(zip(ARRAYS[scorer.name], values, strict=True))
    buffer = io.BytesIO()
    np.savez(buffer, key_sha256=np.array(_sha256(key)), **arrays)
    atomic_write_bytes(npz, buffer.getvalue())
    doc = {
        "key": key,
        "key_sha256": _sha256(key),
        "users": list(scorer.users),
        "items": list(scorer.items),
    }
    atomic_write_text(meta, json.dumps(doc, ensure_ascii=False) + "\n")


def _index(doc: dict[str, Any], field: str, meta: Path) -> dict[str, int]:
    names = doc.get(field)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{meta.name}: {field}: expected a list of strings")
    if len(set(names)) != len(names):
        raise ValueError(f"{meta.name}: {field}: a name listed twice")
    return {n: i for i, n in enumerate(names)}


def _check_arrays(name: str, a: dict[str, np.ndarray], users: int, items: int, npz: Path) -> None:
    """Every factor array there, of its retriever's shape: (rows, dim), b (items,)."""
    if missing := [k for k in ARRAYS[name] if k not in a]:
        raise ValueError(f"{npz.name}: no {', '.join(missing)}")
    rows = {"p": users, "q": items, "b": items, "user_factors": users, "item_factors": items}
    for k, n in rows.items():
        if k in a and (a[k].ndim != (1 if k == "b" else 2) or a[k].shape[0] != n):
            raise ValueError(
                f"{npz.name}: {k} of shape {a[k].shape} for {users} users, {items} items"
            )
    x, y = ("p", "q") if name == "bpr-mf" else ("user_factors", "item_factors")
    if a[x].shape[1] != a[y].shape[1]:
        raise ValueError(f"{npz.name}: {x} and {y} of different widths")


def read_scorer(name: str, key: dict[str, Any], npz: Path, meta: Path) -> BPRMF | ALS:
    """The scorer saved at `npz` and `meta` for `key`: Stale (saying what differs) where they
    hold another key, one of UNREADABLE (naming the file) where they cannot be read or
    disagree."""
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{meta.name}: not UTF-8 text ({e.reason})") from None
    except ValueError as e:
        raise ValueError(f"{meta.name}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("key"), dict):
        raise ValueError(f"{meta.name}: expected an object with a key")
    if doc.get("key_sha256") != _sha256(key) or doc["key"] != key:
        saved = doc["key"]
        differs = [what for part, what in _PARTS.items() if saved.get(part) != key[part]]
        raise Stale(", ".join(differs) or "another key")
    users, items = _index(doc, "users", meta), _index(doc, "items", meta)
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, EOFError, zipfile.BadZipFile) as e:  # np.load refuses pickles: ValueError
        raise ValueError(f"{npz.name}: not a readable .npz ({type(e).__name__})") from None
    if str(arrays.pop("key_sha256", "")) != _sha256(key):
        raise ValueError(f"{npz.name} and {meta.name} are of different fits")
    _check_arrays(name, arrays, len(users), len(items), npz)
    if name == "bpr-mf":
        return BPRMF(users, items, arrays["p"], arrays["q"], arrays["b"])
    return _als(users, items, arrays, key["settings"])


def _als(
    users: dict[str, int],
    items: dict[str, int],
    a: dict[str, np.ndarray],
    settings: dict[str, Any],
) -> ALS:
    from scipy.sparse import csr_matrix

    matrix = csr_matrix(
        (a["matrix_data"], a["matrix_indices"], a["matrix_indptr"]),
        shape=(len(users), len(items)),
    )
    x, y = a["user_factors"], a["item_factors"]
    reg, alpha = settings["regularization"], settings["alpha"]
    return ALS(users, items, x, y, matrix, regularization=reg, alpha=alpha)
