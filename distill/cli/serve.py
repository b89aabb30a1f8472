"""`distill serve [--adapter DIR | NAME=DIR ...] [--port 8000]`: the student as an OpenAI-compatible server.

The base student is served as model `student`, each adapter under its name; a request joins the
batch that is already decoding (continuous batching, `distill.serving.batching`). `--engine vllm` hands the same base
and adapters to `vllm serve` instead (`distill.serving.vllm`).
"""

from __future__ import annotations

import argparse
import os
import sys

KEY_ENV = "DISTILL_SERVE_API_KEY"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve the student (and adapters) over an OpenAI-compatible HTTP API",
        description="Serve the student over the OpenAI API: /v1/chat/completions (stream: true as server-sent "
                    "events), /v1/completions and /v1/models. The base is model 'student'; each --adapter is "
                    "served under its directory name (or NAME=DIR) and chosen per request by the model name. "
                    "Concurrent requests decode together: a request that arrives while others decode joins their batch. Binds 127.0.0.1 unless --host says "
                    f"otherwise. The API key comes from --api-key, else ${KEY_ENV}; without one, none is required.")
    p.add_argument("--adapter", action="append", default=[], metavar="DIR|NAME=DIR",
                   help="a LoRA adapter directory to serve (repeatable); its model name is the directory's name "
                        "unless given as NAME=DIR")
    p.add_argument("--student", default=None,
                   help="the base student: a model directory (default $DISTILL_STUDENT, else the embedded SmolLM2)")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=None, help=f"require this key as 'Authorization: Bearer KEY' (or set ${KEY_ENV})")
    p.add_argument("--engine", choices=("transformers", "vllm"), default="transformers",
                   help="transformers (default, in this process) or vllm (runs `vllm serve`; needs vLLM and a GPU)")
    p.add_argument("--max-batch", type=int, default=32, help="most requests decoding together, per served model (default 32)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="when nothing is decoding, how long the first request waits for others to start with "
                        "(default 5 ms); while more arrive, one more such window (10 at most)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="the weights' dtype (default float32 on a CPU, bfloat16 on a GPU). bfloat16 on a CPU with "
                        "AMX or AVX512-BF16 decodes 1.4-1.8x faster; its greedy answers differ from float32's "
                        "on some prompts (bench/results/serve.md). Without those instructions bfloat16 is emulated "
                        "and slow")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from distill.serving import models

    adapters = models.parse_adapters(args.adapter)
    api_key = args.api_key or os.environ.get(KEY_ENV) or None
    if args.engine == "vllm":
        from distill.serving import vllm

        vllm.executable()  # fail before reading anything when vLLM is missing
        vllm.run(models.check_adapters(args.student, adapters), adapters, args.host, args.port, api_key)
        return 0
    from distill.serving.api import StudentServer

    students = models.load_students(args.student, adapters, device=args.device, dtype=args.dtype)
    if args.dtype == "bfloat16" and students[models.BASE_NAME].device.type == "cpu":
        from distill.student.packed import cpu_bf16

        if not cpu_bf16():
            print("warning: --dtype bfloat16: this CPU has neither AVX512-BF16 nor AMX, so bfloat16 is emulated "
                  "and decodes several times slower than float32", file=sys.stderr)
    with StudentServer(students, args.host, args.port, api_key=api_key, max_batch=args.max_batch,
                       wait_s=args.batch_wait_ms / 1000) as server:
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: bound to {args.host}: other machines can reach the server"
                  + ("" if api_key else " and no API key is required"), file=sys.stderr)
        print(server.url, flush=True)  # the OpenAI base URL, alone on stdout for scripts
        print(f"serving models {', '.join(students)} at {server.url} (OpenAI API"
              + (", API key required" if api_key else "") + "); Ctrl-C stops", file=sys.stderr, flush=True)
        server.wait()
    return 0
