"""The teacher-call cache: every teacher answer stored once, keyed by everything that shapes it.

Why: a batch that ran once must be re-runnable, resumable and rebuildable on another machine
with zero teacher calls and zero cost. So the cache is a wrapper around the Teacher seam
(`CachedTeacher`), applied in exactly one place (`open_teacher`); no pipeline stage knows it
exists.

The key is `v1:` + sha256 of the canonical JSON (sorted keys, compact, UTF-8) of the provider,
the resolved model identity and `Request.output_fields()` with numeric types normalised, so the
same request built in another key order or argument order gives the same key. API keys, base
URLs, timeouts and retry settings never enter it. Each entry keeps that canonical text, so
`verify` and `import` re-derive every key instead of trusting it.

Every read verifies the entry it serves (`Entry.damage`: its key is the sha256 of its request, its
response matches its checksum; two hashes, cheap beside any model call): an entry altered on
disk is a miss with a warning, never an answer, and the answer fetched instead replaces it. A
checksum catches rot and careless edits, not a deliberate forgery: whoever edits an answer can
recompute its checksum (see `distill cache import`).

Storage is one SQLite file (`$DISTILL_CACHE_DIR/teacher-calls.sqlite`) in WAL mode with a busy
timeout, `BEGIN IMMEDIATE` short write transactions and a bounded retry on SQLITE_BUSY, so several
processes can fill one cache at once. Every SQLite failure becomes a `CacheError` that names the
file and says how to recover; a corrupt file is never deleted or rebuilt behind the user's back.

Offline (`DISTILL_OFFLINE=1` or `offline=True`), a miss raises `OfflineMiss` and no network client
is ever built: the backend factory is only called on the first online miss.

In batch mode (`distill.batch`) the teacher behind the cache is a queue that defers each miss
to a provider batch; the batch's answers come back into this same store through `entry_of`,
exactly as a live answer would be stored.

    CacheError                      (distill.errors)
    └── OfflineMiss                 a request is not cached and the run is offline
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring as _json_string  # how json writes a str with ensure_ascii=False
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypeVar

from distill import config
from distill.errors import CacheError, ConfigError
from distill.records.ids import canonical_json
from distill.teachers.base import Completion, Deferred, Request, Teacher, Usage
from distill.teachers.settings import FLAG_VALUES, TeacherSettings, parse_flag

if TYPE_CHECKING:
    from distill.batch import BatchMode

log = logging.getLogger(__name__)

KEY_VERSION = "v1"
FILENAME = "teacher-calls.sqlite"
SCHEMA_VERSION = 1
OFFLINE_ENV = "DISTILL_OFFLINE"
BUSY_TIMEOUT_S = 10.0  # SQLite's own wait for a lock, per statement
BUSY_RETRIES = 6  # then our own jittered retries on top, before giving up with a CacheError
SHOWN_MISSES = 5  # prompt ids listed in an offline-miss message

# Identity fields that never change the output; dropped even if a backend reports them.
EXCLUDED_IDENTITY_FIELDS = frozenset({
    "api_key", "base_url", "url", "endpoint", "timeout", "timeout_s", "max_retries", "retries",
    "concurrency", "rpm", "tpm", "requests_per_minute", "tokens_per_minute", "organization", "project",
})
# Finish reasons of a response that is not complete: never stored.
INCOMPLETE_FINISH_REASONS = frozenset({"", "error", "incomplete", "cancelled", "canceled", "timeout", "aborted"})

# SQLite primary result codes (the low byte of sqlite_errorcode).
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 3, 5, 6, 8, 10, 11, 13, 14, 26

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
_COLUMNS = ("key", "backend", "model", "request", "text", "finish_reason", "input_tokens", "output_tokens",
            "raw", "response_model", "template_ids", "created_at", "checksum")
_RUN_COLUMNS = ("started_at", "finished_at", "backend", "model", "offline", "requests", "hits", "coalesced", "misses",
                "stored", "failed", "offline_misses")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM entries"
_INSERT = (f"INSERT OR IGNORE INTO entries ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in _COLUMNS)})")
_REPLACE = _INSERT.replace("INSERT OR IGNORE", "INSERT OR REPLACE")  # over an entry that did not verify

T = TypeVar("T")


# --------------------------------------------------------------------------------------- the key

def key_material(identity: Mapping[str, Any], request: Request) -> dict[str, Any]:
    """What the key hashes: the model identity (minus connection settings) and the output fields."""
    ident = {k: v for k, v in identity.items() if k not in EXCLUDED_IDENTITY_FIELDS}
    fields = request.output_fields()
    for name in ("temperature", "top_p"):  # 1 and 1.0 (and -0.0 and 0.0) must hash alike
        fields[name] = float(fields[name]) + 0.0
    for name in ("max_tokens", "sample"):
        fields[name] = int(fields[name])
    if fields["seed"] is not None:
        fields["seed"] = int(fields["seed"])
    return {"identity": ident, "request": fields}


def canonical_request(identity: Mapping[str, Any], request: Request) -> str:
    """The canonical JSON text of `key_material`; raises CacheError naming an unhashable field."""
    material = key_material(identity, request)
    try:
        return canonical_json(material)
    except (TypeError, ValueError) as exc:
        named = [*material["request"].items(), *(("identity." + k, v) for k, v in material["identity"].items())]
        for name, value in named:
            try:
                canonical_json(value)
            except (TypeError, ValueError):
                raise CacheError(f"request field {name!r} cannot be part of a cache key: {exc}") from None
        raise CacheError(f"request cannot be part of a cache key: {exc}") from None


def _backend_name(identity: Mapping[str, Any]) -> str:
    """The provider an identity names (`provider`, else `backend`), as stored in an entry's `backend`."""
    return str(identity.get("provider") or identity.get("backend") or "")


def key_of(canonical: str) -> str:
    """The versioned key of a canonical request text."""
    return f"{KEY_VERSION}:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def cache_key(identity: Mapping[str, Any], request: Request) -> str:
    """The cache key of `request` sent to the model named by `identity`."""
    return key_of(canonical_request(identity, request))


def response_checksum(text: str, finish_reason: str, input_tokens: int, output_tokens: int,
                      response_model: str, raw: str) -> str:
    """sha256 over a stored response, so reads, `verify` and `import` catch edited or rotten
    answers: of the canonical JSON of [text, finish_reason, input_tokens, output_tokens,
    response_model], a newline, and the raw body."""
    head = _checksum_head(text, finish_reason, input_tokens, output_tokens, response_model)
    return hashlib.sha256((head + "\n" + raw).encode("utf-8")).hexdigest()


def _checksum_head(text: Any, finish_reason: Any, input_tokens: Any, output_tokens: Any, response_model: Any) -> str:
    """`canonical_json` of the five fields. Every cache read checks a checksum, so with their usual
    types (three strings, two ints) the text is written directly, the way json writes them with
    ensure_ascii=False (its own C string encoder, `int.__repr__`), without building an encoder."""
    if type(text) is str and type(finish_reason) is str and type(response_model) is str \
            and type(input_tokens) is int and type(output_tokens) is int:
        return (f"[{_json_string(text)},{_json_string(finish_reason)},{int.__repr__(input_tokens)},"
                f"{int.__repr__(output_tokens)},{_json_string(response_model)}]")
    return canonical_json([text, finish_reason, input_tokens, output_tokens, response_model])


# ------------------------------------------------------------------------------------- entries

@dataclass(frozen=True)
class Entry:
    """One stored teacher answer, exactly as it sits in the database."""

    key: str
    backend: str
    model: str
    request: str  # canonical JSON; key == key_of(request)
    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    raw: str  # canonical JSON of the provider's response body
    response_model: str
    template_ids: tuple[str, ...]
    created_at: float
    checksum: str

    @classmethod
    def build(cls, *, key: str, backend: str, model: str, request: str, text: str, finish_reason: str,
              input_tokens: int, output_tokens: int, raw: Mapping[str, Any], response_model: str,
              template_ids: Sequence[str], created_at: float | None = None) -> "Entry":
        """An entry with its raw body canonicalised and its checksum computed."""
        try:
            raw_text = canonical_json(dict(raw))
        except (TypeError, ValueError) as exc:
            raise CacheError(f"the {backend} response for key {key} has a raw body that is not JSON ({exc}); "
                             "the backend must return plain dicts in Completion.raw") from None
        return cls(key=key, backend=backend, model=model, request=request, text=text, finish_reason=finish_reason,
                   input_tokens=int(input_tokens), output_tokens=int(output_tokens), raw=raw_text,
                   response_model=response_model, template_ids=tuple(template_ids),
                   created_at=time.time() if created_at is None else float(created_at),
                   checksum=response_checksum(text, finish_reason, int(input_tokens), int(output_tokens),
                                              response_model, raw_text))

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "Entry":
        """The entry a database row holds; ValueError when its template ids are not a JSON list."""
        values = dict(zip(_COLUMNS, row))
        template_ids = json.loads(values["template_ids"])
        if not isinstance(template_ids, list):
            raise ValueError(f"template_ids is not a JSON list: {values['template_ids'][:60]!r}")
        values["template_ids"] = tuple(template_ids)
        return cls(**values)

    def to_row(self) -> tuple[Any, ...]:
        return tuple(json.dumps(list(self.template_ids), ensure_ascii=False) if c == "template_ids"
                     else getattr(self, c) for c in _COLUMNS)

    def problems(self) -> list[str]:
        """Why this entry cannot be trusted (empty when its key and checksum re-derive and its
        backend and model columns are the ones its request names)."""
        found = []
        try:
            material = json.loads(self.request)
            canonical = canonical_json(material)
        except (TypeError, ValueError):
            return ["the stored request is not valid JSON"]
        if canonical != self.request:
            found.append("the stored request is not in canonical form")
        if not self.key.startswith(KEY_VERSION + ":"):
            found.append(f"unknown key version {self.key.split(':', 1)[0]!r} (this distill writes {KEY_VERSION})")
        elif key_of(self.request) != self.key:
            found.append("the key does not match the sha256 of the stored request")
        found += self._column_problems(material)
        if not self._checksum_ok():
            found.append("the response does not match its checksum")
        return found

    def damage(self) -> str | None:
        """Why this entry must not be served, or None: the cheap check made on every read (its key
        is the sha256 of its request, its response matches its checksum). `problems()` checks more."""
        if key_of(self.request) != self.key:
            return "the key does not match the sha256 of the stored request"
        if not self._checksum_ok():
            return "the response does not match its checksum"
        return None

    def _checksum_ok(self) -> bool:
        return self.checksum == response_checksum(self.text, self.finish_reason, self.input_tokens,
                                                  self.output_tokens, self.response_model, self.raw)

    def _column_problems(self, material: Any) -> list[str]:
        """The backend and model columns (what `stats`, `export --model` and `prune --model` go by)
        must be the ones the request's identity names: the key does not cover them."""
        identity = material.get("identity") if isinstance(material, dict) else None
        if not isinstance(identity, dict):
            return ["the stored request names no model identity"]
        found = []
        if self.backend != _backend_name(identity):
            found.append(f"backend {self.backend!r} is not the one its request names ({_backend_name(identity)!r})")
        if self.model != str(identity.get("model") or ""):
            found.append(f"model {self.model!r} is not the one its request names ({identity.get('model')!r})")
        return found

    def to_completion(self, latency_s: float = 0.0) -> Completion:
        """The stored answer as a cache hit: flagged cached, billed zero."""
        return Completion(text=self.text, finish_reason=self.finish_reason, usage=Usage(), raw=json.loads(self.raw),
                          model=self.response_model, latency_s=latency_s, retries=0, cached=True, cost=0.0)


# --------------------------------------------------------------------------------------- store

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
        self._prepare_directory()
        self._check_not_truncated()
        self._retrying("open the cache", self._initialise)

    # -- opening

    def _prepare_directory(self) -> None:
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the cache directory {directory} ({exc.strerror}); "
                             "make it writable or point DISTILL_CACHE_DIR at a writable directory") from None
        if self.path.is_dir():
            raise CacheError(f"cache file {self.path} is a directory; move it aside or set DISTILL_CACHE_DIR")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise CacheError(f"the cache directory {directory} is read-only; SQLite needs to create "
                             f"{self.path.name}-wal and -shm beside the cache. Make it writable, or point "
                             "DISTILL_CACHE_DIR at a writable directory (copy the cache there)")
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise CacheError(f"the cache file {self.path} is not readable and writable by this user; "
                             "fix its permissions or point DISTILL_CACHE_DIR elsewhere")

    def _check_not_truncated(self) -> None:
        """Cheap early check: a file shorter than its own header says was cut off (copy, crash, full disk)."""
        try:
            size = self.path.stat().st_size
            if size == 0 or Path(str(self.path) + "-wal").exists():
                return  # empty (new), or in use / WAL not yet checkpointed: the header may lag
            with self.path.open("rb") as fh:
                header = fh.read(100)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CacheError(f"cannot read the cache file {self.path} ({exc.strerror})") from None
        if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
            raise self._corrupt("it does not start with an SQLite header")
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        header_valid = header[24:28] == header[92:96]
        if header_valid and pages and size < pages * page_size:
            raise self._corrupt(f"it is {size:,} bytes but its header says {pages * page_size:,}: truncated")

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

    def _corrupt(self, detail: str) -> CacheError:
        return CacheError(
            f"the teacher-call cache {self.path} is corrupt or truncated ({detail}). Nothing was deleted. "
            f"To recover, move it aside with its -wal and -shm files (mv {self.path} {self.path}.broken) and the "
            f"next run starts a fresh cache; refill it with `distill cache import EXPORT.jsonl` if you have an "
            f"export, or salvage the readable entries with `sqlite3 {self.path}.broken .recover | sqlite3 "
            f"{self.path}`. `distill cache verify` reports the damage")

    def _error(self, exc: sqlite3.Error, action: str) -> CacheError:
        code = _sqlite_code(exc)
        text = str(exc)
        if code in (_CORRUPT, _NOTADB) or "malformed" in text or "not a database" in text:
            return self._corrupt(text)
        if code == _FULL or "disk is full" in text:
            limit = f" (capped at {self.max_size_bytes:,} bytes)" if self.max_size_bytes else ""
            return CacheError(f"cannot {action}: the disk holding the cache {self.path} is full{limit}. Free "
                              "space, prune the cache (`distill cache prune`), or point DISTILL_CACHE_DIR at "
                              "another disk; the cache and the run's other files are left as they were")
        if code in (_READONLY, _PERM, _CANTOPEN) or "readonly" in text or "unable to open" in text:
            return CacheError(f"cannot {action}: the cache {self.path} (or its directory) is read-only or cannot "
                              f"be opened ({text}); make it writable or point DISTILL_CACHE_DIR at a writable "
                              "directory")
        if code in (_BUSY, _LOCKED) or "locked" in text:
            return CacheError(f"cannot {action}: the cache {self.path} stayed locked by another process for more "
                              f"than {BUSY_TIMEOUT_S * BUSY_RETRIES:.0f} s; is a process stuck holding it?")
        if code == _IOERR or "I/O" in text:
            return CacheError(f"cannot {action}: disk I/O error on the cache {self.path} ({text}); check the disk")
        return CacheError(f"cannot {action} in the cache {self.path}: {text}")

    def _retrying(self, action: str, fn: Callable[[], T]) -> T:
        """Run fn; on SQLITE_BUSY/LOCKED (past SQLite's own busy timeout) retry a few times with jitter."""
        for attempt in range(BUSY_RETRIES + 1):
            try:
                return fn()
            except sqlite3.Error as exc:
                if not _is_busy(exc) or attempt == BUSY_RETRIES:
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
                return self._conn().execute(f"SELECT id, {', '.join(_COLUMNS)} FROM entries WHERE id > ? "
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

    def record_run(self, stats: "RunStats", backend: str, model: str) -> None:
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


def _sqlite_code(exc: sqlite3.Error) -> int:
    """The SQLite primary result code of `exc` (0 when it carries none)."""
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF


def _is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock, so a retry may succeed."""
    text = str(exc)
    return _sqlite_code(exc) in (_BUSY, _LOCKED) or "locked" in text or "busy" in text


def _run_dict(row: Sequence[Any]) -> dict[str, Any]:
    run = dict(zip(_RUN_COLUMNS, row))
    run["offline"] = bool(run["offline"])
    served = (run["hits"] or 0) + (run["coalesced"] or 0)
    run["hit_rate"] = served / run["requests"] if run["requests"] else None
    return run


# ------------------------------------------------------------------------------ offline misses

class MissTally:
    """The offline misses of one run, shared by every `OfflineMiss` it raises, so a batch that
    records each failed row can still report all its misses in one message at the end."""

    def __init__(self, path: Path, shown: int = SHOWN_MISSES):
        self.path = path
        self.shown = shown
        self.count = 0
        self.prompt_ids: list[str] = []  # distinct, in order of first miss
        self._seen: set[str] = set()

    def record(self, request: Request, key: str) -> "OfflineMiss":
        self.count += 1
        label = request.prompt_id if request.prompt_id is not None else key[:19]
        if label not in self._seen:
            self._seen.add(label)
            self.prompt_ids.append(label)
        return OfflineMiss(self._message(f"the request for prompt {label!r} (key {key[:19]}...) is not in the cache",
                                         f"; {self.count} miss(es) so far in this run"),
                           prompt_id=request.prompt_id, key=key, tally=self)

    def summary(self, total: int | None = None) -> str:
        """One message for every miss so far (of `total` requests, when given)."""
        of = f" of {total}" if total is not None else ""
        return self._message(f"{self.count}{of} teacher request(s) are not in the cache")

    def _message(self, head: str, tail: str = "") -> str:
        ids = self.prompt_ids[: self.shown]
        more = len(self.prompt_ids) - len(ids)
        listed = ", ".join(ids) + (f" and {more} more" if more else "")
        return (f"offline mode: {head} at {self.path}{tail} (prompts: {listed}). Run once without --offline / "
                f"{OFFLINE_ENV}=1 to fill the cache, or bring one from another machine with "
                "`distill cache import EXPORT.jsonl`")


class OfflineMiss(CacheError):
    """A request is not in the cache and the run is offline. `tally` holds every miss of the run."""

    def __init__(self, message: str, *, prompt_id: str | None, key: str, tally: MissTally):
        super().__init__(message)
        self.prompt_id = prompt_id
        self.key = key
        self.tally = tally

    def summary(self, total: int | None = None) -> str:
        return self.tally.summary(total)


# --------------------------------------------------------------------------------- the wrapper

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


@dataclass
class _Flight:
    """One request on its way to the teacher, shared by every identical request meanwhile."""

    task: asyncio.Task[Completion]
    waiters: int = 0
    billed: bool = False  # the first waiter to get the answer pays for it; the others get a hit


class CachedTeacher:
    """A Teacher that answers from the cache and asks `factory()`'s teacher only on a miss.

    The inner teacher is built on the first online miss, so an offline or fully cached run never
    builds a network client. Identical requests in flight at once are sent once; the others wait
    for that answer and get it flagged cached with zero usage, like any hit. Only complete,
    successful answers are stored.
    """

    def __init__(self, store: CacheStore, identity: Mapping[str, Any], factory: Callable[[], Teacher] | None, *,
                 offline: bool = False, owns_store: bool = True,
                 on_hit: Callable[[Entry, Completion], Completion] | None = None):
        if factory is None and not offline:
            raise ConfigError("CachedTeacher: an online cache needs a backend factory (or offline=True)")
        self.store = store
        self._identity = dict(identity)
        self.backend = _backend_name(identity)
        self.model = str(identity.get("model") or "")
        self.offline = offline
        self._factory = factory
        self._owns_store = owns_store
        self._on_hit = on_hit  # batch mode: bills the run's own batch answers (see distill.batch)
        self._inner: Teacher | None = None
        self._inner_lock = asyncio.Lock()
        self._flights: dict[str, _Flight] = {}
        self.stats = RunStats(offline=offline)
        self.misses = MissTally(store.path)

    def identity(self) -> Mapping[str, Any]:
        return dict(self._identity)

    @property
    def inner(self) -> Teacher | None:
        """The wrapped backend, or None while it has not been needed."""
        return self._inner

    async def complete(self, request: Request) -> Completion:
        started = time.perf_counter()
        canonical = canonical_request(self._identity, request)
        key = key_of(canonical)
        self.stats.requests += 1
        entry = self.store.get(key)
        if entry is not None:
            self.stats.hits += 1
            completion = entry.to_completion(time.perf_counter() - started)
            return self._on_hit(entry, completion) if self._on_hit is not None else completion
        flight = self._flights.get(key)
        if flight is not None:
            self.stats.coalesced += 1
            return await self._wait(flight, started)
        if self.offline:
            self.stats.offline_misses += 1
            raise self.misses.record(request, key)
        flight = _Flight(asyncio.ensure_future(self._fetch(canonical, request)))
        self._flights[key] = flight
        flight.task.add_done_callback(lambda _: self._land(key, flight))
        return await self._wait(flight, started)

    def _land(self, key: str, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    async def _wait(self, flight: _Flight, started: float) -> Completion:
        """Await a shared call; the call is cancelled only when its last waiter is. The first
        waiter to receive the answer is billed for it (normally the one that sent it, but not if
        it was cancelled meanwhile); every other waiter gets it as a zero-usage hit."""
        flight.waiters += 1
        try:
            completion = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            if flight.waiters == 1 and not flight.task.done():
                flight.task.cancel()
            raise
        finally:
            flight.waiters -= 1
        if not flight.billed:
            flight.billed = True
            return completion
        return replace(completion, usage=Usage(), cost=0.0, cached=True, retries=0,
                       latency_s=time.perf_counter() - started)

    async def _fetch(self, canonical: str, request: Request) -> Completion:
        inner = await self._inner_teacher()
        self.stats.misses += 1
        try:
            completion = await inner.complete(request)
        except Deferred:
            self.stats.deferred += 1
            raise
        except BaseException:
            self.stats.failed += 1
            raise
        if storable(completion):
            entry = entry_of(self._identity, canonical, request, completion)
            if await asyncio.to_thread(self.store.put, entry):
                self.stats.stored += 1
        return completion

    async def _inner_teacher(self) -> Teacher:
        if self._inner is None:
            async with self._inner_lock:
                if self._inner is None:
                    assert self._factory is not None
                    self._inner = self._factory()
        return self._inner

    async def aclose(self) -> None:
        """Close the inner teacher (if one was built), record this run's statistics, close the store."""
        try:
            if self._inner is not None:
                await self._inner.aclose()
        finally:
            if self.stats.requests:
                try:
                    await asyncio.to_thread(self.store.record_run, self.stats, self.backend, self.model)
                except CacheError as exc:
                    log.warning("could not record the cache statistics of this run: %s", exc)
            if self._owns_store:
                self.store.close()

    async def __aenter__(self) -> "CachedTeacher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def entry_of(identity: Mapping[str, Any], canonical: str, request: Request, completion: Completion) -> Entry:
    """The entry that stores `completion` as the answer to `request`, whose canonical text
    (`canonical_request(identity, request)`) is `canonical` and gives the key: the one way an
    answer enters the cache, whether it came from a live call or a provider batch."""
    return Entry.build(key=key_of(canonical), backend=_backend_name(identity),
                       model=str(identity.get("model") or ""), request=canonical,
                       text=completion.text, finish_reason=completion.finish_reason,
                       input_tokens=completion.usage.input_tokens, output_tokens=completion.usage.output_tokens,
                       raw=completion.raw, response_model=completion.model, template_ids=request.template_ids)


def storable(completion: Completion) -> bool:
    """Only complete, successful answers are cached; an errored or cut-off-by-failure one is not."""
    if completion.cached:
        return False
    return (completion.finish_reason or "").lower() not in INCOMPLETE_FINISH_REASONS


# ------------------------------------------------------------------------- the one wiring point

def offline_from_env() -> bool:
    """`$DISTILL_OFFLINE` as a bool: 1/true/yes/on or 0/false/no/off (unset: online)."""
    try:
        return parse_flag(os.environ.get(OFFLINE_ENV, ""))
    except ValueError:
        raise ConfigError(f"{OFFLINE_ENV}={os.environ[OFFLINE_ENV]!r}: expected {FLAG_VALUES}") from None


def cache_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache file: `CACHE_DIR/teacher-calls.sqlite`, CACHE_DIR defaulting to `$DISTILL_CACHE_DIR` or ./cache."""
    return Path(cache_dir if cache_dir is not None else config.cache_dir()) / FILENAME


def open_teacher(settings: TeacherSettings, *, offline: bool | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, batch: BatchMode | None = None) -> Teacher:
    """THE place the cache is wrapped around a backend: every stage gets its teacher here.

    `offline=None` reads `$DISTILL_OFFLINE`. Offline, the backend is never built (no client, no
    connection); online it is built on the first miss by `registry.create_backend(settings)`.
    With `batch` (and online), no live backend is built at all: a miss is queued for a provider
    batch and deferred, and hits on the run's own batch answers are billed at the batch price.
    """
    from distill.teachers import registry  # the backend layer; imported lazily, it pulls in the SDKs

    offline = offline_from_env() if offline is None else offline
    identity = registry.backend_identity(settings)
    store = CacheStore(cache_path(cache_dir))
    if batch is not None and not offline:
        queue = batch.queue(settings, store, identity)
        return CachedTeacher(store, identity, lambda: queue, on_hit=queue.bill)
    factory = None if offline else (lambda: registry.create_backend(settings))
    return CachedTeacher(store, identity, factory, offline=offline)
