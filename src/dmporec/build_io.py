"""The files of a build: raw interactions read into columns, with the checks on the files read,
and the output files written (splits, the authors' alpaca layout, stats.json; reruns, --overwrite
and the `.partial` directory that keeps a failed build from touching the earlier one).

The data rules themselves (windows, positives and negatives, splits) are in dmporec.build.
"""

from __future__ import annotations

import json
import os
import shutil
from array import array
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dmporec.alpaca import write_alpaca
from dmporec.files import atomic_write_text
from dmporec.records import DataError, Record, write_records

if TYPE_CHECKING:
    from dmporec.build import BuildConfig


@dataclass
class Columns:
    """Interactions as compact columns (ids index `users` / `items`), in file order."""

    users: list[str]
    items: list[str]  # the raw item ids
    titles: list[str]  # of each item id, as read
    user: np.ndarray  # int32 [n]
    item: np.ndarray  # int32 [n]
    rating: np.ndarray  # float32 [n]
    time: np.ndarray  # int64 [n]


def collect(
    interactions: Any, titles: dict[str, str], stats: dict[str, int]
) -> tuple[Columns, dict[str, int]]:
    """Stream interactions into columns, dropping (and counting) those whose item has no title."""
    user_ids: dict[str, int] = {}
    item_ids: dict[str, int] = {}
    u, it, r, t = array("i"), array("i"), array("f"), array("q")
    untitled: dict[str, None] = {}  # in order of first appearance, for examples
    for user, item, rating, time in interactions:
        stats["read"] += 1
        if item not in titles:
            stats["dropped_no_title"] += 1
            untitled[item] = None
            continue
        u.append(user_ids.setdefault(user, len(user_ids)))
        it.append(item_ids.setdefault(item, len(item_ids)))
        r.append(rating)
        t.append(time)
    cols = Columns(
        users=list(user_ids),
        items=list(item_ids),
        titles=[titles[item] for item in item_ids],
        user=np.frombuffer(u, dtype=np.int32),
        item=np.frombuffer(it, dtype=np.int32),
        rating=np.frombuffer(r, dtype=np.float32),
        time=np.frombuffer(t, dtype=np.int64),
    )
    examples = list(untitled)[:5]
    return cols, {"items_without_title": len(untitled), "items_without_title_examples": examples}


# Above this share of interactions without a title, a build that goes on says so.
UNTITLED_WARNING = 0.02


def check_untitled(
    counts: dict[str, int],
    items: dict[str, Any],
    cfg: BuildConfig,
    reviews: str | os.PathLike,
    meta: str | os.PathLike,
) -> str | None:
    """Raise DataError when more than `cfg.max_untitled_fraction` of the interactions rate items
    `meta` has no title for; a warning above `UNTITLED_WARNING`, else None."""
    dropped, read = counts["dropped_no_title"], counts["read"]
    share = dropped / read if read else 0.0
    if share <= UNTITLED_WARNING and share <= cfg.max_untitled_fraction:
        return None
    what = (
        f"{dropped:,} of the {read:,} interactions in {reviews} ({share:.1%}) rate items this "
        f"file has no title for ({items['items_without_title']:,} item ids, e.g. "
        + ", ".join(map(repr, items["items_without_title_examples"]))
        + ")"
    )
    if share > cfg.max_untitled_fraction:
        raise DataError(
            f"{what}, over max_untitled_fraction {cfg.max_untitled_fraction:.1%}: is the titles "
            "file cut short or from another release? Pass the complete titles file, or "
            "--max-untitled-fraction F to build without those interactions",
            file=meta,
        )
    return f"{meta}: {what}; they are left out"


def check_contiguous(cols: Columns, file: str | os.PathLike | None = None) -> None:
    """Raise DataError unless each user's lines stand together (file order means something then)."""
    changes = np.flatnonzero(cols.user[1:] != cols.user[:-1]) + 1
    if len(changes) + 1 == len(cols.users):
        return
    seen: set[int] = set()
    for uid in cols.user[np.concatenate(([0], changes))] if len(cols.user) else []:
        if uid in seen:
            raise DataError(
                f"the ratings of user {cols.users[uid]!r} are not on consecutive lines, so 'their "
                "last ratings in file order' is not defined; pass --window-order time to order "
                "each user's ratings by timestamp (or sort the file by user, keeping line order)",
                file=file,
                record=f"user {cols.users[uid]}",
                field="user",
            )
        seen.add(int(uid))


def check_not_item_sorted(cols: Columns, file: str | os.PathLike | None = None) -> None:
    """Raise DataError when the file lists nearly every user's ratings by item id (MovieLens-10M's
    ratings.dat does): 'last in file order' would then mean the highest ids, not the latest."""
    if not len(cols.item) or not all(i.isdigit() for i in cols.items):
        return
    ids = np.array([int(i) for i in cols.items], dtype=np.int64)[cols.item]
    starts = np.flatnonzero(np.r_[True, cols.user[1:] != cols.user[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    rising = np.r_[ids[1:] > ids[:-1], False]  # the next line's id is larger
    rising[ends - 1] = False  # ... within the user
    longer = ends - starts >= 5  # 5 ratings in increasing id order by chance: 1 in 120
    if not longer.any():
        return
    sorted_users = np.add.reduceat(rising, starts) >= (ends - starts - 1)
    share = sorted_users[longer].mean()
    if share >= 0.95:
        raise DataError(
            f"{share:.0%} of the users with 5 or more ratings have them in "
            "increasing item-id order, so the window of 'their last ratings in file order' would "
            "be their highest item ids; pass --window-order time",
            file=file,
            field="item",
        )


def _first_k(records: list[Record], k: int) -> list[Record]:
    return [
        replace(r, negatives=r.negatives[:k], positive_first=(r.positive_first or [])[:k] or None)
        for r in records
    ]


def write_outputs(
    out: Path, splits: dict[str, list[Record]], cfg: BuildConfig, stats: dict[str, Any]
) -> list[str]:
    """Records (JSONL), the authors' alpaca layout, LLaMA-Factory's dataset_info.json, stats.json."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, records in splits.items():
        write_records(out / f"{split}.jsonl", records)
        written.append(f"{split}.jsonl")
    alpaca = [("sft_ranking", "train", 1, "sft")]
    alpaca += [(f"dpo_ranking_{k}", "train", k, "dpo") for k in range(1, cfg.negatives + 1)]
    alpaca += [("valid_ranking", "valid", 1, "eval"), ("eval_ranking", "test", 1, "eval")]
    info = {}
    for suffix, split, k, kind in alpaca:
        if not splits[split]:
            continue
        file_name = f"{cfg.name}_{suffix}.json"
        write_alpaca(out / file_name, _first_k(splits[split], k), kind)
        written.append(file_name)
        entry: dict[str, Any] = {"file_name": file_name}
        if kind != "sft":
            entry["ranking"] = True  # output = [chosen, rejected], as the authors' fork reads it
        entry["columns"] = {"prompt": "instruction", "query": "input", "response": "output"}
        info[f"{cfg.name}_{suffix}"] = entry
    atomic_write_text(out / "dataset_info.json", json.dumps(info, indent=2) + "\n")
    written.append("dataset_info.json")
    stats = {**stats, "outputs": sorted(written + ["stats.json"])}
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    return stats["outputs"]


def check_out(out: Path) -> None:
    """Refuse an output directory that cannot be written before any input is read."""
    if out.exists() and not out.is_dir():
        raise DataError("is a file; --out names the directory to write", file=out)
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"cannot be created: {existing} is not a writable directory", file=out)


def build_settings(cfg: BuildConfig, reviews: str | os.PathLike, meta: str | os.PathLike) -> dict:
    """What a build's outputs depend on: its rules and its input files."""
    inputs = {"reviews": str(Path(reviews).resolve()), "meta": str(Path(meta).resolve())}
    return {**cfg.model_dump(mode="json"), "inputs": inputs}


def previous_outputs(out: Path, settings: dict, overwrite: bool) -> list[str]:
    """The files an earlier build wrote to `out` (its stats.json lists them). A build with other
    settings (or whose stats cannot be read) stops the new one unless `overwrite`."""
    path = out / "stats.json"
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        before = {**old["config"], "inputs": old.get("inputs", settings["inputs"])}
        outputs = [str(f) for f in old["outputs"]]
    except (OSError, ValueError, KeyError, TypeError):
        if overwrite:
            return []
        raise DataError(
            "holds a stats.json that does not read as a build's; --overwrite replaces the build "
            "(it may leave files that build wrote), or choose another --out",
            file=out,
        ) from None
    changed = [
        f"{key} {before.get(key)!r} -> {settings.get(key)!r}"
        for key in sorted(set(before) | set(settings))
        if before.get(key) != settings.get(key)
    ]
    if changed and not overwrite:
        raise DataError(
            f"holds a build with other settings ({'; '.join(changed)}); --overwrite replaces it "
            "(its files are removed once the new build is written), or choose another --out",
            file=out,
        )
    return [f for f in outputs if Path(f).name == f]  # plain names inside out, nothing else


def write_build(
    out: Path,
    splits: dict[str, list[Record]],
    cfg: BuildConfig,
    stats: dict[str, Any],
    previous: list[str],
) -> list[str]:
    """Write every output to `out/.partial`, move them into `out` with stats.json last (a build
    that fails before leaves the earlier one whole), then remove the `previous` build's files
    this one did not write. Returns the names written."""
    partial = out / ".partial"
    if partial.exists():
        shutil.rmtree(partial)
    outputs = write_outputs(partial, splits, cfg, stats)
    for name in sorted(outputs, key=lambda f: f == "stats.json"):  # stats.json last
        os.replace(partial / name, out / name)
    partial.rmdir()
    for name in set(previous) - set(outputs):
        (out / name).unlink(missing_ok=True)
    return outputs
