"""Benchmark: `distill serve` against llama.cpp's OpenAI-compatible server under concurrent clients.

Each server runs as a subprocess on a free 127.0.0.1 port, one at a time (so they never share the
cores), serving the same student: `distill serve` (the embedded SmolLM2-135M-Instruct, float32;
`distill-unpacked` is the same with `DISTILL_PACKED=0`, PyTorch's own linear layers; `distill-bf16`
the same with `--dtype bfloat16`, fast only on CPUs with AMX or AVX512-BF16) and
`python -m llama_cpp.server` (llama-cpp-python) on the student's GGUF (--gguf: the shipped q4_1
file, or f32/f16 as `distill export --format gguf` writes it), both with as many threads as there
are cores. For each concurrency level (--concurrency, default 1, 8 and 32) that many clients send
streaming chat completions (`stream: true`, temperature 0, a fixed `max_tokens`), each client its
next request as soon as its previous one ends, until the level's requests are sent (at least
--requests, and two per client); the prompts are those of prompts/examples, in a fixed order.

Per level it measures the aggregate completion tokens per second (all answers' tokens over the
level's wall time; an answer's tokens are its text re-tokenised by the student's tokenizer, the
same count for both servers), the time to the first content token (median over requests) and the
request latency (p50 and p99, nearest rank; with few requests p99 is the slowest). The table gives
the median of --runs runs of each figure and the ratio of distill's tokens/s to llama.cpp's; after
it, how many distinct prompts got the same greedy answer from both servers. One request per server
warms it up first and is not counted.

llama-cpp-python's server takes one request at a time (its requests queue on a lock; it runs with
`--interrupt_requests False`, since by default a new request cuts the answer being streamed), so
its throughput does not grow with clients; the C++ `llama-server` with `-np N` batches, and is not
what this measures. `--lock FILE` holds an flock on FILE while each server runs.

    python bench/serve.py                                       # 1, 8, 32 clients, 64 tokens, 3 runs
    python bench/serve.py --runs 1 --concurrency 8 --servers distill --distill-args "--max-batch 64"
    python bench/serve.py --out bench/results/serve.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llamacpp  # noqa: E402  (bench/llamacpp.py)
import machine  # noqa: E402  (bench/machine.py)

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("distill", "distill-unpacked", "distill-bf16", "llama.cpp")
STARTUP_S = 300


@dataclass(frozen=True)
class Sample:
    """One request: when it was sent, when its first content arrived, when it ended, and its text."""

    prompt: int
    sent: float
    first: float
    done: float
    text: str


def load_messages() -> list[list[dict]]:
    from distill.records.prompts import read_prompts

    prompts = read_prompts(ROOT / "prompts/examples/train.jsonl") + read_prompts(ROOT / "prompts/examples/heldout.jsonl")
    return [[dict(m) for m in p.messages] for p in prompts]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server subprocess (logs to a file), ready once `GET /v1/models` answers; `peak_rss_mb` at the end."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.port = name, free_port()
        env = {**os.environ, "DISTILL_PACKED": "0"} if name == "distill-unpacked" else None
        if name.startswith("distill"):
            dtype = ["--dtype", "bfloat16"] if name == "distill-bf16" else []
            cmd = [sys.executable, "-m", "distill", "serve", "--port", str(self.port), *dtype,
                   *shlex.split(args.distill_args)] + (["--student", args.student] if args.student else [])
        else:
            cmd = llamacpp.server_command(llamacpp.exported_gguf(args.gguf, args.student), self.port,
                                          llamacpp.threads())
        self.command = (["DISTILL_PACKED=0"] if env else []) + cmd
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-serve-{name}-", suffix=".log", delete=False)
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not come up: {Path(self.log.name).read_text()[-3000:]}")
            time.sleep(0.5)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return math.nan

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        os.unlink(self.log.name)


async def one_request(client: "httpx.AsyncClient", url: str, messages: list[dict], prompt: int,
                      max_tokens: int) -> Sample:
    body = {"model": "student", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    sent = time.perf_counter()
    first, parts = math.nan, []
    async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if not parts:
                        first = time.perf_counter()
                    parts.append(content)
    return Sample(prompt, sent, first, time.perf_counter(), "".join(parts).strip())


async def level(url: str, prompts: list[list[dict]], clients: int, requests: int, max_tokens: int) -> list[Sample]:
    """`clients` closed-loop clients sending `requests` requests in all (prompt i for request i)."""
    import httpx

    todo = list(range(requests))
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def client_loop() -> None:
            while todo:
                i = todo.pop(0)
                samples.append(await one_request(client, url, prompts[i % len(prompts)], i % len(prompts),
                                                 max_tokens))

        await asyncio.gather(*(client_loop() for _ in range(clients)))
    return samples


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def figures(samples: list[Sample], count: Callable[[str], int]) -> dict[str, float]:
    wall = max(s.done for s in samples) - min(s.sent for s in samples)
    latencies = [s.done - s.sent for s in samples]
    return {"tok_s": sum(count(s.text) for s in samples) / wall,
            "ttft": statistics.median(s.first - s.sent for s in samples if not math.isnan(s.first)),
            "p50": nearest_rank(latencies, 0.50), "p99": nearest_rank(latencies, 0.99)}


def bench_server(name: str, args: argparse.Namespace, prompts: list[list[dict]], levels: list[int],
                 count: Callable[[str], int]) -> tuple[dict[int, list[dict]], dict[int, str], float, list[str]]:
    """Every run of every level on one server: (figures per level, answer per prompt, peak RSS, command)."""
    runs: dict[int, list[dict]] = {c: [] for c in levels}
    answers: dict[int, str] = {}
    with machine.turn(args.lock):
        server = Server(name, args)
        try:
            server.wait_ready()
            asyncio.run(level(server.url, prompts, 1, 1, args.max_tokens))  # warm-up, not counted
            for run in range(args.runs):
                for clients in levels:
                    requests = max(args.requests, 2 * clients)
                    samples = asyncio.run(level(server.url, prompts, clients, requests, args.max_tokens))
                    f = figures(samples, count)
                    runs[clients].append(f)
                    for s in samples:
                        answers.setdefault(s.prompt, s.text)
                    print(f"run {run + 1}/{args.runs} {name:9s} {clients:3d} clients {requests:3d} requests: "
                          f"{f['tok_s']:6.1f} tok/s, ttft {f['ttft'] * 1000:6.0f} ms, p50 {f['p50']:5.2f} s, "
                          f"p99 {f['p99']:5.2f} s", file=sys.stderr, flush=True)
            rss = server.peak_rss_mb()
        finally:
            server.stop()
    return runs, answers, rss, server.command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8,32", help="client counts, comma-separated (1,8,32)")
    parser.add_argument("--requests", type=int, default=16, help="requests per level, at least 2 per client (16)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--servers", default="distill,llama.cpp",
                        help=f"comma-separated, from {', '.join(SERVERS)} (distill,llama.cpp)")
    parser.add_argument("--gguf", default="q4_1", choices=("q4_1", "f16", "f32"), help="llama.cpp's model file")
    parser.add_argument("--student", default=None)
    parser.add_argument("--distill-args", default="", help="more flags for `distill serve`, e.g. '--max-batch 64'")
    parser.add_argument("--lock", default=None, help="hold an flock on this file while each server runs")
    parser.add_argument("--out", default=None, help="also write the table (with the command line) to this file")
    args = parser.parse_args()
    out = Path(args.out).resolve() if args.out else None
    os.chdir(ROOT)
    levels = [int(c) for c in args.concurrency.split(",")]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := [s for s in servers if s not in SERVERS]:
        parser.error(f"unknown server: {', '.join(unknown)}")
    from transformers import AutoTokenizer

    from distill.student.model import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_source(args.student)[0])

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompts = load_messages()
    measured = {name: bench_server(name, args, prompts, levels, count) for name in servers}
    text = table(args, levels, servers, measured)
    print("\n" + text)
    if out is not None:
        out.write_text(f"`python bench/serve.py {' '.join(sys.argv[1:])}`\n\n{text}\n")


def table(args: argparse.Namespace, levels: list[int], servers: list[str], measured: dict) -> str:  # type: ignore[type-arg]
    labels = {"distill": "distill serve (float32)", "distill-unpacked": "distill serve, DISTILL_PACKED=0",
              "distill-bf16": "distill serve --dtype bfloat16",
              "llama.cpp": f"llama_cpp.server (GGUF {args.gguf})"}
    lines = [f"streaming chat completions, max_tokens {args.max_tokens}, temperature 0, median of {args.runs} run(s); "
             f"{machine.cpu()}; {machine.versions('torch', 'transformers', 'llama_cpp_python')}", "",
             "| server | clients | requests | tokens/s | vs llama.cpp | TTFT p50 ms | latency p50 s | latency p99 s "
             "| server peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for clients in levels:
        for name in servers:
            runs, _, rss, _ = measured[name]
            med = {k: statistics.median(r[k] for r in runs[clients]) for k in ("tok_s", "ttft", "p50", "p99")}
            other = measured.get("llama.cpp")
            ratio = (f"{med['tok_s'] / statistics.median(r['tok_s'] for r in other[0][clients]):.2f}x"
                     if other is not None else "-")
            lines.append(f"| {labels[name]} | {clients} | {max(args.requests, 2 * clients)} | {med['tok_s']:.1f} "
                         f"| {ratio} | {med['ttft'] * 1000:.0f} | {med['p50']:.2f} | {med['p99']:.2f} | {rss:.0f} |")
    for first, second in zip(servers, servers[1:]):
        a, b = measured[first][1], measured[second][1]
        shared = sorted(set(a) & set(b))
        same = sum(a[i] == b[i] for i in shared)
        lines += ["", f"same greedy answer from {first} and {second}: {same}/{len(shared)} prompts"]
    lines += ["", "servers: " + "; ".join(f"`{shown(measured[n][3])}`" for n in servers)]
    if note := llamacpp.peer_note():
        lines += ["", note]
    return "\n".join(lines)


def shown(command: list[str]) -> str:
    """A server's command line as a reader would type it: `python`, file names, PORT."""
    parts = ["python" if c == sys.executable else Path(c).name if c.startswith("/") else c for c in command]
    parts = ["-c '<llama_cpp.server, use_extra_bufts off>'" if prev == "-c" else c
             for prev, c in zip([""] + parts, parts) if c != "-c"]
    return " ".join("PORT" if prev == "--port" else c for prev, c in zip([""] + parts, parts))


if __name__ == "__main__":
    main()
