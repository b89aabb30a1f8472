"""Optional: the `openai` backend against a real llama.cpp OpenAI-compatible server.

Skipped unless `llama-cpp-python[server]` is installed (it builds from source, about 12 minutes
here, so CI does not install it). When it is, this starts `python -m llama_cpp.server` on a free
port serving the embedded SmolLM2 GGUF and sends a plain and a JSON-schema request through
distill's own `openai` backend, exactly as a user with `DISTILL_TEACHER_BASE_URL` would. The server
is started as the benchmarks start it (`bench/llamacpp.py`: with llama.cpp's repacked weights off
where they crash on this CPU, as on an AMX Xeon).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import llamacpp  # noqa: E402  (bench/llamacpp.py)
from distill.student import embedded  # noqa: E402
from distill.stages.protocol import extract_json  # noqa: E402
from distill.teachers.base import Request  # noqa: E402
from distill.teachers.openai_api import OpenAIWire  # noqa: E402
from distill.teachers.stack import live_teacher  # noqa: E402
from distill.teachers.resolve import resolve_settings  # noqa: E402

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
STARTUP_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    # the server logs a lot to stderr while loading: to a file, never to a pipe nobody drains (it would block)
    with open(log_path, "wb") as log:
        command = llamacpp.server_command(embedded.gguf_path(), port, llamacpp.threads())
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_bytes().decode(errors="replace")[-2000:]
                    pytest.fail(f"llama_cpp.server did not come up on port {port}: {tail}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def test_the_openai_backend_talks_to_llama_cpp(llama_server: str) -> None:
    settings = resolve_settings(env={"DISTILL_TEACHER": "openai:student", "DISTILL_TEACHER_BASE_URL": llama_server,
                                     "DISTILL_TEACHER_TIMEOUT": "120"})
    teacher = live_teacher(settings)  # no key needed for a local server
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 8}}, "required": ["answer"]}

    async def go() -> list:
        try:
            return list(await asyncio.gather(
                teacher.complete(Request(messages=({"role": "user", "content": "What is 2+2?"},), max_tokens=16)),
                teacher.complete(Request(messages=({"role": "user", "content": "What is 2+2? Answer in JSON."},),
                                         max_tokens=64, response_schema=schema))))
        finally:
            await teacher.aclose()

    plain, structured = asyncio.run(go())
    assert plain.text and plain.usage.output_tokens > 0 and plain.cost is None  # a local model: price unknown
    assert isinstance(extract_json(structured.text)["answer"], str)  # distill's own reading of a reply
    assert teacher.layer(OpenAIWire).json_mode in ("json_schema", "json_object")  # llama-cpp-python: json_object, after one refusal
