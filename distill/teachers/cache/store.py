"""The cache's storage: one SQLite file of entries, and the hit/miss statistics of each run.

Storage is one SQLite file (`$DISTILL_CACHE_DIR/teacher-calls.sqlite`) in WAL mode with a busy
timeout, `BEGIN IMMEDIATE` short write transactions and a bounded retry on SQLITE_BUSY, so several
processes can fill one cache at once. Every SQLite failure becomes a `CacheError` that names the
file and says how to recover (`distill.teachers.cache.failures`); a corrupt file is never deleted
or rebuilt behind the user's back. Every read verifies the entry it serves (`distill.teachers.cache.entry`).
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from distill import config
from distill.errors import CacheError
from distill.teachers.cache.entry import COLUMNS, Entry
from distill.teachers.cache.failures import check_not_truncated, is_busy, prepare_directory, sqlite_error

log = logging.getLogger(__name__)

FILENAME = "teacher-calls.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0  # SQLite's own wait for a lock, per statement
BUSY_RETRIES = 6  # then our own jittered retries on top, before giving up with a CacheError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,         -- 'v1:' + sha256(request)
    backend TEXT NOT NULL,            -- provider, e.g. 'openai'
    model TEXT NOT NULL,              -- resolved model identity's name
    request TEXT NOT NULL,            -- the canonical JSON the key hashes
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    raw TEXT NOT NULL,                -- the provider's full response body, canonical JSON
    response_model TEXT NOT NULL,     -- the model name the provider reported
    template_ids TEXT NOT NULL,       -- JSON list of the templates that rendered the request
    created_at REAL NOT NULL,         -- unix time
    checksum TEXT NOT NULL            -- sha256 over the stored response (see response_checksum)
);
CREATE INDEX IF NOT EXISTS entries_model ON entries(model);
CREATE INDEX IF NOT EXISTS entries_created ON entries(created_at);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, started_at REAL, finished_at REAL, backend TEXT, model TEXT,
    offline INTEGER, requests INTEGER, hits INTEGER, coalesced INTEGER, misses INTEGER,
    stored INTEGER, failed INTEGER, offline_misses INTEGER
);
"""
_RUN_COLUMNS = ("started_at", "finished_at", "backend", "model", "offline", "requests", "hits", "coalesced", "misses",
                "stored", "failed", "offline_misses")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM entries"
_INSERT = (f"INSERT OR IGNORE INTO entries ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in COLUMNS)})")
_REPLACE = _INSERT.replace("INSERT OR IGNORE", "INSERT OR REPLACE")  # over an entry that did not verify

T = TypeVar("T")


# --------------------------------------------------------------------------------------- the store

class CacheStore:
    """The SQLite file behind the cache. Thread-safe (a reading connection per thread, one
    writing connection behind a lock) and safe for several processes at once. Reads never wait
    for writers (WAL). Every failure is a CacheError naming `path`.

    `max_size_bytes` caps the file (SQLite's max_page_count); reaching it fails like a full disk.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_size_bytes: int | None = None):
        self.path = Path(path)
        self.max_size_bytes = max_size_bytes
        self._local = threading.local()  # one reading connection per thread
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None  # one writing connection, serialised by _write_lock
        self._write_lock = threading.Lock()
        self._closed = False
        self._damaged: set[str] = set()  # keys read here whose entry did not verify: a new answer replaces it
        prepare_directory(self.path)
        check_not_truncated(self.path)
        self._retrying("open the cache", self._initialise)

    # -- opening

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error(exc, "open the cache") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new file
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # WAL + FULL: a committed answer survives a power loss
            if self.max_size_bytes is not None:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {max(1, self.max_size_bytes // page_size)}")
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._connections.append(conn)
        return conn

    def _initialise(self) -> None:
        conn = self._conn()
        version = self._schema_version(conn)
        if version is None:
            with self._transaction() as tx:
                tx.executescript_in_tx(_SCHEMA)
                tx.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
            version = self._schema_version(conn)
        if version != SCHEMA_VERSION:
            raise CacheError(f"the cache file {self.path} has schema version {version}, this distill reads "
                             f"{SCHEMA_VERSION}; upgrade distill, or move the file aside and start a new cache")

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int | None:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is None:
            return None
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        return int(row[0]) if row else None

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise CacheError(f"the cache {self.path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    # -- errors and retries

    def _error(self, exc: sqlite3.Error, action: str) -> CacheError:
        return sqlite_error(exc, action, self.path, max_size_bytes=self.max_size_bytes,
                            locked_for_s=BUSY_TIMEOUT_S * BUSY_RETRIES)

    def _retrying(self, action: str, fn: Callable[[], T]) -> T:
        """Run fn; on SQLITE_BUSY/LOCKED (past SQLite's own busy timeout) retry a few times with jitter."""
        for attempt in range(BUSY_RETRIES + 1):
            try:
                return fn()
            except sqlite3.Error as exc:
                if not is_busy(exc) or attempt == BUSY_RETRIES:
                    raise self._error(exc, action) from None
                time.sleep(min(2.0, 0.02 * 2 ** attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _transaction(self) -> Iterator["_Tx"]:
        """A short write transaction on the writing connection. BEGIN IMMEDIATE takes SQLite's
        write lock up front, so a transaction never has to upgrade a read lock (which fails at
        once with SQLITE_BUSY instead of waiting)."""
        with self._write_lock:
            if self._closed:
                raise CacheError(f"the cache {self.path} is closed")
            if self._writer is None:
                self._writer = self._connect()
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Tx(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:  # pragma: no cover - the original error is the one to report
                        pass
                raise

    # -- reading

    def get(self, key: str, *, verify: bool = True) -> Entry | None:
        """The entry stored under `key`, or None. With `verify` (the default), an entry that does
        not verify (`Entry.damage`) is None too, with a warning (once per key): it is never served,
        and the next answer stored under its key replaces it."""
        row = self._retrying("read from the cache", lambda: self._conn().execute(
            _SELECT + " WHERE key = ?", (key,)).fetchone())
        if row is None:
            return None
        try:
            entry = Entry.from_row(row)
        except (TypeError, ValueError) as exc:
            return self._refuse(key, f"an unreadable field ({exc})")
        damage = entry.damage() if verify else None
        return entry if damage is None else self._refuse(key, damage)

    def _refuse(self, key: str, damage: str) -> None:
        with self._lock:
            first = key not in self._damaged
            self._damaged.add(key)
        if first:
            log.warning("the cached answer for %s in %s does not verify (%s): treated as a miss, not served. "
                        "`distill cache verify` lists every such entry (--delete-bad removes them)",
                        key, self.path, damage)
        return None

    def __contains__(self, key: str) -> bool:
        """True when a verified entry is stored under `key`."""
        return self.get(key) is not None

    def __len__(self) -> int:
        return int(self._retrying("count the cache", lambda: self._conn().execute(
            "SELECT count(*) FROM entries").fetchone()[0]))

    def iter_entries(self, batch: int = 1000, *,
                     unreadable: Callable[[str, str], None] | None = None) -> Iterator[Entry]:
        """Every entry, oldest first, read in batches of primary keys (no long-held cursor). A row
        that cannot be read as an entry goes to `unreadable(key, why)` and is skipped; without
        that callback it is a CacheError."""
        last = 0
        while True:
            def page() -> list[Any]:
                return self._conn().execute(f"SELECT id, {', '.join(COLUMNS)} FROM entries WHERE id > ? "
                                            "ORDER BY id LIMIT ?", (last, batch)).fetchall()
            rows = self._retrying("read the cache", page)
            if not rows:
                return
            for row in rows:
                try:
                    entry = Entry.from_row(row[1:])
                except (TypeError, ValueError) as exc:
                    if unreadable is None:
                        raise CacheError(f"the cache {self.path}: the entry {row[1]} cannot be read ({exc}); "
                                         "`distill cache verify --delete-bad` removes such entries") from None
                    unreadable(row[1], f"an unreadable field ({exc})")
                    continue
                yield entry
            last = rows[-1][0]

    # -- writing

    def put(self, entry: Entry) -> bool:
        """Store `entry` unless its key is already there (first answer wins; an entry read here
        that did not verify is replaced); True if it was added."""
        return self.put_many([entry]) == 1

    def put_many(self, entries: Sequence[Entry]) -> int:
        """Store several entries in one transaction; returns how many were new."""
        with self._lock:
            damaged = self._damaged & {e.key for e in entries}

        def write() -> int:
            with self._transaction() as tx:
                return sum(tx.execute(_REPLACE if e.key in damaged else _INSERT, e.to_row()).rowcount
                           for e in entries)
        added = self._retrying("write to the cache", write)
        with self._lock:
            self._damaged -= damaged
        return added

    def delete_keys(self, keys: Sequence[str]) -> int:
        def write() -> int:
            with self._transaction() as tx:
                return sum(tx.execute("DELETE FROM entries WHERE key = ?", (k,)).rowcount for k in keys)
        return self._retrying("delete from the cache", write)

    def prune(self, *, older_than_s: float | None = None, model: str | None = None, template: str | None = None,
              dry_run: bool = False) -> int:
        """Delete the entries matching every given filter; returns how many matched."""
        where, args = _prune_filter(older_than_s, model, template)
        if dry_run:
            return int(self._retrying("read the cache", lambda: self._conn().execute(
                "SELECT count(*) FROM entries WHERE " + where, args).fetchone()[0]))

        def write() -> int:
            with self._transaction() as tx:
                return tx.execute("DELETE FROM entries WHERE " + where, args).rowcount
        removed = self._retrying("prune the cache", write)
        self._retrying("reclaim space", lambda: self._conn().execute("PRAGMA incremental_vacuum").fetchall())
        return removed

    def record_run(self, stats: RunStats, backend: str, model: str) -> None:
        """Persist a run's hit/miss counts, so `distill cache stats` can show the last run."""
        row = (stats.started_at, time.time(), backend, model, int(stats.offline), stats.requests, stats.hits,
               stats.coalesced, stats.misses, stats.stored, stats.failed, stats.offline_misses)

        def write() -> None:
            with self._transaction() as tx:
                tx.execute(f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) "
                           f"VALUES ({', '.join('?' for _ in _RUN_COLUMNS)})", row)
                tx.execute("DELETE FROM runs WHERE id <= (SELECT max(id) FROM runs) - 1000")
        self._retrying("record the run's statistics", write)

    # -- reporting

    def summary(self) -> dict[str, Any]:
        """Entries, size on disk, counts by model and template, and the last recorded run."""
        def read() -> dict[str, Any]:
            conn = self._conn()
            count, oldest, newest = conn.execute("SELECT count(*), min(created_at), max(created_at) "
                                                 "FROM entries").fetchone()
            by_model = [{"backend": b, "model": m, "entries": n, "bytes": s} for b, m, n, s in conn.execute(
                "SELECT backend, model, count(*), sum(length(raw) + length(text) + length(request)) "
                "FROM entries GROUP BY backend, model ORDER BY count(*) DESC")]
            by_template = [{"template": t, "entries": n} for t, n in conn.execute(
                "SELECT coalesce(j.value, '(none)'), count(*) FROM entries "
                "LEFT JOIN json_each(entries.template_ids) AS j GROUP BY 1 ORDER BY 2 DESC, 1")]
            run = conn.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs ORDER BY id DESC LIMIT 1").fetchone()
            return {"path": str(self.path), "entries": count, "bytes": self.size_bytes(), "oldest": oldest,
                    "newest": newest, "by_model": by_model, "by_template": by_template,
                    "last_run": _run_dict(run) if run else None}
        return self._retrying("read the cache", read)

    def size_bytes(self) -> int:
        """Bytes on disk: the database plus its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += Path(str(self.path) + suffix).stat().st_size
            except FileNotFoundError:
                pass
        return total

    def integrity_problems(self) -> list[str]:
        """SQLite's own structural check (reads every page): empty when the file is sound."""
        try:
            rows = self._conn().execute("PRAGMA integrity_check(20)").fetchall()
        except sqlite3.Error as exc:
            return [str(exc)]
        return [line for r in rows if r[0] != "ok" for line in r[0].splitlines()]

    def close(self) -> None:
        """Close every connection (the last one out checkpoints and removes the WAL)."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._closed = True
            self._writer = None
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing never matters enough to fail a run
                pass


class _Tx:
    """The connection inside a write transaction (so callers cannot commit behind its back)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, args)

    def executescript_in_tx(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self._conn.execute(statement)


def _prune_filter(older_than_s: float | None, model: str | None, template: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if older_than_s is not None:
        clauses.append("created_at < ?")
        args.append(time.time() - older_than_s)
    if model is not None:
        clauses.append("(model = ? OR backend || ':' || model = ?)")
        args += [model, model]
    if template is not None:
        clauses.append("EXISTS (SELECT 1 FROM json_each(entries.template_ids) WHERE value = ?)")
        args.append(template)
    if not clauses:
        raise CacheError("prune needs at least one filter (older than, model or template)")
    return " AND ".join(clauses), args


def _run_dict(row: Sequence[Any]) -> dict[str, Any]:
    run = dict(zip(_RUN_COLUMNS, row))
    run["offline"] = bool(run["offline"])
    served = (run["hits"] or 0) + (run["coalesced"] or 0)
    run["hit_rate"] = served / run["requests"] if run["requests"] else None
    return run


# ------------------------------------------------------------------------------- run statistics

@dataclass
class RunStats:
    """What the cache did for this run. `misses` counts calls actually sent to the teacher."""

    offline: bool = False
    started_at: float = field(default_factory=time.time)
    requests: int = 0
    hits: int = 0  # served from the cache
    coalesced: int = 0  # identical to a request already in flight: waited for it, billed zero
    misses: int = 0  # sent to the teacher
    stored: int = 0
    failed: int = 0  # the teacher call raised
    offline_misses: int = 0
    deferred: int = 0  # batch mode: queued for a provider batch instead of being answered now

    @property
    def hit_rate(self) -> float | None:
        return (self.hits + self.coalesced) / self.requests if self.requests else None

    def line(self) -> str:
        rate = f"{self.hit_rate:.1%}" if self.hit_rate is not None else "n/a"
        offline = f", {self.offline_misses} offline misses" if self.offline else ""
        return (f"teacher cache: {self.requests} requests, {self.hits + self.coalesced} served from the cache "
                f"({rate}), {self.misses} sent, {self.stored} stored{offline}")


def cache_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache file: `CACHE_DIR/teacher-calls.sqlite`, CACHE_DIR defaulting to `$DISTILL_CACHE_DIR` or ./cache."""
    return Path(cache_dir if cache_dir is not None else config.cache_dir()) / FILENAME
