"""Benchmark: the teacher-call cache's lookups and inserts at 100,000 entries, and an offline
replay of a 1,000-request batch against its first run through a 50 ms loopback server.

Store: a cache is filled with N realistic entries (a system + user prompt of about 1 KB, an
OpenAI-shaped raw response of about 1.5 KB); then each run times random lookups straight from the
store, the same lookups as full `CachedTeacher.complete` hits (key hashing included), and inserts
of new entries one transaction each (what a run does on every miss).

Replay: a batch of R distinct requests goes once through `open_teacher` and the real `openai`
backend (the official SDK) against tests/loopback_server.py answering after a fixed latency (the
first run fills the cache), then the same batch is replayed with `offline=True`. The server counts
every request: the replays must add none. Targets: >= 20,000 lookups/s; the replay of 1,000 requests in < 2 s.

    python bench/cache.py                      # 100,000 entries, 1,000 requests, 5 runs
    python bench/cache.py --entries 20000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from loopback_server import LoopbackServer  # noqa: E402  (tests/loopback_server.py)

from distill.teachers.cache.layer import CachedTeacher  # noqa: E402
from distill.teachers.cache.entry import Entry
from distill.teachers.cache.key import canonical_request, key_of
from distill.teachers.cache.store import CacheStore, cache_path
from distill.teachers.base import Request  # noqa: E402

IDENTITY = {"provider": "openai", "model": "gpt-4o-mini"}
SYSTEM = "You are a careful critic. Point out every factual or logical error in the answer, then rewrite it. " * 3
ANSWER = "The critique: the answer confuses the premise with the conclusion; a correct version follows. " * 12


def request(i: int) -> Request:
    return Request(messages=({"role": "system", "content": SYSTEM},
                             {"role": "user", "content": f"Question {i}: why is the sky blue? " * 12}),
                   max_tokens=512, template_ids=("critique-v1",), prompt_id=f"p{i}")


def raw_body(i: int) -> dict[str, Any]:
    return {"id": f"chatcmpl-{i}", "object": "chat.completion", "created": 1700000000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 310, "completion_tokens": 240, "total_tokens": 550}}


def entry(i: int) -> Entry:
    canonical = canonical_request(IDENTITY, request(i))
    return Entry.build(key=key_of(canonical), backend="openai", model="gpt-4o-mini", request=canonical, text=ANSWER,
                       finish_reason="stop", input_tokens=310, output_tokens=240, raw=raw_body(i),
                       response_model="gpt-4o-mini-2024-07-18", template_ids=("critique-v1",))


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------- store

def bench_store(directory: Path, entries: int, runs: int, lookups: int, inserts: int) -> list[tuple[str, float, str]]:
    store = CacheStore(cache_path(directory))
    built = [entry(i) for i in range(entries)]
    fill = timed(lambda: [store.put_many(built[i:i + 1000]) for i in range(0, entries, 1000)])
    size_mb = store.size_bytes() / 1e6
    teacher = CachedTeacher(store, IDENTITY, None, offline=True, owns_store=False)
    get_rates, hit_rates, put_rates = [], [], []
    fresh = entries
    for _ in range(runs):
        picks = [random.randrange(entries) for _ in range(lookups)]
        keys = [built[i].key for i in picks]
        requests = [request(i) for i in picks]
        get_rates.append(lookups / timed(lambda: [store.get(k) for k in keys]))

        async def hits() -> None:
            for r in requests:
                await teacher.complete(r)
        hit_rates.append(lookups / timed(lambda: asyncio.run(hits())))
        new = [replace(built[i % entries], key=key_of(f"new-{fresh + i}")) for i in range(inserts)]
        fresh += inserts
        put_rates.append(inserts / timed(lambda: [store.put(e) for e in new]))
    store.close()
    med = statistics.median
    return [
        (f"lookups/s, store.get ({entries:,} entries, {size_mb:,.0f} MB)", med(get_rates), ">= 20,000"),
        ("lookups/s, CachedTeacher.complete hit (key hash included)", med(hit_rates), ">= 20,000"),
        ("inserts/s, one transaction each (a miss)", med(put_rates), ""),
        ("inserts/s, batches of 1,000 (import; the initial fill)", entries / fill, ""),
    ]


# ------------------------------------------------------------------------------------ replay

def teacher_settings(base_url: str, concurrency: int) -> Any:
    from distill.teachers.settings import Secret, TeacherSettings

    return TeacherSettings(backend="openai", model="gpt-4o-mini", base_url=base_url, api_key=Secret("sk-bench-key"),
                           concurrency=concurrency, max_retries=0)


async def one_batch(settings: Any, cache_dir: Path, n: int, offline: bool) -> float:
    from distill.teachers.stack import open_teacher

    started = time.perf_counter()
    teacher = open_teacher(settings, offline=offline, cache_dir=cache_dir)
    try:
        results = await asyncio.gather(*(teacher.complete(request(i)) for i in range(n)))
    finally:
        await teacher.aclose()
    elapsed = time.perf_counter() - started
    assert all(r.cached for r in results) == offline, "offline replay must be served from the cache alone"
    return elapsed


def bench_replay(directory: Path, n: int, runs: int, latency: float, concurrency: int) -> list[tuple[str, float, str]]:
    firsts, replays = [], []
    with LoopbackServer(latency_s=latency) as server:
        settings = teacher_settings(server.openai_url, concurrency)
        for run in range(max(1, runs // 2)):  # each first run needs an empty cache
            firsts.append(asyncio.run(one_batch(settings, directory / f"replay-{run}", n, offline=False)))
        sent = server.count()
        for _ in range(runs):
            replays.append(asyncio.run(one_batch(settings, directory / "replay-0", n, offline=True)))
        during_replay = server.count() - sent
    first, replay = statistics.median(firsts), statistics.median(replays)
    return [
        (f"first run, {n:,} requests, {latency * 1000:.0f} ms server, concurrency {concurrency} (s)", first, ""),
        (f"offline replay, {n:,} requests (s)", replay, "< 2 s"),
        ("first run / replay (x)", first / replay, ""),
        (f"HTTP requests: {len(firsts)} first runs / {len(replays)} replays", sent, f"{during_replay} (must be 0)"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=20_000, help="lookups timed per run")
    parser.add_argument("--inserts", type=int, default=2_000, help="single inserts timed per run")
    parser.add_argument("--requests", type=int, default=1_000, help="batch size of the replay benchmark")
    parser.add_argument("--latency", type=float, default=0.05, help="loopback server latency in seconds")
    parser.add_argument("--concurrency", type=int, default=64, help="teacher concurrency of the first run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="distill-bench-cache-"))
    try:
        rows = bench_store(directory / "store", args.entries, args.runs, args.lookups, args.inserts)
        rows += bench_replay(directory, args.requests, args.runs, args.latency, args.concurrency)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    width = max(len(name) for name, _, _ in rows)
    print(f"{'measurement (median of ' + str(args.runs) + ' runs)':<{width}}  {'value':>12}  target")
    for name, value, target in rows:
        shown = f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"
        print(f"{name:<{width}}  {shown:>12}  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
