"""Load test of `dmporec serve` on loopback: requests/s, p50/p99 latency, errors, peak memory.

    .venv/bin/python benchmarks/serve_load.py [--model RUN_DIR] [--requests 1000] [--concurrency 8]

Starts `dmporec serve` in a subprocess on 127.0.0.1 twice, with batching (--max-batch, default 8)
and without (--no-batching), and fires the same --requests POST /v1/rank requests at each from
--concurrency httpx async clients. Requests are built from the demo catalog's generated titles
(seeded): --history titles (default 5) and --candidates (default 3, i.e. 6 prompts per request).
--model defaults to the packaged SmolLM2-135M-Instruct zero-shot (`builtin:smollm2-135m`); pass
a run dir to serve a trained one. --warmup requests go first, untimed. Latency is per request as
the client sees it; RSS is the server process's: once warm (model loaded and used) and its peak
during the load, sampled every 0.1 s. Prints a table and writes benchmarks/results/serve_load.json.

Run it on an otherwise idle machine: the server's torch uses every core, and when other processes
take some, its multi-threaded kernels stall (on 2 shared cores the batched tiny model ran 2.5x
slower than unbatched with 2 threads and 1.6x faster with OMP_NUM_THREADS=1, which the server
inherits). The table records the load average before each mode.
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

RESULTS = Path(__file__).resolve().parent / "results" / "serve_load.json"


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


async def fire(url: str, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
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
                    r = await client.post("/v1/rank", json=body)
                    ok = r.status_code == 200 and len(r.json()["ranked"]) == len(body["candidates"])
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


def run_mode(name: str, serve_args: list[str], args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()[0]  # other work on the machine skews every number here
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkstemp(prefix=f"serve_load_{name}_", suffix=".log")[1])
    proc = start_server(args.model, port, serve_args, log)
    rss = PeakRSS(proc.pid)
    try:
        wait_ready(url, proc, args.startup_timeout, log)
        warm = make_requests(args.warmup, args.history, args.candidates, seed=args.seed + 1)
        asyncio.run(fire(url, warm, args.concurrency))
        warm_mib = rss.current_mib()  # model loaded and touched, before the load
        before = httpx.get(f"{url}/healthz").json()
        bodies = make_requests(args.requests, args.history, args.candidates, seed=args.seed)
        print(f"{name}: {args.requests} requests at concurrency {args.concurrency} ...", flush=True)
        res = asyncio.run(fire(url, bodies, args.concurrency))
        after = httpx.get(f"{url}/healthz").json()
    finally:
        peak = rss.stop()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat_ms = np.array(res["latencies"]) * 1000
    batches = after["batches"] - before["batches"]
    return {
        "mode": name,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "wall_s": round(res["wall_s"], 2),
        "requests_per_s": round(args.requests / res["wall_s"], 2),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 1) if len(lat_ms) else None,
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 1) if len(lat_ms) else None,
        "errors": len(res["errors"]),
        "first_errors": res["errors"][:5],
        "mean_batch": round((after["requests"] - before["requests"]) / batches, 2)
        if batches
        else None,
        "server_warm_rss_mib": round(warm_mib),
        "server_peak_rss_mib": round(peak),
        "load_avg_1min_before": round(load_before, 2),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | requests | concurrency | req/s | p50 ms | p99 ms | errors | mean batch "
        "| server RSS MiB warm / peak | load avg before |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['requests']} | {r['concurrency']} | {r['requests_per_s']:.2f} "
            f"| {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | {r['mean_batch']} "
            f"| {r['server_warm_rss_mib']} / {r['server_peak_rss_mib']} "
            f"| {r['load_avg_1min_before']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m", help="run dir or model name")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--history", type=int, default=5, help="history titles per request")
    parser.add_argument("--candidates", type=int, default=3, help="candidates per request")
    parser.add_argument("--max-batch", type=int, default=8, help="the batching server's batch")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=16, help="requests before timing starts")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    modes = {
        "batching": [
            "--max-batch",
            str(args.max_batch),
            "--batch-wait-ms",
            str(args.batch_wait_ms),
        ],
        "no batching": ["--no-batching"],
    }
    rows = [run_mode(name, serve_args, args) for name, serve_args in modes.items()]
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    args.out.write_text(
        json.dumps({"settings": settings, "machine": machine, "rows": rows}, indent=2) + "\n"
    )
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
