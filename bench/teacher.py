"""Benchmark: distill's teacher client against a naive `asyncio.gather` over the SDK, at a rate limit.

Both send the same batch (default 2,000 chat completions, all submitted at once, as a pipeline
stage does) to the loopback server (tests/loopback_server.py) running in its own process with
50 ms latency and an enforced 3,000 requests/minute (a token bucket holding one second of burst,
answering 429 with retry-after-ms beyond it). Clients:

    distill          the `openai` backend from distill.teachers.stack.live_teacher, DISTILL_TEACHER_RPM set to the limit
    distill-learned  the same with no RPM set: the limit is learned from x-ratelimit-* headers
    naive            AsyncOpenAI with default settings (httpx transport, 2 SDK retries) and
                     asyncio.gather over every request

Each run uses a fresh server and a fresh client process, so CPU time and 429 counts are its own.
Reported per client (median of --runs runs): makespan, achieved throughput as a fraction of the
limit, 429 answers, requests lost (failed for good), client CPU per request (process_time of the
client process during the batch / requests) and p50/p99 of submit-to-done latency, which for a
batch submitted at once is mostly time spent queued behind the rate limit.

    python bench/teacher.py                       # 2,000 requests, 3,000 RPM, 50 ms, 3 runs each
    python bench/teacher.py --requests 500 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "loopback_server.py"
CLIENTS = ("distill", "distill-learned", "naive")
MODEL = "gpt-4o-mini"


# ---------------------------------------------------------------- one client run (in its own process)

async def _timed_gather(send: Callable[[int], Awaitable[Any]], n: int) -> list[tuple[bool, float]]:
    """Submit `send(0)` ... `send(n - 1)` at once; (succeeded, submit-to-done seconds) for each."""
    async def one(i: int) -> tuple[bool, float]:
        started = time.monotonic()
        try:
            await send(i)
            return True, time.monotonic() - started
        except Exception:
            return False, time.monotonic() - started

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _distill(url: str, n: int, rpm: int | None) -> list[tuple[bool, float]]:
    from distill.teachers.base import Request
    from distill.teachers.resolve import resolve_settings
    from distill.teachers.stack import live_teacher

    env = {"DISTILL_TEACHER": f"openai:{MODEL}", "DISTILL_TEACHER_BASE_URL": url,
           "DISTILL_TEACHER_API_KEY": "sk-bench-0000000000000000"}
    teacher = live_teacher(resolve_settings(env=env, overrides={"rpm": rpm}))
    try:
        return await _timed_gather(lambda i: teacher.complete(
            Request(messages=({"role": "user", "content": f"prompt {i}"},), max_tokens=16)), n)
    finally:
        await teacher.aclose()


async def _naive(url: str, n: int) -> list[tuple[bool, float]]:
    import openai

    client = openai.AsyncOpenAI(api_key="sk-bench-0000000000000000", base_url=url)
    try:
        return await _timed_gather(lambda i: client.chat.completions.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": f"prompt {i}"}]), n)
    finally:
        await client.close()


def worker(client: str, url: str, n: int, rpm: int) -> dict[str, Any]:
    import openai  # noqa: F401  (import cost outside the measurement, for every client)

    if client == "naive":
        load = _naive(url, n)
    else:
        import distill.teachers.openai_api  # noqa: F401
        load = _distill(url, n, rpm if client == "distill" else None)
    cpu, wall = time.process_time(), time.monotonic()
    results = asyncio.run(load)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    ok = sorted(latency for good, latency in results if good)
    return {"wall_s": wall, "cpu_s": cpu, "ok": len(ok), "lost": n - len(ok),
            "p50_s": _quantile(ok, 0.50), "p99_s": _quantile(ok, 0.99)}


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


# ---------------------------------------------------------------- the driver

def start_server(rpm: int, latency_ms: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, str(SERVER), "--rpm", str(rpm), "--latency-ms", str(latency_ms)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = process.stdout.readline().strip()  # type: ignore[union-attr]
    if not url.startswith("http"):
        raise RuntimeError(f"the loopback server did not start (said {url!r})")
    return process, url


def server_stats(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/_loopback/stats", timeout=10) as response:
        return json.loads(response.read())


def one_run(client: str, n: int, rpm: int, latency_ms: float) -> dict[str, Any]:
    server, url = start_server(rpm, latency_ms)
    try:
        out = subprocess.run([sys.executable, __file__, "--worker", client, "--url", url + "/v1",
                              "--requests", str(n), "--rpm", str(rpm)],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        stats = server_stats(url)
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(30)
    result["http_requests"] = stats["requests"]
    result["429s"] = stats["by_status"].get("429", 0)
    result["limit_fraction"] = result["ok"] / result["wall_s"] / (rpm / 60)
    result["cpu_ms_per_request"] = result["cpu_s"] / n * 1000
    return result


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def table(results: dict[str, list[dict[str, Any]]], n: int) -> str:
    naive_cpu = median(results["naive"], "cpu_ms_per_request") if "naive" in results else None
    lines = ["| client | makespan s | fraction of limit | 429s | 429s % of requests | lost | client CPU ms/request "
             "| CPU vs naive | p50 s | p99 s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for client, runs in results.items():
        cpu = median(runs, "cpu_ms_per_request")
        ratio = f"{cpu / naive_cpu:.2f}x" if naive_cpu else "-"
        lines.append(f"| {client} | {median(runs, 'wall_s'):.1f} | {median(runs, 'limit_fraction'):.3f} | "
                     f"{median(runs, '429s'):.0f} | {median(runs, '429s') / n * 100:.2f}% | {median(runs, 'lost'):.0f} | "
                     f"{cpu:.3f} | {ratio} | {median(runs, 'p50_s'):.2f} | {median(runs, 'p99_s'):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rpm", type=int, default=3000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--runs", type=int, default=3, help="runs per client; the table shows medians")
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"comma-separated subset of {CLIENTS}")
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.url, args.requests, args.rpm)))
        return 0
    clients = [c for c in args.clients.split(",") if c]
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in clients}
    for run in range(args.runs):
        for client in clients:
            result = one_run(client, args.requests, args.rpm, args.latency_ms)
            results[client].append(result)
            print(f"run {run + 1}/{args.runs} {client}: {result['ok']} ok, {result['lost']} lost, "
                  f"{result['429s']} x 429, {result['wall_s']:.1f} s, {result['cpu_ms_per_request']:.3f} ms CPU/request",
                  file=sys.stderr, flush=True)
    print(f"\n{args.requests} requests, limit {args.rpm} RPM (1 s burst), {args.latency_ms:.0f} ms latency, "
          f"median of {args.runs} run(s)\n")
    print(table(results, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
