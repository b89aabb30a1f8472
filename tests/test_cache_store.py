"""The cache file under stress: several processes writing at once, corruption, a read-only
directory and a full disk. Each failure must be a CacheError naming the file and the way out,
and must never delete or rewrite the user's data."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from distill.cli import main as cli
from distill.errors import CacheError
from distill.teachers.base import Completion, Request, Usage
from distill.teachers.cache.entry import Entry
from distill.teachers.cache.layer import CachedTeacher
from distill.teachers.cache.store import CacheStore, cache_path

REPO = Path(__file__).resolve().parents[1]
IDENTITY = {"provider": "fake", "model": "echo"}


def entry(i: int, size: int = 300) -> Entry:
    return Entry.build(key=f"v1:{i:064x}", backend="fake", model="echo", request="{}", text="x" * size,
                       finish_reason="stop", input_tokens=1, output_tokens=1, raw={"body": "y" * 200},
                       response_model="echo", template_ids=["t"])


def filled(path: Path, n: int = 2000) -> Path:
    store = CacheStore(path)
    store.put_many([entry(i) for i in range(n)])
    store.close()  # the last connection checkpoints: everything is in the main file
    assert not Path(str(path) + "-wal").exists()
    return path


class Echo:
    """The inner teacher: upper-cases the prompt at once."""

    backend, model = "fake", "echo"

    def identity(self) -> dict[str, str]:
        return dict(IDENTITY)

    async def complete(self, request: Request) -> Completion:
        return Completion(text=request.messages[-1]["content"].upper(), finish_reason="stop", usage=Usage(1, 1))

    async def aclose(self) -> None:
        pass


# ------------------------------------------------------------------------------ many processes

WORKER = r"""
import asyncio, sys, time
from pathlib import Path
from distill.teachers.cache.layer import CachedTeacher
from distill.teachers.cache.store import CacheStore
from distill.teachers.base import Completion, Request, Usage

path, worker, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])

class Echo:
    backend, model = "fake", "echo"
    def identity(self): return {"provider": "fake", "model": "echo"}
    async def complete(self, r):
        return Completion(text=r.messages[-1]["content"].upper(), finish_reason="stop", usage=Usage(1, 1))
    async def aclose(self): pass

async def main():
    async with CachedTeacher(CacheStore(path), {"provider": "fake", "model": "echo"}, Echo) as teacher:
        while not go.exists():
            time.sleep(0.002)
        for i in range(n):
            await teacher.complete(Request(messages=({"role": "user", "content": f"w{worker}-{i}"},)))
            await teacher.complete(Request(messages=({"role": "user", "content": f"shared-{i % 50}"},)))
        print(teacher.stats.stored)

asyncio.run(main())
"""


def test_four_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path, go, n = cache_path(tmp_path / "cache"), tmp_path / "go", 300
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(w), str(n), str(go)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(4)]
    time.sleep(0.3)  # let every worker open the cache, then release them together
    go.touch()
    results = [w.communicate(timeout=120) for w in workers]
    for worker, (_, err) in zip(workers, results, strict=True):
        assert worker.returncode == 0, err
        assert "locked" not in err and "busy" not in err
    stored = sum(int(out.strip()) for out, _ in results)
    store = CacheStore(path)
    try:
        assert len(store) == stored == 4 * n + 50  # every shared key stored once, by whoever was first
        async def check() -> None:
            async with CachedTeacher(store, IDENTITY, None, offline=True, owns_store=False) as replay:
                for text in [f"w{w}-{i}" for w in range(4) for i in range(n)] + [f"shared-{i}" for i in range(50)]:
                    answer = await replay.complete(Request(messages=({"role": "user", "content": text},)))
                    assert answer.cached and answer.text == text.upper()
        asyncio.run(check())
    finally:
        store.close()


# ---------------------------------------------------------------------------------- corruption

def assert_recoverable(exc: CacheError, path: Path) -> None:
    message = str(exc)
    assert str(path) in message and "Nothing was deleted" in message
    assert "distill cache import" in message and "distill cache verify" in message and ".broken" in message


def test_a_file_that_is_not_sqlite_is_reported_and_kept(tmp_path: Path) -> None:
    path = cache_path(tmp_path)
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    with pytest.raises(CacheError) as caught:
        CacheStore(path)
    assert_recoverable(caught.value, path)
    assert path.read_bytes() == garbage


def test_a_truncated_file_is_reported_at_open_and_kept(tmp_path: Path) -> None:
    path = filled(cache_path(tmp_path))
    size = path.stat().st_size
    os.truncate(path, size // 2)
    with pytest.raises(CacheError, match="truncated") as caught:
        CacheStore(path)
    assert_recoverable(caught.value, path)
    assert path.stat().st_size == size // 2


def test_damaged_pages_fail_lookups_loudly_instead_of_calling_the_teacher(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = filled(cache_path(tmp_path))
    with path.open("r+b") as fh:
        fh.seek(4096 * 5)
        fh.write(b"\xff" * 4096 * 60)

    async def lookup() -> None:
        async with CachedTeacher(CacheStore(path), IDENTITY, Echo) as teacher:
            for i in range(50):
                await teacher.complete(Request(messages=({"role": "user", "content": f"q{i}"},)))

    with pytest.raises(CacheError) as caught:
        asyncio.run(lookup())
    assert_recoverable(caught.value, path)
    assert path.exists()
    assert cli(["cache", "verify", "--cache-dir", str(tmp_path)]) == 1
    assert "FAIL structure" in capsys.readouterr().out


# --------------------------------------------------------------------- read-only and full disk

def unprivileged(fn: Callable[[], str]) -> str:
    """Run fn where permissions bite: in place for a normal user, in a forked child as `nobody`
    when the tests run as root (root writes through any chmod)."""
    if os.geteuid() != 0:
        return fn()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            os.setgid(65534)
            os.setuid(65534)
            out = fn()
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            out = f"{type(exc).__name__}: {exc}"
        os.write(write, out.encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory `nobody` can traverse (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="distill-cache-test-"))
    directory.chmod(0o755)
    yield directory
    for sub in directory.rglob("*"):
        if sub.is_dir():
            sub.chmod(0o755)
    shutil.rmtree(directory)


def try_open(path: Path) -> Callable[[], str]:
    def attempt() -> str:
        try:
            CacheStore(path).close()
        except CacheError as exc:
            return f"CacheError: {exc}"
        return "opened"
    return attempt


def test_a_read_only_cache_directory_fails_clearly_and_touches_nothing(shared_dir: Path) -> None:
    run_file = shared_dir / "runs" / "r1" / "answers.jsonl"
    run_file.parent.mkdir(parents=True)
    run_file.write_text('{"id": "a"}\n')
    empty, existing = shared_dir / "empty", shared_dir / "existing"
    empty.mkdir()
    filled(cache_path(existing), n=10)
    before = cache_path(existing).read_bytes()
    for directory in (empty, existing):
        directory.chmod(0o555)
        outcome = unprivileged(try_open(cache_path(directory)))
        assert outcome.startswith("CacheError: "), outcome
        assert str(directory) in outcome and "DISTILL_CACHE_DIR" in outcome
    assert "read-only" in unprivileged(try_open(cache_path(empty)))
    assert sorted(p.name for p in empty.iterdir()) == []
    assert cache_path(existing).read_bytes() == before
    assert run_file.read_text() == '{"id": "a"}\n'


def test_a_full_disk_fails_clearly_and_keeps_what_was_stored(tmp_path: Path) -> None:
    path = cache_path(tmp_path)

    async def run() -> int:
        answered = 0
        async with CachedTeacher(CacheStore(path, max_size_bytes=120_000), IDENTITY, Echo) as teacher:
            for i in range(2000):
                await teacher.complete(Request(messages=({"role": "user", "content": f"{i} " + "z" * 500},)))
                answered += 1
        return answered

    with pytest.raises(CacheError, match="is full") as caught:
        asyncio.run(run())
    assert str(path) in str(caught.value)
    store = CacheStore(path)
    try:
        kept = len(store)
        assert kept > 10
        assert all(not e.problems() for e in store.iter_entries())
    finally:
        store.close()
