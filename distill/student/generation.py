"""Batched generation with per-row settings: one `model.generate` call for rows that differ in everything.

A batch of `Job`s (prompt text plus how to decode it) is generated in one call on a `Student`; the
local teacher (`distill.teachers.local`) and `distill serve` (`distill.serving.batching`) both
generate through `generate`, so an answer does not depend on which of them asked for it.

Within a batch every row keeps its own settings:
- decoding: greedy rows are left to `generate`'s own argmax, exactly as `Student.answer` decodes,
  so a greedy answer is the same text; a sampled row draws its token with its own temperature,
  top-p and `torch.Generator` (seeded by the job's `seed`, else at random), and the processor
  leaves only that token possible (`RowSampler`), so rows with different settings share a batch
  and a seeded job draws the same tokens whatever else is in its batch;
- stopping (`RowStops`, a per-row stopping criterion): its end-of-turn token, its `max_tokens`,
  or one of its `stop` strings (the text is cut before it, as OpenAI does), or its caller having
  gone (a job whose `future` is already done: finish reason "cancelled");
- a JSON schema: the row's grammar (`distill.student.grammar`) allows only tokens that keep the
  text a valid prefix of the schema, and at `max_tokens` the row closes its JSON in at most
  `CLOSING_ALLOWANCE` more tokens (finish reason `length`), so the text always parses; stop strings
  do not apply to it;
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

from distill.student.decode import nucleus
from distill.student.grammar import CLOSING_ALLOWANCE, Grammars, SchemaGuide

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
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    from distill.student.kv_cache import growing_cache

    student = grammars.student
    tokenizer = student.tokenizer
    enc = tokenizer([j.text for j in jobs], return_tensors="pt", padding=True,
                    add_special_tokens=False).to(student.device)
    rows = [RowText(job, tokenizer, student.eos_ids) for job in jobs]
    stops = RowStops(rows, lambda row, text: emit(row.job, text) if emit and row.job.on_delta is not None else None)
    guide = (SchemaGuide([j.grammar for j in jobs], [j.max_tokens for j in jobs], student.eos_ids, grammars.tiers())
             if any(j.grammar is not None for j in jobs) else None)
    processors = LogitsProcessorList([guide] if guide is not None else [])
    if any(j.temperature > 0 for j in jobs):
        processors.append(RowSampler(jobs))
    room = student.context_window - enc["input_ids"].shape[1]
    config = GenerationConfig(max_new_tokens=max(1, min(max(row.limit for row in rows), room)), do_sample=False,
                              temperature=None, top_p=None, top_k=None,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=list(student.eos_ids))
    with torch.inference_mode():
        student.model.generate(**enc, generation_config=config, logits_processor=processors,
                               stopping_criteria=StoppingCriteriaList([stops]), cache=growing_cache(student.model))
    results = []
    for i, row in enumerate(rows):
        final = row.finish()
        if emit and row.job.on_delta is not None and final:
            emit(row.job, final)
        ids = tuple(row.ids)
        if row.job.grammar is not None and guide is not None and guide.truncated[i]:
            # closed after max_tokens: finish reason length, and the forced end is not output
            results.append(Result(row.final_text(), "length", row.job.prompt_tokens, len(ids), ids))
        else:
            results.append(Result(row.final_text(), row.finish_reason or "length", row.job.prompt_tokens,
                                  row.completion_tokens, ids))
    return results


class RowText:
    """One row's tokens and text: what is final, what may be streamed, why it stopped."""

    def __init__(self, job: Job, tokenizer: Any, eos_ids: Sequence[int]):
        self.job, self.tokenizer, self.eos = job, tokenizer, set(eos_ids)
        self.stops = job.stop if job.grammar is None else ()
        self.limit = (job.max_tokens if job.grammar is None
                      else max(job.max_tokens, min(job.max_tokens + CLOSING_ALLOWANCE, job.room)))
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


class RowStops:
    """A per-row stopping criterion: feeds each row its new token and reports which rows are done."""

    def __init__(self, rows: list[RowText], on_text: Callable[[RowText, str], None]):
        self.rows, self.on_text = rows, on_text

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = []
        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            if row.finish_reason is None and row.job.future is not None and row.job.future.done():
                row.finish_reason = "cancelled"  # its caller has gone: free the batch for the others
            if row.finish_reason is None:
                text = row.add(int(token))
                if text:
                    self.on_text(row, text)
            done.append(row.finish_reason is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class RowSampler:
    """A logits processor that samples each sampled row with its own temperature, top-p and seed, and
    leaves that token the only one possible (so `generate`'s greedy pick takes it); greedy rows pass."""

    def __init__(self, jobs: Sequence[Job]):
        import torch

        self.jobs = list(jobs)
        self.generators = [torch.Generator().manual_seed(j.seed if j.seed is not None else secrets.randbits(63))
                           if j.temperature > 0 else None for j in jobs]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for i, (job, generator) in enumerate(zip(self.jobs, self.generators)):
            if generator is None:
                continue
            probs = torch.softmax(scores[i].float().cpu() / job.temperature, dim=-1)
            if job.top_p < 1:
                probs = nucleus(probs, job.top_p)
            token = int(torch.multinomial(probs, 1, generator=generator))
            scores[i].fill_(float("-inf"))
            scores[i, token] = 0.0
        return scores
