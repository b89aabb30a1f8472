"""The batch book: runs/NAME/batches.json, the record of every provider batch a run sent.

Each batch (a `Part`) is written down before its create call and updated as it moves on, under an
exclusive lock and by atomic replacement, so `distill run` and `distill batch collect` on the same
run never lose each other's updates, and a run that died can be continued. A part's life:
submitting -> submitted -> ended -> collected; or abandoned (never created).

Files under runs/NAME/:
    batches.json                 one record per batch: provider, id, state, counts, teacher
    batches/PART.requests.jsonl  what the batch holds: key, custom_id, canonical request, template ids
    batches/PART.results.jsonl   how each of its rows ended, once collected
    batches/PART.submitting.lock held (flock) by the process creating the part's batch

`batch_summary`, `open_batches` and `summary_line` read the book for a run's manifest and its last
line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from distill.errors import InputError
from distill.records.files import write_atomic, write_jsonl
from distill.teachers.base import Usage
from distill.teachers.pricing import Pricing

BOOK = "batches.json"
FOLDER = "batches"
BOOK_FORMAT = "distill-batches"
BOOK_VERSION = 1

# A part's life: submitting -> submitted -> ended -> collected; or abandoned (never created).
SUBMITTING, SUBMITTED, ENDED, COLLECTED, ABANDONED = "submitting", "submitted", "ended", "collected", "abandoned"
OPEN_STATES = (SUBMITTING, SUBMITTED, ENDED)


@dataclass
class Part:
    """One provider batch of a run, as batches.json records it."""

    part: str  # local name; also the file names under batches/ and the OpenAI batch's metadata
    provider: str
    teacher: str  # backend:model
    endpoint: str  # the base URL it was sent to
    requests: int
    bytes: int
    state: str = SUBMITTING
    batch_id: str | None = None
    status: str = ""  # the provider's last word
    counts: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)  # once collected: succeeded/errored/...
    detail: str = ""
    submitted_at: float = field(default_factory=time.time)  # recorded just before the create call
    ended_at: float | None = None
    collected_at: float | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)  # shown to people; liveness is the part's lock (BatchBook)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> "Part":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in known})

    @property
    def done(self) -> int:
        """Rows the provider has finished, by its last counts (OpenAI: completed + failed of a
        total; Anthropic: everything but `processing`)."""
        if self.outcomes:
            return sum(self.outcomes.values())
        if "total" in self.counts:
            return int(self.counts.get("completed", 0)) + int(self.counts.get("failed", 0))
        return sum(int(v) for k, v in self.counts.items() if k != "processing")


class BatchBook:
    """runs/NAME/batches.json and the per-batch files beside it. Every change re-reads the file
    under an exclusive lock and replaces it atomically, so `distill run` and `distill batch
    collect` on the same run never lose each other's updates."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / BOOK
        self.folder = self.run_dir / FOLDER

    def parts(self) -> list[Part]:
        if not self.path.exists():
            return []
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{self.path}: unreadable batch record ({exc}); it lists the provider batches of this "
                             "run, so do not delete it while any may still be running") from None
        if not isinstance(doc, dict) or doc.get("format") != BOOK_FORMAT:
            raise InputError(f"{self.path}: not a distill batch record (format {BOOK_FORMAT!r} expected)")
        return [Part.from_dict(row) for row in doc.get("batches", [])]

    def get(self, name: str) -> Part:
        for part in self.parts():
            if part.part == name:
                return part
        raise InputError(f"{self.path}: no batch named {name!r}")

    def add(self, part: Part) -> None:
        with self._locked() as parts:
            parts.append(part)

    def update(self, name: str, **changes: Any) -> Part:
        with self._locked() as parts:
            for i, part in enumerate(parts):
                if part.part == name:
                    parts[i] = replace(part, **changes)
                    return parts[i]
        raise InputError(f"{self.path}: no batch named {name!r}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[Part]]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / (BOOK + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            parts = self.parts()
            yield parts
            doc = {"format": BOOK_FORMAT, "version": BOOK_VERSION, "batches": [asdict(p) for p in parts]}
            write_atomic(self.path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")

    def submitting_lock(self, name: str) -> Path:
        """The file the process creating part `name`'s batch holds locked while it does."""
        return self.folder / f"{name}.submitting.lock"

    @contextlib.contextmanager
    def submitting(self, name: str) -> Iterator[None]:
        """Hold part `name`'s lock: taken before the part is recorded, released once its batch id
        is (or the process dies: the system releases it then, so a reused PID cannot hold it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.submitting_lock(name), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def submitter_alive(self, part: Part) -> bool:
        """True when a process on this machine is creating `part`'s batch right now: it holds the
        part's lock. A PID is no proof (the system reuses them); another machine's lock cannot
        be seen from here, so its submitter counts as gone."""
        if part.host != socket.gethostname():
            return False
        try:
            with open(self.submitting_lock(part.part), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def write_requests(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        write_jsonl(self.folder / f"{name}.requests.jsonl", rows)

    def requests(self, name: str) -> list[dict[str, Any]]:
        return self._read(self.folder / f"{name}.requests.jsonl")

    def write_results(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        write_jsonl(self.folder / f"{name}.results.jsonl", rows)

    def results(self, name: str) -> list[dict[str, Any]]:
        path = self.folder / f"{name}.results.jsonl"
        return self._read(path) if path.exists() else []

    def succeeded_keys(self) -> set[str]:
        """Every key one of this run's batches answered."""
        return {row["key"] for part in self.parts() if part.state == COLLECTED
                for row in self.results(part.part) if row.get("outcome") == "succeeded"}

    def open_keys(self, parts: Sequence[Part]) -> set[str]:
        """The keys `parts` hold (batches not collected yet): not to be sent again."""
        return {row["key"] for part in parts for row in self.requests(part.part)}

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        try:
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            raise InputError(f"{path}: missing; it records which requests a provider batch holds") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: unreadable ({exc})") from None


# ---------------------------------------------------------------------------------- for the stages

def batch_summary(run_dir: Path, pricing: Pricing | None = None) -> dict[str, Any] | None:
    """All of the run's batches, over every process that worked on it, for its manifest: how many,
    their states, how their rows ended, the tokens of the answers, and (with the teacher's
    `pricing`) what those cost at batch prices beside what they would have cost live."""
    book = BatchBook(run_dir)
    parts = book.parts()
    if not parts:
        return None
    outcomes: Counter[str] = Counter()
    for part in parts:
        outcomes.update(part.outcomes)
    answered = [row for part in parts if part.state == COLLECTED for row in book.results(part.part)
                if row.get("outcome") == "succeeded"]
    usage = Usage(sum(int(r.get("input_tokens") or 0) for r in answered),
                  sum(int(r.get("output_tokens") or 0) for r in answered))
    summary: dict[str, Any] = {
        "batches": len(parts), "requests": sum(p.requests for p in parts if p.state != ABANDONED),
        "by_state": dict(Counter(p.state for p in parts)), "outcomes": dict(outcomes),
        "ids": [p.batch_id for p in parts if p.batch_id],
        "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if pricing is not None:
        summary["cost_usd"] = pricing.at(usage, batch=True)
        summary["cost_at_live_prices_usd"] = pricing.at(usage)
    return summary


def open_batches(run_dir: Path) -> int:
    """How many of the run's provider batches have not been collected yet (0 without batch records)."""
    return sum(1 for part in BatchBook(run_dir).parts() if part.state in OPEN_STATES)


def summary_line(summary: Mapping[str, Any]) -> str:
    """One line for the end of a run: the batches, their rows, and batch against live cost."""
    rows = ", ".join(f"{n} {k}" for k, n in sorted(summary["outcomes"].items())) or "none collected yet"
    line = (f"provider batches: {summary['batches']} ({summary['requests']} requests: {rows}), "
            f"{summary['input_tokens'] + summary['output_tokens']:,} tokens")
    if "cost_usd" in summary:
        def usd(value: float | None) -> str:
            return f"${value:.4f}" if value is not None else "unknown"
        line += f": {usd(summary['cost_usd'])} at batch prices, {usd(summary['cost_at_live_prices_usd'])} live"
    return line
