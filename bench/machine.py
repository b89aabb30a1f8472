"""What a benchmark ran on, and taking turns on a shared machine.

Every results file names the CPU, its core count, the instruction sets that decide which kernels run
(AVX2, AVX512, AVX512-BF16, AMX) and the library versions, so a table can be read against its
machine. `turn(lock)` holds an exclusive `flock` on a file around one measurement: on a machine
shared with other benchmarks (`--lock /tmp/bench.lock`), each measurement runs alone and the
others get the CPU between measurements instead of after the whole benchmark.
"""

from __future__ import annotations

import fcntl
import os
import platform
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu() -> str:
    """'AMD EPYC, 2 cores (avx2)': the model name, the cores this process may use, the kernels' flags."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    shown = [f for f in FLAGS if f in flags]
    return f"{name}, {len(os.sched_getaffinity(0))} cores ({', '.join(shown) or 'no avx2'})"


def versions(*packages: str) -> str:
    """'torch 2.13.0, transformers 5.24.0': the installed version of each package that is installed."""
    found = []
    for package in packages:
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


@contextmanager
def turn(lock: str | None) -> Iterator[None]:
    """Hold an exclusive flock on `lock` (no-op for None) for the duration of the block."""
    if lock is None:
        yield
        return
    with open(lock, "a") as handle:
        started = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        waited = time.monotonic() - started
        if waited > 1:
            print(f"(waited {waited:.0f} s for {lock})", flush=True, file=sys.stderr)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
