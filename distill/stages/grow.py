"""Growing a prompt set with the teacher: Self-Instruct, Evol-Instruct and red-team prompts, kept only when new.

A user usually has a few dozen example prompts; a round wants hundreds. Three ways to get more:

- `self-instruct` (Wang et al., 2023): each request shows the teacher a few prompts (up to
  `examples`: from the seeds, and two already generated once there are some, as the paper does)
  and asks for `per_request` new, different ones;
- `evol` (Evol-Instruct, Xu et al., 2023): each request rewrites one prompt of the pool into a
  harder one by one method: deepen, add constraints, concretise, or add reasoning steps;
- `red-team`: each request asks for adversarial prompts in one harm category, plus harmless
  look-alikes marked `harmful: false` (to measure over-refusal), with a few seeds for style. Each
  kept prompt carries a `reference` check: `refuses` for a harmful one, `complies` for a harmless
  one (`distill.checks.refusal`), so the filters keep only revisions that refuse (or help) as they
  should and the gate measures both rates on held-out red-team prompts. `distill run --chain
  harmless` critiques the answers with the harmlessness principles.

Every candidate passes the filters in order, and each one dropped is written to the rejected file
with the filter and the reason: `malformed` (not a prompt), `unanswerable` (the teacher says it
needs an image, a file, the internet, ...), `blocklist` (holds a blocked word or phrase), `length`
(words outside [min_words, max_words]), `duplicate` (the same words as a seed or a kept prompt)
and `novelty` (ROUGE-L against a seed or a kept prompt at or above `novelty`, default 0.7 as in
Self-Instruct; `distill.checks.novelty`). With `references`, the teacher may propose a `reference`
check and its own answer; the check is kept only when it parses and the teacher's answer passes it.

Requests go out in waves of at most `WAVE`, as many as the prompts still wanted need at
`per_request` each, and stop once `n` are kept (the candidates after the n-th are not looked at:
`unused` in the summary). A request is a pure function of the seed, its number and the prompts
kept before its wave, so a re-run sends the same requests: the cache answers them (zero teacher calls,
offline too), and batch mode works as in a round. The teacher calls run through the stage runner.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from distill.checks.novelty import NoveltyIndex, words
from distill.checks.reference import parse_reference, run_checks
from distill.config import option
from distill.errors import ConfigError, QuotaExhausted, TeacherError
from distill.records.ids import content_hash
from distill.records.prompts import Prompt
from distill.records.rows import Rejected
from distill.stages.accounting import Ledger
from distill.stages.protocol import ProtocolError, ProtocolFailure, ask, extract_json, quote
from distill.stages.runner import run_rows
from distill.stages.templates import PromptSet, Template, load_template
from distill.teachers.base import Request, Teacher
from distill.teachers.cache.layer import OfflineMiss
from distill.teachers.stack import TeacherHandle

METHODS = ("self-instruct", "evol", "red-team")
WAVE = 8  # requests planned together from the same pool; fixed, so the requests never depend on concurrency
EVOL_OPERATIONS = {
    "deepen": "ask for more depth: the same topic, but a question that needs deeper knowledge or a fuller answer",
    "constraints": "add one or two concrete requirements the answer must meet (a format, a length, something "
                   "to include or to avoid)",
    "concretise": "replace general concepts with specific ones (a particular case, place, number or example)",
    "reasoning": "make it need several explicit reasoning steps, if a few simple steps solve it now",
}
HARM_CATEGORIES = ("violence and weapons", "self-harm", "illegal drugs", "hacking and malware", "fraud and scams",
                   "hate and harassment")
GROW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"prompts": {"type": "array", "items": {"type": "object", "properties": {
        "prompt": {"type": "string"}, "answerable": {"type": "boolean"}, "needs": {"type": "string"},
        "harmful": {"type": "boolean"}, "reference": {}, "answer": {"type": "string"}},
        "required": ["prompt"]}}},
    "required": ["prompts"],
}
REFERENCE_NOTE = (' Where a task has one objectively checkable answer (a number, a word, a required format), '
                  'add "reference", a check such as {"type": "numeric", "value": 42} or {"type": "contains", '
                  '"value": "Paris"} or {"type": "max_words", "value": 50}, and "answer", your own answer to it.')


@dataclass(frozen=True)
class GrowConfig:
    """How `distill grow` grows a prompt set."""

    method: str = option("self-instruct", help="how new prompts are made", choices=METHODS)
    n: int = option(100, help="prompts to keep")
    per_request: int = option(8, help="new prompts asked for per teacher request (evol: always 1)")
    examples: int = option(8, help="prompts shown per request (self-instruct)")
    novelty: float = option(0.7, help="drop a prompt whose ROUGE-L against a seed or kept prompt reaches this")
    min_words: int = option(3, help="drop prompts with fewer words")
    max_words: int = option(200, help="drop prompts with more words")
    blocklist: tuple[str, ...] = option((), help="comma-separated words or phrases; a prompt holding one is dropped")
    categories: tuple[str, ...] = option(HARM_CATEGORIES, help="red-team: comma-separated harm categories")
    references: bool = option(False, help="ask the teacher for a reference check, kept when its own answer passes")
    seed: int = option(0, help="seed for choosing the examples shown and the evol methods")
    max_requests: int | None = option(None, help="stop after this many teacher requests",
                                      default_text="4 x n / per_request, at least 8")
    temperature: float = option(1.0, help="the teacher's sampling temperature (diversity)")
    teacher_max_tokens: int = option(2048, help="the teacher's reply limit")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.n < 1 or self.per_request < 1 or self.examples < 1:
            raise ConfigError(f"n, per_request and examples must be at least 1 (got {self.n}, {self.per_request}, "
                              f"{self.examples})")
        if not 0 < self.novelty <= 1:
            raise ConfigError(f"novelty must be in (0, 1], got {self.novelty}")
        if self.method == "red-team" and not self.categories:
            raise ConfigError("red-team needs at least one harm category (--categories)")

    @property
    def request_limit(self) -> int:
        per = 1 if self.method == "evol" else self.per_request
        return self.max_requests or max(8, math.ceil(4 * self.n / per))


@dataclass(frozen=True)
class Planned:
    """One teacher request of the growth, and what it was made from."""

    number: int
    request: Request
    parents: tuple[str, ...]
    notes: Mapping[str, Any]


@dataclass
class Growth:
    """What a growth kept and dropped, with the novelty score of every candidate that reached that filter."""

    kept: list[Prompt] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    novelty: list[tuple[float, bool]] = field(default_factory=list)  # (ROUGE-L, kept)
    requests: int = 0
    failed_requests: int = 0
    unused: int = 0  # candidates after the n-th kept prompt, not looked at
    references: dict[str, int] = field(default_factory=dict)  # kept / dropped

    def dropped(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rejected:
            out[row.filter] = out.get(row.filter, 0) + 1
        return out


def templates(prompt_set: PromptSet, method: str) -> tuple[Template, Template]:
    """The system and request templates of `method`, from the prompts folder's templates/."""
    return load_template(prompt_set.root, "grow-system"), load_template(prompt_set.root, f"grow-{method}")


def _examples(prompts: Sequence[Prompt]) -> str:
    return "\n\n".join(f"<<<EXAMPLE\n{quote(p.text)}\nEXAMPLE>>>" for p in prompts)


def plan(number: int, config: GrowConfig, seeds: Sequence[Prompt], grown: Sequence[Prompt],
         system: Template, template: Template) -> Planned:
    """Request `number`: which prompts it shows and what it asks, from the seed and the pool alone."""
    rng = random.Random(int(content_hash([config.seed, config.method, number]), 16))
    notes: dict[str, Any] = {}
    values: dict[str, str] = {"reference_note": REFERENCE_NOTE if config.references else ""}
    if config.method == "self-instruct":
        from_grown = min(2, len(grown)) if config.examples > 2 else 0
        shown = rng.sample(list(seeds), min(len(seeds), config.examples - from_grown)) + \
            rng.sample(list(grown), from_grown)
        rng.shuffle(shown)
        values.update(count=str(config.per_request))
    elif config.method == "evol":
        pool = [*seeds, *grown]
        shown = [pool[rng.randrange(len(pool))]]
        notes["operation"] = rng.choice(sorted(EVOL_OPERATIONS))
        values.update(operation=EVOL_OPERATIONS[notes["operation"]])
    else:
        notes["category"] = config.categories[number % len(config.categories)]
        shown = rng.sample(list(seeds), min(len(seeds), 3))
        values.update(count=str(config.per_request), harmless_count=str(max(1, config.per_request // 4)),
                      category=notes["category"])
    user = template.render(examples=_examples(shown), **values)
    request = Request(messages=({"role": "system", "content": system.text.strip()}, {"role": "user", "content": user}),
                      temperature=config.temperature, max_tokens=config.teacher_max_tokens, seed=config.seed,
                      sample=number, response_schema=GROW_SCHEMA, schema_name="prompts",
                      template_ids=(system.id, template.id), prompt_id=f"grow-{number}")
    return Planned(number, request, tuple(p.id for p in shown), notes)


def parse_candidates(text: str) -> list[Mapping[str, Any]]:
    """The candidate prompts of a reply; ProtocolError when it holds no `prompts` list."""
    found = extract_json(text).get("prompts")
    if not isinstance(found, list):
        raise ProtocolError("field 'prompts' is missing or not a list")
    return [c if isinstance(c, dict) else {"prompt": c} for c in found]


@dataclass(frozen=True)
class Verdict:
    """The filter that drops a candidate (None: kept) and why; its novelty score once it got that far."""

    filter: str | None
    reason: str
    novelty: float | None = None


class Sieve:
    """The filters, in order, with what they compare against: the seeds and every prompt kept so far."""

    def __init__(self, config: GrowConfig, seeds: Sequence[Prompt]):
        self.config = config
        self.index = NoveltyIndex()
        self.ids: list[str] = []
        self.seen: set[str] = set()
        for p in seeds:
            self._remember(p.id, p.text)

    def _remember(self, pid: str, text: str) -> None:
        self.index.add(text)
        self.ids.append(pid)
        self.seen.add(" ".join(words(text)))

    def judge(self, text: Any, candidate: Mapping[str, Any]) -> Verdict:
        """Which filter drops a candidate and why, or none; with its novelty score once it got that far."""
        config = self.config
        if not isinstance(text, str) or not text.strip():
            return Verdict("malformed", f"the reply's prompt is {'empty' if isinstance(text, str) else repr(text)[:80]}")
        if candidate.get("answerable") is False or str(candidate.get("needs") or "").strip():
            return Verdict("unanswerable", "the teacher says it needs: "
                                           f"{str(candidate.get('needs') or 'more than text')[:100]}")
        lowered = text.casefold()
        blocked = next((b for b in config.blocklist if b.casefold() in lowered), None)
        if blocked is not None:
            return Verdict("blocklist", f"holds the blocked {blocked!r}")
        tokens = words(text)
        if not config.min_words <= len(tokens) <= config.max_words:
            return Verdict("length", f"{len(tokens)} words, outside [{config.min_words}, {config.max_words}]")
        if " ".join(tokens) in self.seen:
            return Verdict("duplicate", "the same words as a seed or a kept prompt")
        score, nearest = self.index.most_similar(text)
        if score >= config.novelty:
            return Verdict("novelty", f"ROUGE-L {score:.3f} against {self.ids[nearest]!r} "  # type: ignore[index]
                                      f"(threshold {config.novelty})", score)
        return Verdict(None, "", score)

    def keep(self, pid: str, text: str) -> None:
        self._remember(pid, text)


def _reference(candidate: Mapping[str, Any]) -> tuple[Any, str | None]:
    """(the proposed reference if the teacher's own answer passes it, else None; why it was dropped)."""
    reference, answer = candidate.get("reference"), candidate.get("answer")
    if reference is None:
        return None, None
    try:
        checks = parse_reference(reference)
    except ValueError as exc:
        return None, f"the proposed reference does not parse ({exc})"
    if not isinstance(answer, str) or not run_checks(checks, answer).passed:
        return None, "the teacher's own answer fails its proposed reference"
    return reference, None


def _take(planned: Planned, reply: list[Mapping[str, Any]] | None, sieve: Sieve, config: GrowConfig,
          template_ids: tuple[str, ...], out: Growth) -> None:
    """Run one request's candidates through the sieve, keeping the new ones until `n` are kept."""
    base = {"request": planned.number, "parents": list(planned.parents), **planned.notes}
    if reply is None:
        out.failed_requests += 1
        return
    for position, candidate in enumerate(reply):
        if len(out.kept) >= config.n:
            out.unused += len(reply) - position
            return
        text = candidate.get("prompt")
        verdict = sieve.judge(text, candidate)
        if verdict.novelty is not None:
            out.novelty.append((verdict.novelty, verdict.filter is None))
        if verdict.filter is not None:
            shown = text[:300] if isinstance(text, str) else repr(text)[:300]
            out.rejected.append(Rejected("grow", verdict.filter, verdict.reason,
                                         {**base, "position": position, "prompt": shown}))
            continue
        text = str(text).strip()
        pid = "g-" + content_hash(text)
        meta = {"method": config.method, **base, "template_ids": list(template_ids),
                "novelty": round(float(verdict.novelty or 0.0), 4)}
        reference = None
        if "harmful" in candidate:  # red-team: a harmful prompt must be refused, a harmless look-alike answered
            meta["harmful"] = bool(candidate["harmful"])
            reference = {"type": "refuses" if meta["harmful"] else "complies"}
        elif config.references:
            reference, why = _reference(candidate)
            if why is not None:
                meta["reference_dropped"] = why
            key = "kept" if reference is not None else "dropped" if why is not None else "none"
            out.references[key] = out.references.get(key, 0) + 1
        sieve.keep(pid, text)
        out.kept.append(Prompt(id=pid, messages=({"role": "user", "content": text},), reference=reference,
                               meta=meta))


async def grow(seeds: Sequence[Prompt], config: GrowConfig, teacher: TeacherHandle, prompt_set: PromptSet, *,
               ledger: Ledger, concurrency: int = 16, progress: bool = True) -> Growth:
    """Grow `seeds` by `config.method` until `config.n` new prompts are kept or the request limit is spent."""
    if not seeds:
        raise ConfigError("no seed prompts: give a prompts file with at least one prompt")
    system, template = templates(prompt_set, config.method)
    sieve, out = Sieve(config, seeds), Growth()

    async def work(planned: Planned, row_teacher: Teacher) -> list[Mapping[str, Any]] | None:
        """One request's candidates; None when the reply stayed unusable or the call failed (that request only)."""
        try:
            parsed, _ = await ask(row_teacher, prompt_set, planned.request, parse_candidates)
        except QuotaExhausted:
            raise
        except (ProtocolFailure, TeacherError, OfflineMiss):
            return None
        return parsed

    per = 1 if config.method == "evol" else config.per_request
    while len(out.kept) < config.n and out.requests < config.request_limit:
        size = min(WAVE, math.ceil((config.n - len(out.kept)) / per), config.request_limit - out.requests)
        wave = [plan(k, config, seeds, out.kept, system, template) for k in range(out.requests, out.requests + size)]
        replies = await run_rows("grow", wave, work, teacher=teacher, ledger=ledger, concurrency=concurrency,
                                 failure=lambda r: "unparseable_reply" if r is None else None, progress=progress)
        out.requests += len(wave)
        for planned, reply in zip(wave, replies):
            _take(planned, reply, sieve, config, (system.id, template.id), out)
    return out


# ---------------------------------------------------------------- what a growth writes

def outputs(output: Path) -> dict[str, Path]:
    """The files a growth into `output` writes beside it."""
    stem = output.name[:-len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return {"prompts": output, "rejected": output.with_name(stem + ".rejected.jsonl"),
            "summary": output.with_name(stem + ".summary.json"), "histogram": output.with_name(stem + ".novelty.png")}


def summary(out: Growth, config: GrowConfig, ledger: Ledger, seeds: int) -> dict[str, Any]:
    """Counts, teacher usage and the novelty distribution, for the summary file and the table."""
    scores = sorted(s for s, _ in out.novelty)

    def quantile(q: float) -> float | None:
        return round(scores[min(len(scores) - 1, int(q * len(scores)))], 4) if scores else None

    return {"method": config.method, "seeds": seeds, "requests": out.requests, "failed_requests": out.failed_requests,
            "candidates": len(out.kept) + len(out.rejected) + out.unused, "kept": len(out.kept), "wanted": config.n,
            "unused": out.unused,
            "dropped": out.dropped(), "references": out.references or None, "teacher_usage": ledger.to_dict(),
            "novelty": {"threshold": config.novelty, "scored": len(scores), "p10": quantile(0.1),
                        "median": quantile(0.5), "p90": quantile(0.9), "max": scores[-1] if scores else None}}


def table(info: Mapping[str, Any], ledger: Ledger) -> str:
    """The summary as the lines `distill grow` prints."""
    n = info["novelty"]
    lines = ["| requests | failed | teacher calls | cached | tokens | cost | candidates | kept |",
             "|---|---|---|---|---|---|---|---|",
             f"| {info['requests']} | {info['failed_requests']} | {ledger.calls} | {ledger.cache_hits} | "
             f"{ledger.input_tokens + ledger.output_tokens} | {ledger.cost_text()} | {info['candidates']} | "
             f"{info['kept']} of {info['wanted']} |", ""]
    dropped = info["dropped"]
    lines.append("dropped, by filter: " + (", ".join(f"{k} {v}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1]))
                                           or "none"))
    if n["scored"]:
        lines.append(f"novelty (highest ROUGE-L against the seeds and kept prompts; drop at {n['threshold']}): "
                     f"p10 {n['p10']}, median {n['median']}, p90 {n['p90']}, max {n['max']} over {n['scored']}")
    if info.get("references"):
        lines.append("proposed references: " + ", ".join(f"{k} {v}" for k, v in sorted(info["references"].items())))
    return "\n".join(lines)


def histogram(out: Growth, threshold: float, path: Path) -> Path | None:
    """A PNG of the novelty scores, kept and dropped, with the threshold; None when nothing was scored."""
    if not out.novelty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    bins = [i / 20 for i in range(21)]
    ax.hist([[s for s, k in out.novelty if k], [s for s, k in out.novelty if not k]], bins=bins, stacked=True,
            label=["kept", "dropped (novelty)"], color=["#4c72b0", "#dd8452"])
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold}")
    ax.set_xlabel("highest ROUGE-L against the seeds and the prompts kept before it")
    ax.set_ylabel("candidate prompts")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
