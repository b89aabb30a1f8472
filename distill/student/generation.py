"""Generation with per-row settings: requests that differ in everything decode in one batch.

`Job`s (prompt text plus how to decode it) decode together on a `Student` through the continuous
batching loop (`distill.student.decode.stream`), with `JobRules` deciding each row's token and
end. The local teacher (`distill.teachers.local`, a whole batch at a time through `generate`) and
`distill serve` (`distill.serving.batching`, requests joining a running batch) both decode this
way, so an answer does not depend on which of them asked for it, nor on the other rows it shared
a batch with.

Each row keeps its own settings:
- decoding: a greedy row takes the argmax, exactly as `Student.answer` decodes, so a greedy answer
  is the same text; a sampled row draws its token with its own temperature, top-p and
  `torch.Generator` (seeded by the job's `seed`, else at random), so a seeded job draws the same
  tokens whatever else is in its batch;
- stopping: its end-of-turn token, its `max_tokens`, or one of its `stop` strings (the text is cut
  before it, as OpenAI does), or its caller having gone (a job whose `future` is already done:
  finish reason "cancelled");
- a JSON schema: the row's grammar (`distill.student.grammar`) allows only tokens that keep the
  text a valid prefix of the schema, and at `max_tokens` the row closes its JSON in at most
  `CLOSING_ALLOWANCE` more tokens (finish reason `length`), so the text always parses; stop strings
  do not apply to it; temperature and top-p apply to the tokens the grammar allows;
- text: after every token each row's text so far is decoded and the part that can no longer
  change (not a partial UTF-8 character, not a possible start of a stop string, and when the job
  strips, not trailing whitespace) goes to `emit`, so streamed deltas concatenate to exactly the
  final text.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from distill.errors import ModelError
from distill.student.decode import nucleus, stream
from distill.student.grammar import CLOSING_ALLOWANCE, Grammars, close_row

log = logging.getLogger(__name__)

Delta = Callable[[str], None]


@dataclass
class Job:
    """One completion to generate: the prompt text as the model sees it and how to decode it."""

    text: str
    prompt_tokens: int
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    strip: bool = True  # chat answers are stripped, as Student.answer strips them; raw completions are not
    grammar: Any = None  # a compiled JSON-schema grammar (`Grammars.grammar`), or None for free text
    room: int = 0  # tokens the context window leaves after the prompt (a JSON row may close past max_tokens)
    on_delta: Delta | None = None  # called on the event loop with each new piece of text (streaming)
    future: asyncio.Future | None = field(default=None, repr=False)  # done early = the caller has gone
    model: str = ""  # which served model (distill serve batches by it)


@dataclass(frozen=True)
class Result:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string), "length" (max_tokens) or "cancelled"
    prompt_tokens: int
    completion_tokens: int  # the end-of-turn token counts; a JSON row's forced end does not
    token_ids: tuple[int, ...] = ()  # the answer's tokens, end of turn excluded


def generate(grammars: Grammars, jobs: Sequence[Job],
             emit: Callable[[Job, str], None] | None = None) -> list[Result]:
    """Generate every job in one batch on `grammars.student` (whose closing tiers a job with a grammar
    needs); `emit(job, text)` for each streamed piece of a job with an `on_delta`."""
    import torch

    student = grammars.student
    rules = JobRules(grammars, emit)
    prompts = [rules.add(i, job) for i, job in enumerate(jobs)]
    with torch.inference_mode():
        for _ in stream(student.model, prompts, slots=len(jobs), max_new_tokens=student.context_window,
                        eos_ids=student.eos_ids, pad_id=student.tokenizer.pad_token_id, rules=rules):
            pass
    return [rules.result(i) for i in range(len(jobs))]


class JobRules:
    """Each job's own decoding within a batch (`decode.Rules`): its grammar and token budget, its
    sampling, its stops and its stream. Jobs are added under an owner key as they join."""

    def __init__(self, grammars: Grammars, emit: Callable[[Job, str], None] | None = None):
        self.grammars, self.emit = grammars, emit
        self.rows: dict[Any, RowText] = {}
        self.matchers: dict[Any, Any] = {}  # owner -> xgrammar matcher, for jobs with a JSON schema
        self.generators: dict[Any, Any] = {}  # owner -> torch.Generator, for sampled jobs

    def add(self, owner: Any, job: Job) -> list[int]:
        """Take `job` under `owner`; returns its prompt's token ids."""
        import torch

        student = self.grammars.student
        self.rows[owner] = RowText(job, student.tokenizer, student.eos_ids)
        if job.grammar is not None:
            import xgrammar as xgr

            self.matchers[owner] = xgr.GrammarMatcher(job.grammar)
        if job.temperature > 0:
            seed = job.seed if job.seed is not None else secrets.randbits(63)
            self.generators[owner] = torch.Generator().manual_seed(seed)
        return student.tokenizer(job.text, add_special_tokens=False)["input_ids"]

    def pick(self, owners: Sequence[Any], logits: Any) -> Any:
        """Each row's next token: its grammar's mask (or, past its budget, the way out of its JSON),
        then argmax, or a draw from its own generator."""
        import torch

        self._mask(owners, logits)
        tokens = logits.argmax(dim=-1)
        for i, owner in enumerate(owners):
            generator = self.generators.get(owner)
            if generator is None:
                continue
            job = self.rows[owner].job
            probs = torch.softmax(logits[i].float().cpu() / job.temperature, dim=-1)
            if job.top_p < 1:
                probs = nucleus(probs, job.top_p)
            tokens[i] = int(torch.multinomial(probs, 1, generator=generator))
        return tokens

    def ended(self, owner: Any, token: int) -> bool:
        """Feed `owner`'s row its token (its grammar, its text, its stream); True once it has ended."""
        row = self.rows[owner]
        matcher = self.matchers.get(owner)
        if matcher is not None and token not in row.eos and not matcher.accept_token(token):
            raise ModelError(f"constrained decoding: a row produced token {token}, which its grammar rejects")
        if row.job.future is not None and row.job.future.done():
            row.finish_reason = "cancelled"  # its caller has gone: free the row for the others
        else:
            self._send(row, row.add(token))
        if row.finish_reason is None:
            return False
        self._send(row, row.finish())
        return True

    def result(self, owner: Any) -> Result:
        """The ended row's result; the row is forgotten."""
        row = self.rows.pop(owner)
        self.matchers.pop(owner, None)
        self.generators.pop(owner, None)
        ids = tuple(row.ids)
        if row.job.grammar is not None and row.completion_tokens > row.job.max_tokens:
            # closed after max_tokens (`_mask`): finish reason length, the forced end not output
            return Result(row.final_text(), "length", row.job.prompt_tokens, len(ids), ids)
        return Result(row.final_text(), row.finish_reason or "length", row.job.prompt_tokens,
                      row.completion_tokens, ids)

    def _mask(self, owners: Sequence[Any], logits: Any) -> None:
        import xgrammar as xgr

        guided = [i for i, owner in enumerate(owners) if owner in self.matchers]
        if guided:
            bitmask = xgr.allocate_token_bitmask(logits.shape[0], logits.shape[1])
            for i in guided:
                self.matchers[owners[i]].fill_next_token_bitmask(bitmask, i)
            xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=guided,
                                            backend="cpu" if logits.device.type == "cpu" else "auto")
        for i in guided:  # a JSON row past its budget: the quickest way out of its JSON
            row = self.rows[owners[i]]
            if row.completion_tokens >= row.job.max_tokens:
                close_row(logits[i], self.grammars.tiers())

    def _send(self, row: RowText, text: str) -> None:
        if text and self.emit is not None and row.job.on_delta is not None:
            self.emit(row.job, text)


class RowText:
    """One row's tokens and text: what is final, what may be streamed, why it stopped."""

    def __init__(self, job: Job, tokenizer: Any, eos_ids: Sequence[int]):
        self.job, self.tokenizer, self.eos = job, tokenizer, set(eos_ids)
        self.stops = job.stop if job.grammar is None else ()
        self.limit = (job.max_tokens if job.grammar is None
                      else max(job.max_tokens, min(job.max_tokens + CLOSING_ALLOWANCE, job.room)))
        if job.room > 0:  # never past the context window
            self.limit = min(self.limit, job.room)
        self.ids: list[int] = []
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.sent = ""
        self._text = ""

    def add(self, token: int) -> str:
        """Take the next token; returns the newly streamable text ("" when none)."""
        self.completion_tokens += 1
        if token in self.eos:
            self.finish_reason = "stop"
            return ""
        self.ids.append(token)
        self._text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = first_stop(self._text, self.stops)
        if cut is not None:
            self._text, self.finish_reason = self._text[:cut], "stop"
        elif self.completion_tokens >= self.limit:
            self.finish_reason = "length"
        if self.finish_reason is not None:
            return ""
        return self._advance(self._streamable())

    def finish(self) -> str:
        """The text not yet streamed, once the row has ended."""
        return self._advance(self.final_text())

    def final_text(self) -> str:
        return self._text.strip() if self.job.strip else self._text

    def _streamable(self) -> str:
        text = self._text.rstrip("\ufffd")  # a multi-byte character still being decoded
        text = text[:len(text) - stop_prefix(text, self.stops)]
        return text.strip() if self.job.strip else text

    def _advance(self, visible: str) -> str:
        if not visible.startswith(self.sent):  # decoding revised earlier text: keep what was sent, say so
            log.warning("streamed text was revised by later tokens; the stream keeps the earlier text")
            return ""
        delta, self.sent = visible[len(self.sent):], visible
        return delta


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string begins in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
