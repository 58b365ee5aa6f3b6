"""Scale check for `dmporec prepare`: a synthetic Amazon-2018-format dump the size of the real one.

Writes a gzip reviews file (default 10M lines; Amazon Movies and TV 2018 has ~8.8M) and a metadata
file shaped like the real ones (heavy-tailed users and items, most ratings 5, ~1 in 10k lines
malformed, 1% of items without a title), then runs `dmporec prepare` on them in a subprocess and
reports its wall time and peak RSS. Target: under 5 minutes and under 2 GiB.

    .venv/bin/python benchmarks/prepare_scale.py                 # 10M lines
    .venv/bin/python benchmarks/prepare_scale.py --lines 1000000 # quicker
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "prepare_scale.json"


def write_dump(dir: Path, lines: int, users: int, items: int, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    reviews, meta = dir / f"reviews_{lines}.json.gz", dir / f"meta_{items}.json.gz"
    with gzip.open(meta, "wt", encoding="utf-8", compresslevel=1) as f:
        for i in range(items):
            obj = {"asin": f"B{i:09d}", "category": ["Movies & TV"], "price": "$9.99"}
            if rng.random() > 0.01:
                obj["title"] = f"Synthetic Film {i} &amp; Friends (Special Edition)"
            f.write(json.dumps(obj) + "\n")
    if reviews.exists():
        return reviews, meta
    chunk = 200_000
    with gzip.open(reviews, "wt", encoding="utf-8", compresslevel=1) as f:
        for start in range(0, lines, chunk):
            n = min(chunk, lines - start)
            # Heavy tails: most users write one or two reviews, a few write hundreds.
            user = (users * rng.random(n) ** 3).astype(np.int64)
            item = (items * rng.random(n) ** 2).astype(np.int64)
            rating = rng.choice([1, 2, 3, 4, 5], size=n, p=[0.06, 0.06, 0.11, 0.2, 0.57])
            t = rng.integers(946_684_800, 1_538_352_000, size=n)
            out = []
            for j in range(n):
                if (start + j) % 10_007 == 5:
                    out.append('{"overall": 5.0, "reviewerID": \n')  # broken line
                    continue
                out.append(
                    f'{{"overall": {rating[j]}.0, "verified": true, "reviewTime": "01 1, 2015", '
                    f'"reviewerID": "A{user[j]:013X}", "asin": "B{item[j]:09d}", '
                    f'"style": {{"Format:": " DVD"}}, "reviewerName": "Reviewer {user[j]}", '
                    f'"reviewText": "A review of item {item[j]} with a few words of text.", '
                    f'"summary": "Stars", "unixReviewTime": {t[j]}}}\n'
                )
            f.write("".join(out))
    return reviews, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=0, help="default: lines * 0.4")
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dir", default="/tmp/dmporec-prepare-scale")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dir = Path(args.dir)
    dir.mkdir(parents=True, exist_ok=True)
    users = args.users or int(args.lines * 0.4)

    start = time.perf_counter()
    reviews, meta = write_dump(dir, args.lines, users, args.items, args.seed)
    generate_s = time.perf_counter() - start
    print(f"dump: {reviews} ({reviews.stat().st_size / 2**30:.2f} GiB gzip), {generate_s:.0f} s")

    out = dir / "out"
    cmd = [sys.executable, "-m", "dmporec.cli", "prepare", "--source", "amazon2018",
           "--reviews", str(reviews), "--meta", str(meta), "--out", str(out),
           "--name", "rec_Synthetic"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"prepare failed:\n{proc.stderr}")
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    stats = json.loads((out / "stats.json").read_text())
    row = {
        "lines": args.lines,
        "gzip_gib": round(reviews.stat().st_size / 2**30, 3),
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(peak_gib, 2),
        "lines_per_s": round(args.lines / wall),
        "users_seen": stats["users_seen"],
        "users_kept": stats["users_kept"],
        "bad_lines": stats["files"]["reviews"]["bad"],
        "dropped_no_title": stats["interactions_dropped_no_title"],
        "target_met": wall < 300 and peak_gib < 2,
    }
    print(proc.stdout.strip())
    print()
    print("| lines | gzip GiB | wall s | peak RSS GiB | lines/s | users seen | users kept |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {row['lines']:,} | {row['gzip_gib']} | {row['wall_s']} | {row['peak_rss_gib']} | "
        f"{row['lines_per_s']:,} | {row['users_seen']:,} | {row['users_kept']:,} |"
    )
    print(f"target (< 300 s, < 2 GiB): {'met' if row['target_met'] else 'NOT met'}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "date": date.today().isoformat(),
                "command": "python " + " ".join(sys.argv),
                "machine": f"{platform.machine()}, {platform.python_version()}",
                "result": row,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
