"""Load test of `dmporec serve` on loopback: requests/s and p50/p95 latency by concurrency.

    .venv/bin/python benchmarks/serve_load.py [--model SPEC] [--endpoint rank|recommend]
        [--concurrency 1,4,8] [--requests 24] [--modes batching,no-batching]

For each mode (batching: --max-batch 8, --batch-wait-ms 5; no batching: --no-batching) it starts
`dmporec serve` in a subprocess on 127.0.0.1 and, at each --concurrency c, sends --requests
requests from c httpx clients, closed loop (each client sends its next request once its last is
answered). The same requests in every mode and concurrency (seeded).
- rank: POST /v1/rank, --history titles (5) and --candidates (3: 6 prompts a request) drawn from
  the demo catalog's generated titles; --model defaults to the packaged SmolLM2-135M-Instruct
  zero-shot (`builtin:smollm2-135m`).
- recommend: POST /v1/recommend {"history", "top_k": --top-k} (the server's defaults: retrieve
  M = 20, pivot rerank with 2 pivots, 74 prompts; hybrid fusion where the run has one), histories
  of --history titles drawn from the run's catalogue; --model must be a run with one (default
  runs/demo).
--warmup requests go first on each server, untimed. Latency is per request as the client sees
it. Columns: req/s; `x c=1`, req/s over the same mode's at concurrency 1; p50/p95 ms; errors;
mean batch, requests per scoring call (from /healthz); the server's resident memory once warm
and its peak (sampled every 0.1 s). Prints a table and writes
benchmarks/results/serve_load[_recommend].json.

Run it on an otherwise idle machine (on the shared 2 cores, through `exclusive`): the server's
torch uses every core, and when other processes take some its multi-threaded kernels stall. The
table records the load average before each mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from dmporec.demo_data import make_demo_data

RESULTS = Path(__file__).resolve().parent / "results"


def make_requests(n: int, history: int, candidates: int, seed: int) -> list[dict[str, Any]]:
    """n ranking requests over demo titles: disjoint history and candidates, seeded."""
    titles = sorted(make_demo_data().catalog)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        picked = rng.sample(titles, history + candidates)
        out.append({"history": picked[:history], "candidates": picked[history:]})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeakRSS:
    """Peak resident memory of a process and its children, sampled in a thread, in MiB."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.proc, self.interval, self.peak_mib = psutil.Process(pid), interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def current_mib(self) -> float:
        procs = [self.proc, *self.proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / 2**20

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_mib = max(self.peak_mib, self.current_mib())
            except psutil.Error:  # the server exited
                return
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mib


def start_server(model: str, port: int, serve_args: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dmporec", "serve", "--model", model, "--port", str(port)]
    with log.open("w") as f:  # the child keeps its own handle
        return subprocess.Popen([*cmd, *serve_args], stdout=f, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    """Poll /healthz until the model is loaded (the first run may dequantize the GGUF)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")


async def fire(
    url: str, path: str, bodies: list[dict[str, Any]], concurrency: int
) -> dict[str, Any]:
    """Send every body with `concurrency` requests in flight; latencies of the successful ones."""
    latencies: list[float] = []
    errors: list[str] = []
    queue = list(reversed(bodies))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                start = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    ok = r.status_code == 200 and answered(r.json(), body)
                    if not ok:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                if ok:
                    latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"wall_s": wall, "latencies": latencies, "errors": errors}


def answered(doc: dict[str, Any], body: dict[str, Any]) -> bool:
    """Whether a 200 answers the request: every candidate ranked, or top_k items recommended."""
    if "candidates" in body:
        return len(doc["ranked"]) == len(body["candidates"])
    return len(doc["recommended"]) == body["top_k"]


def catalogue_titles(model: str) -> list[str]:
    path = Path(model) / "catalogue.jsonl"
    if not path.is_file():
        raise SystemExit(f"serve_load: --endpoint recommend needs a run with {path}")
    with path.open(encoding="utf-8") as f:
        return sorted(json.loads(line)["title"] for line in f if line.strip())


def make_bodies(args: argparse.Namespace, n: int, seed: int) -> list[dict[str, Any]]:
    if args.endpoint == "rank":
        return make_requests(n, args.history, args.candidates, seed)
    titles, rng = catalogue_titles(args.model), random.Random(seed)
    return [{"history": rng.sample(titles, args.history), "top_k": args.top_k} for _ in range(n)]


def percentile(lat_ms: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(lat_ms, q)), 1) if len(lat_ms) else None


def run_mode(name: str, serve_args: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One server in this mode, loaded at each concurrency in turn: a row per concurrency."""
    load_before = os.getloadavg()[0]  # other work on the machine skews every number here
    port = free_port()
    url, path = f"http://127.0.0.1:{port}", f"/v1/{args.endpoint}"
    log = Path(tempfile.mkstemp(prefix=f"serve_load_{name}_", suffix=".log")[1])
    proc = start_server(args.model, port, serve_args, log)
    rss = PeakRSS(proc.pid)
    rows = []
    try:
        wait_ready(url, proc, args.startup_timeout, log)
        asyncio.run(fire(url, path, make_bodies(args, args.warmup, args.seed + 1), 2))
        warm_mib = rss.current_mib()  # model loaded and touched, before the load
        bodies = make_bodies(args, args.requests, args.seed)
        for c in args.concurrency:
            before = httpx.get(f"{url}/healthz").json()
            print(f"{name}: {len(bodies)} {path} at concurrency {c} ...", flush=True)
            res = asyncio.run(fire(url, path, bodies, c))
            after = httpx.get(f"{url}/healthz").json()
            lat_ms = np.array(res["latencies"]) * 1000
            batches = after["batches"] - before["batches"]
            rows.append(
                {
                    "mode": name,
                    "endpoint": path,
                    "requests": len(bodies),
                    "concurrency": c,
                    "wall_s": round(res["wall_s"], 2),
                    "requests_per_s": round(len(lat_ms) / res["wall_s"], 3),
                    "p50_ms": percentile(lat_ms, 50),
                    "p95_ms": percentile(lat_ms, 95),
                    "errors": len(res["errors"]),
                    "first_errors": res["errors"][:5],
                    "mean_batch": round((after["requests"] - before["requests"]) / batches, 2)
                    if batches
                    else None,
                    "server_warm_rss_mib": round(warm_mib),
                    "load_avg_1min_before": round(load_before, 2),
                }
            )
    finally:
        peak = rss.stop()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    base = next(r for r in rows if r["concurrency"] == min(args.concurrency))
    for row in rows:
        row["server_peak_rss_mib"] = round(peak)
        row["speedup_vs_lowest_concurrency"] = round(
            row["requests_per_s"] / base["requests_per_s"], 2
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | endpoint | requests | concurrency | req/s | x c=1 | p50 ms | p95 ms | errors "
        "| mean batch | server RSS MiB warm / peak | load avg before |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['endpoint']} | {r['requests']} | {r['concurrency']} "
            f"| {r['requests_per_s']:.2f} | {r['speedup_vs_lowest_concurrency']:.2f} "
            f"| {r['p50_ms']} | {r['p95_ms']} | {r['errors']} | {r['mean_batch']} "
            f"| {r['server_warm_rss_mib']} / {r['server_peak_rss_mib']} "
            f"| {r['load_avg_1min_before']} |"
        )
    return "\n".join(lines)


def concurrencies(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected numbers >= 1 separated by commas, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        help="run dir or model name (default: builtin:smollm2-135m; runs/demo for "
        "--endpoint recommend)",
    )
    parser.add_argument("--endpoint", choices=["rank", "recommend"], default="rank")
    parser.add_argument("--requests", type=int, default=24, help="requests per concurrency")
    parser.add_argument(
        "--concurrency", type=concurrencies, default=[1, 4, 8], help="e.g. 1,4,8 (the default)"
    )
    parser.add_argument(
        "--modes", default="batching,no-batching", help="batching, no-batching or both"
    )
    parser.add_argument("--history", type=int, default=5, help="history titles per request")
    parser.add_argument("--candidates", type=int, default=3, help="rank: candidates a request")
    parser.add_argument("--top-k", type=int, default=10, help="recommend: items a request")
    parser.add_argument("--max-batch", type=int, default=8, help="the batching server's batch")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=4, help="requests before timing starts")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, help="JSON (default benchmarks/results/serve_load[_recommend].json)"
    )
    args = parser.parse_args()
    args.model = args.model or (
        "runs/demo" if args.endpoint == "recommend" else "builtin:smollm2-135m"
    )
    suffix = "" if args.endpoint == "rank" else f"_{args.endpoint}"
    args.out = args.out or RESULTS / f"serve_load{suffix}.json"

    known = {
        "batching": [
            "--max-batch",
            str(args.max_batch),
            "--batch-wait-ms",
            str(args.batch_wait_ms),
        ],
        "no-batching": ["--no-batching"],
    }
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(known):
        parser.error(f"--modes: one or both of {', '.join(known)}, got {args.modes!r}")
    rows = [row for name in modes for row in run_mode(name, known[name], args)]
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    doc = {
        "date": time.strftime("%Y-%m-%d"),
        "settings": settings,
        "machine": machine,
        "rows": rows,
    }
    partial = args.out.with_suffix(".json.partial")
    partial.write_text(json.dumps(doc, indent=2) + "\n")
    partial.replace(args.out)
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
