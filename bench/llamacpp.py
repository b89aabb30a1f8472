"""llama.cpp as the peer the benchmarks measure distill against (llama-cpp-python, an optional install).

What a user would pick instead of distill on a CPU is llama.cpp on the same GGUF. Two ways of
generating are measured, both greedy on the prompt token ids distill's own chat template gives:

- `one_by_one`: llama-cpp-python's high-level `Llama.generate`, one prompt after another. This is
  what its API offers and what `python -m llama_cpp.server` does with concurrent requests (its
  server takes one request at a time).
- `batched`: llama.cpp's own batched decoding, as its `batched` example and the C++ `llama-server`'s
  parallel slots do it: one `llama_decode` per step over every unfinished sequence (each with its
  own KV cache stream), the prompts prefilled together, the next token the argmax of each
  sequence's logits.

The GGUF files: `shipped_gguf()` is the Q4_1 file the embedded student is converted from
(transformers computes with its weights de-quantized to float32, llama.cpp with Q4_1 blocks and
8-bit activations); `exported_gguf(kind)` writes the student with `distill export --format gguf
--type f32|f16` once into the cache: f32 holds exactly the weights transformers uses.

`pip install 'llama-cpp-python[server]'` (builds from source; `pip install -e '.[llamacpp]'`).

On a CPU with AMX, llama.cpp 0.3.36 repacks the Q4_1 weights into its AMX buffer and then dies of
a segmentation fault in the first `llama_decode` (seen on a 2-core Xeon with AMX-INT8, 2026-12-02).
`extra_buffers_work(gguf)` tries one decode in a subprocess; where it crashes, every model here is
loaded with `use_extra_bufts` off (the plain CPU buffers, what llama.cpp's `--no-repack` gives), and
`peer_note()` says so under each table.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GGUF_KINDS = ("q4_1", "f16", "f32")


def shipped_gguf() -> Path:
    from distill.student import embedded

    return embedded.gguf_path()


def exported_gguf(kind: str, student: str | None = None) -> Path:
    """`kind` 'q4_1' is the shipped file; 'f16'/'f32' are exported once under the cache (base only)."""
    if kind == "q4_1":
        if student:
            raise SystemExit("--gguf q4_1 is the embedded student's own file; with --student use f16 or f32")
        return shipped_gguf()
    from distill.config import cache_dir

    out = cache_dir() / "bench" / (f"gguf-{kind}-{Path(student).name}" if student else f"gguf-{kind}")
    path = out / "model.gguf"
    if not path.is_file():
        cmd = [sys.executable, "-m", "distill", "export", "--format", "gguf", "--base-only", "--type", kind,
               "-o", str(out), "--force"] + (["--student", student] if student else [])
        print(f"exporting the student once: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return path


_EXTRA_BUFFERS: dict[str, bool] = {}
_PROBE = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)
llm.eval([1, 2, 3])
"""
# `python -m llama_cpp.server` with extra buffer types off (`turn_off_extra_buffers`, then the server)
_SERVER_WITHOUT_EXTRA_BUFFERS = f"""
import runpy, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import llamacpp
llamacpp.turn_off_extra_buffers()
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def extra_buffers_work(gguf: Path) -> bool:
    """Whether llama.cpp decodes `gguf` with its extra (repacked, AMX) buffers without crashing; one
    subprocess per file and process."""
    key = str(gguf)
    if key not in _EXTRA_BUFFERS:
        done = subprocess.run([sys.executable, "-c", _PROBE, key], capture_output=True, timeout=300)
        _EXTRA_BUFFERS[key] = done.returncode == 0
        if done.returncode != 0:
            print(f"llama.cpp crashed decoding {gguf.name} with its repacked weights (exit {done.returncode}); "
                  "measuring it with use_extra_bufts off", file=sys.stderr, flush=True)
    return _EXTRA_BUFFERS[key]


def model_params(gguf: Path) -> object:
    """llama.cpp's default model parameters, with extra buffers off where they crash on this CPU."""
    import llama_cpp as lc

    params = lc.llama_model_default_params()
    params.use_extra_bufts = extra_buffers_work(gguf)
    return params


def turn_off_extra_buffers() -> None:
    """Make `llama_cpp.Llama` (which takes no option for them; llama-cpp-python's server builds its
    models through it) start from default model parameters with extra buffers off, for the rest of
    this process."""
    import llama_cpp.llama

    low_level = llama_cpp.llama.llama_cpp  # the module `Llama` reads its defaults from
    defaults = low_level.llama_model_default_params

    def plain() -> object:
        params = defaults()
        params.use_extra_bufts = False
        return params

    low_level.llama_model_default_params = plain


def plain_buffers_if_needed(gguf: Path) -> None:
    """`turn_off_extra_buffers()` where llama.cpp's extra buffers crash on `gguf`."""
    if not extra_buffers_work(gguf):
        turn_off_extra_buffers()


def peer_note() -> str:
    """A line for under a table where some GGUF ran without llama.cpp's repacked weights, else ''."""
    crashed = sorted(Path(k).name for k, ok in _EXTRA_BUFFERS.items() if not ok)
    if not crashed:
        return ""
    return (f"llama.cpp ran {', '.join(crashed)} with `use_extra_bufts` off: with its AMX-repacked weights "
            "it crashed (segmentation fault in `llama_decode`) on this CPU.")


def threads() -> int:
    """The cores this process may use: llama.cpp gets as many threads as torch does."""
    return len(os.sched_getaffinity(0))


def one_by_one(gguf: Path, prompts: Sequence[Sequence[int]], new_tokens: int, eos: Sequence[int],
               n_threads: int) -> tuple[list[list[int]], float]:
    """Greedy answers (token ids, end of turn included when reached) one prompt at a time, and the
    seconds they took (model loading excluded)."""
    from llama_cpp import Llama

    longest = max(len(p) for p in prompts) + new_tokens
    plain_buffers_if_needed(gguf)
    llm = Llama(model_path=str(gguf), n_ctx=max(512, longest), n_threads=n_threads, n_threads_batch=n_threads,
                verbose=False)
    answers = []
    started = time.perf_counter()
    for ids in prompts:
        answer: list[int] = []
        for token in llm.generate(list(ids), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            answer.append(int(token))
            if token in eos or len(answer) >= new_tokens:
                break
        answers.append(answer)
    return answers, time.perf_counter() - started


class Batched:
    """llama.cpp's batched greedy decoding over many sequences (the low-level API, as `batched.cpp`)."""

    def __init__(self, gguf: Path, n_seq: int, seq_tokens: int, n_threads: int):
        import llama_cpp as lc

        self.lc = lc
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(str(gguf).encode(), model_params(gguf))
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        params = lc.llama_context_default_params()
        params.n_seq_max = n_seq
        params.n_ctx = n_seq * seq_tokens
        params.n_batch = params.n_ubatch = 512
        params.n_threads = params.n_threads_batch = n_threads
        params.kv_unified = False  # a KV stream per sequence: no attention over the other sequences' cache
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.n_seq, self.n_batch = n_seq, params.n_batch
        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)

    def close(self) -> None:
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)

    def generate(self, prompts: Sequence[Sequence[int]], new_tokens: int, eos: Sequence[int]) -> list[list[int]]:
        """Greedy answers to up to `n_seq` prompts at once (token ids, end of turn included when reached)."""
        assert len(prompts) <= self.n_seq
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        # prefill: every prompt's tokens, in chunks of n_batch; logits at each prompt's last token
        entries = [(s, pos, tok, pos == len(p) - 1) for s, p in enumerate(prompts) for pos, tok in enumerate(p)]
        last: dict[int, int] = {}
        for start in range(0, len(entries), self.n_batch):
            chunk = entries[start:start + self.n_batch]
            self._decode(chunk)
            outputs = [s for s, _, _, wanted in chunk if wanted]
            for i, logits in zip(outputs, self._logits(len(outputs))):
                last[i] = int(logits.argmax())
        answers: list[list[int]] = [[] for _ in prompts]
        live = list(range(len(prompts)))
        while live:
            step = []
            for s in live:
                token = last[s]
                answers[s].append(token)
                if token not in eos and len(answers[s]) < new_tokens:
                    step.append((s, len(prompts[s]) + len(answers[s]) - 1, token, True))
            live = [s for s, _, _, _ in step]
            if not live:
                break
            self._decode(step)
            for s, logits in zip(live, self._logits(len(live))):
                last[s] = int(logits.argmax())
        return answers

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        batch = self.batch
        for i, (seq, pos, token, wanted) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 1 if wanted else 0
        batch.n_tokens = len(entries)
        code = self.lc.llama_decode(self.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed ({code})")

    def _logits(self, n_outputs: int) -> "np.ndarray":
        """The logits of the last decode's `n_outputs` outputs, one row each (a view, valid until the next decode)."""
        import numpy as np

        pointer = self.lc.llama_get_logits(self.ctx)
        flat = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                     shape=(n_outputs * self.n_vocab,))
        return flat.reshape(n_outputs, self.n_vocab)


def batched(gguf: Path, prompts: Sequence[Sequence[int]], new_tokens: int, eos: Sequence[int], batch_size: int,
            n_threads: int) -> tuple[list[list[int]], float]:
    """Greedy answers `batch_size` prompts at a time (longest first, as distill sorts them), and the
    seconds they took (model loading excluded)."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    engine = Batched(gguf, min(batch_size, len(prompts)), max(len(p) for p in prompts) + new_tokens, n_threads)
    answers: list[list[int]] = [[] for _ in prompts]
    try:
        started = time.perf_counter()
        for start in range(0, len(order), batch_size):
            group = order[start:start + batch_size]
            for i, answer in zip(group, engine.generate([prompts[i] for i in group], new_tokens, eos)):
                answers[i] = answer
        return answers, time.perf_counter() - started
    finally:
        engine.close()


def server_command(gguf: Path, port: int, n_threads: int, n_ctx: int = 2048) -> list[str]:
    """`python -m llama_cpp.server` on `gguf` at 127.0.0.1:`port`, served as model 'student'.

    `--interrupt_requests False`: by default a new request makes the server end the one it is
    streaming (with `[DONE]`, mid-answer); concurrent clients would get cut answers. Where the
    extra buffers crash on `gguf`, the server starts through a wrapper that turns them off."""
    start = ["-m", "llama_cpp.server"] if extra_buffers_work(gguf) else ["-c", _SERVER_WITHOUT_EXTRA_BUFFERS]
    return [sys.executable, *start, "--model", str(gguf), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(n_threads),
            "--n_threads_batch", str(n_threads), "--model_alias", "student", "--interrupt_requests", "False"]
