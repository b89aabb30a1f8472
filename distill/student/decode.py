"""Continuous batching: a decoding loop whose batch takes a new prompt as soon as an answer ends.

`model.generate` decodes a fixed batch until its longest answer ends. On a CPU a decoding step of
SmolLM2-135M costs about the same at 11 rows as at 32 (measured: 170 ms against 200 ms; the step
is bound by reading the weights, not by arithmetic), so every finished row that sits in the batch
until the longest one ends is throughput thrown away. The answers of a batch vary widely (one word
against a 64-token paragraph; on the held-out prompts of prompts/instructions the mean answer is
36 of 64 tokens), so most of a fixed batch's steps run at a fraction of its rows.

`stream` keeps up to `slots` rows decoding. When enough rows have ended, the next prompts are
prefilled together (their own forward pass, the last position's logits only) and their keys and
values are written into the freed rows of the shared cache, right-aligned at the current length
with the columns before them masked out, so every row stays left-padded as in `generate` (several
samples of one prompt are prefilled once, their rows copied; a prefix all of them share, such as
the chat template's system turn, is computed once and copied into every row). Rows
that ended and are not refilled are dropped from the batch once no prompt waits. The numbers of
each row are those of greedy `generate` (its position ids from the attention mask, the model's
own causal mask from the 2D attention mask and the cache), up to the order of floating-point sums
in attention over more padding, which the tests compare with `generate` answer for answer.

A sampled row draws from softmax(logits / temperature) within its top-p nucleus, from the global
generator. Rows that differ in how they decode (`distill serve` and the local teacher: each request
its own sampling, JSON grammar, stop strings and stream) pass `rules` instead, which picks each
row's token and says when its answer has ended (`distill.student.generation.JobRules`).

The prompts are a list, or a `Feed` that may grow while the loop runs (`distill serve`: requests
that arrive while others decode join the running batch, in rows that ended or in new rows up to
`slots`). Refilling needs a cache whose layers all keep every position (`GrowingCache`); with any
other cache the loop takes new prompts only when the whole batch has ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from os.path import commonprefix  # of any sequences: here, token ids
from typing import Any, Hashable, Iterator, Protocol, Sequence

# Refill when at least this share of the slots is free: each refill is one more forward pass (one
# more read of the weights), so refilling one row at a time would cost a step per prompt.
REFILL_SHARE = 8
# A prefix at least this long that every prompt of a prefill shares is computed once (SmolLM2's chat
# template starts every prompt with the same 24-token system turn: half of a short prompt).
SHARED_PREFIX = 8
# Drop the columns every row has masked out once there are this many (the cache would otherwise
# grow by one column per step for as long as prompts keep coming).
TRIM_COLUMNS = 256


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token: greedy (temperature 0) or sampled with temperature and top-p."""

    temperature: float = 0.0
    top_p: float = 1.0

    def pick(self, logits: Any) -> Any:
        """The next token of each row ([rows] longs) from its last-position logits ([rows, vocab])."""
        import torch

        if self.temperature <= 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1:
            probs = nucleus(probs, self.top_p)
        return torch.multinomial(probs, 1).squeeze(1)


def nucleus(probs: Any, top_p: float) -> Any:
    """The smallest set of most likely tokens whose mass reaches `top_p`, renormalised (rows on the last dim)."""
    import torch

    ordered, order = torch.sort(probs, descending=True)
    before = torch.cumsum(ordered, dim=-1) - ordered  # mass of the tokens ranked above each one
    ordered[before >= top_p] = 0.0
    kept = torch.zeros_like(probs).scatter_(-1, order, ordered)
    return kept / kept.sum(dim=-1, keepdim=True)


class Rules(Protocol):
    """Per-row decoding: each row's next token, and whether its answer has ended."""

    def pick(self, owners: Sequence[Hashable], logits: Any) -> Any:
        """The next token of each row ([rows] longs) from its logits ([rows, vocab]; may be changed in place)."""

    def ended(self, owner: Hashable, token: int) -> bool:
        """Take `owner`'s next token; True when its answer has ended."""


class Feed(Protocol):
    """Prompts that may keep arriving while the loop decodes."""

    def waiting(self) -> int:
        """How many prompts wait now."""

    def take(self, n: int) -> list[tuple[Hashable, Sequence[int]]]:
        """Up to `n` waiting prompts, oldest first, as (owner, token ids); may be fewer than `waiting()` said."""


class _Listed:
    """A list of prompts as a `Feed`: each prompt's owner is its index."""

    def __init__(self, prompts: Sequence[Sequence[int]]):
        self.prompts, self.next = prompts, 0

    def waiting(self) -> int:
        return len(self.prompts) - self.next

    def take(self, n: int) -> list[tuple[Hashable, Sequence[int]]]:
        start, self.next = self.next, min(len(self.prompts), self.next + n)
        return [(i, self.prompts[i]) for i in range(start, self.next)]


class _Batch:
    """The rows decoding together: the shared cache, its 2D attention mask, and per row the next
    position id, the next input token and which prompt it answers (None: free)."""

    def __init__(self, cache: Any, mask: Any, position: Any, owner: list[Hashable | None]):
        self.cache, self.mask, self.position, self.owner = cache, mask, position, owner
        self.pending = position.new_zeros(len(owner))
        self.logits: Any = None

    def step(self, model: Any) -> None:
        """Feed every row its pending token (free rows decode harmlessly and are ignored); `logits` holds the next."""
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        self.logits = model(input_ids=self.pending[:, None], attention_mask=self.mask,
                            position_ids=self.position[:, None], cache=self.cache, use_cache=True).logits[:, -1]
        self.position = self.position + 1

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def free(self) -> list[int]:
        return [row for row, who in enumerate(self.owner) if who is None]

    def busy(self) -> list[int]:
        return [row for row, who in enumerate(self.owner) if who is not None]

    def widen(self, columns: int) -> None:
        """Add `columns` masked-out columns on the left of every row."""
        import torch

        for layer in self.cache.layers:
            pad = layer.keys.new_zeros((*layer.keys.shape[:2], columns, layer.keys.shape[3]))
            layer.keys = torch.cat([pad, layer.keys], dim=2)
            layer.values = torch.cat([pad.new_zeros((*layer.values.shape[:2], columns, layer.values.shape[3])),
                                      layer.values], dim=2)
        self.mask = torch.cat([self.mask.new_zeros((self.mask.shape[0], columns)), self.mask], dim=1)

    def grow(self, rows: int) -> None:
        """Add `rows` free rows at the end (masked out everywhere until a prompt is placed in them)."""
        import torch

        for layer in self.cache.layers:
            layer.keys = torch.cat([layer.keys, layer.keys.new_zeros((rows, *layer.keys.shape[1:]))])
            layer.values = torch.cat([layer.values, layer.values.new_zeros((rows, *layer.values.shape[1:]))])
        self.mask = torch.cat([self.mask, self.mask.new_zeros((rows, self.mask.shape[1]))])
        self.position = torch.cat([self.position, self.position.new_zeros(rows)])
        self.pending = torch.cat([self.pending, self.pending.new_zeros(rows)])
        self.owner += [None] * rows

    def place(self, rows: Sequence[int], prefill: Any, mask: Any, position: Any) -> None:
        """Write a prefilled batch (its cache, mask and next positions) into `rows`, right-aligned."""
        import torch

        index = torch.tensor(list(rows), device=mask.device)
        start = self.width - mask.shape[1]
        for layer, new in zip(self.cache.layers, prefill.layers):
            layer.keys[index, :, start:] = new.keys
            layer.values[index, :, start:] = new.values
        self.mask[index] = 0
        self.mask[index, start:] = mask
        self.position[index] = position

    def select(self, rows: Sequence[int]) -> None:
        """Keep only `rows`."""
        import torch

        index = torch.tensor(list(rows), device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.position, self.pending = self.mask[index], self.position[index], self.pending[index]
        self.owner = [self.owner[row] for row in rows]

    def trim(self, columns: int) -> None:
        """Drop the leading columns that every row masks out, once there are `columns` of them."""
        seen = self.mask.any(dim=0).nonzero()
        cut = int(seen[0]) if len(seen) else 0
        if cut < columns:
            return
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]
        self.mask = self.mask[:, cut:]


def stream(model: Any, prompts: Sequence[Sequence[int]] | Feed, *, slots: int, max_new_tokens: int,
           eos_ids: Sequence[int], pad_id: int, sampling: Sampling = Sampling(), rules: Rules | None = None,
           trim_columns: int = TRIM_COLUMNS) -> Iterator[tuple[Any, list[int]]]:
    """Decode every prompt (token ids, a list taken in order or a `Feed`), at most `slots` at a time;
    yields (owner, its new tokens, end-of-turn token included where it said one) as each row ends:
    at an end-of-turn token (or where `rules` says so) or at `max_new_tokens`. A list's owners are
    the prompts' indices. Once `trim_columns` leading columns are masked out in every row, they are
    dropped. The loop returns when no prompt waits and every row has ended."""
    from transformers.cache_utils import DynamicCache

    from distill.student.kv_cache import growing_cache

    refill = growing_cache(model) is not None  # ended rows can be refilled only where every layer keeps every position

    def new_cache() -> Any:
        cache = growing_cache(model)  # (an empty cache has no layers yet, so it is falsy: no `or` here)
        return cache if cache is not None else DynamicCache()

    feed: Feed = prompts if hasattr(prompts, "take") else _Listed(prompts)  # type: ignore[arg-type]
    eos = set(eos_ids)
    out: dict[Any, list[int]] = {}
    batch: _Batch | None = None

    def pick(logits: Any, rows: Sequence[int]) -> Any:
        assert batch is not None
        return sampling.pick(logits) if rules is None else rules.pick([batch.owner[r] for r in rows], logits)

    def took(tokens: Any, rows: Sequence[int]) -> Iterator[tuple[Any, list[int]]]:
        """Record each row's token; yield and free the rows that ended."""
        assert batch is not None
        batch.pending[list(rows)] = tokens
        for row, token in zip(rows, tokens.tolist()):
            who = batch.owner[row]
            out[who].append(token)
            ended = token in eos if rules is None else rules.ended(who, token)
            if ended or len(out[who]) >= max_new_tokens:
                batch.owner[row] = None
                yield who, out.pop(who)

    while feed.waiting() or (batch is not None and batch.busy()):
        idle = batch is None or not batch.busy()
        free = list(range(slots)) if idle else batch.free() + list(range(len(batch.owner), slots))  # type: ignore[union-attr]
        if feed.waiting() and (idle or (refill and len(free) >= max(1, slots // REFILL_SHARE))):
            admitted = feed.take(len(free))
            if admitted:
                if idle:
                    batch, logits = _prefill(model, [ids for _, ids in admitted], pad_id, new_cache(), share=refill)
                    rows = list(range(len(admitted)))
                else:
                    rows = free[:len(admitted)]
                    logits = _refill(model, batch, rows, [ids for _, ids in admitted], pad_id,  # type: ignore[arg-type]
                                     new_cache())
                for row, (who, _) in zip(rows, admitted):
                    batch.owner[row], out[who] = who, []  # type: ignore[union-attr]
                yield from took(pick(logits, rows), rows)
        if batch is None:
            continue
        busy = batch.busy()
        if not busy:
            continue
        if not feed.waiting() and len(busy) < len(batch.owner):
            batch.select(busy)  # nothing left to refill with: decode only the rows still answering
            busy = list(range(len(busy)))
        batch.step(model)
        yield from took(pick(batch.logits[busy], busy), busy)
        batch.trim(trim_columns)


def _prefill(model: Any, prompts: Sequence[Sequence[int]], pad_id: int, cache: Any,
             share: bool = True) -> tuple[_Batch, Any]:
    """A new batch of `prompts`, its cache filled by a forward pass (two with a shared prefix); and its
    last-position logits.
    A prompt given several times (several samples of it) is computed once and its rows copied; with
    `share` (a cache whose layers keep every position), a prefix every distinct prompt shares (the
    chat template's system turn) is computed once too (`_prefill_rows`)."""
    import torch

    distinct: dict[tuple[int, ...], int] = {}
    source = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
    unique = list(distinct)
    shared = _shared_length(unique) if share else 0
    logits, mask, positions = _prefill_rows(model, unique, shared if shared >= SHARED_PREFIX else 0, pad_id, cache)
    if len(distinct) < len(prompts):
        index = torch.tensor(source, device=mask.device)
        cache.batch_select_indices(index)
        mask, positions, logits = mask[index], positions[index], logits[index]
    return _Batch(cache, mask, positions[:, -1] + 1, [None] * len(prompts)), logits


def _shared_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all of `prompts` (two or more) have in common, leaving each at least one of its own."""
    if len(prompts) < 2:
        return 0
    return max(0, min(len(commonprefix(list(prompts))), min(len(p) for p in prompts) - 1))


def _prefill_rows(model: Any, prompts: Sequence[Sequence[int]], shared: int, pad_id: int,
                  cache: Any) -> tuple[Any, Any, Any]:
    """Prefill `prompts`, left-padded, into `cache`; their first `shared` tokens are the same (0: none
    taken as shared). The shared prefix runs once (one row, copied into every row of the cache), then
    each prompt's own tokens after it. A row reads [prefix][padding][its tokens], the padding masked
    out, positions counted without it: the same numbers as a left-padded prompt (the masked columns
    are skipped wherever they sit). Returns the last-position logits, the 2D mask and the position ids."""
    import torch

    device = model.device
    if shared:
        prefix = torch.tensor([list(prompts[0][:shared])], dtype=torch.long, device=device)
        model(input_ids=prefix, attention_mask=torch.ones_like(prefix),
              position_ids=torch.arange(shared, device=device)[None], cache=cache, use_cache=True, logits_to_keep=1)
        cache.batch_select_indices(torch.zeros(len(prompts), dtype=torch.long, device=device))
    own, own_mask = _left_padded([p[shared:] for p in prompts], pad_id, device)
    own_positions = (shared + own_mask.cumsum(-1) - 1).masked_fill(own_mask == 0, 0)
    mask = torch.cat([own_mask.new_ones((len(prompts), shared)), own_mask], dim=1)
    logits = model(input_ids=own, attention_mask=mask, position_ids=own_positions, cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    positions = torch.cat([torch.arange(shared, device=device).expand(len(prompts), shared), own_positions], dim=1)
    return logits, mask, positions


def _refill(model: Any, batch: _Batch, rows: Sequence[int], prompts: Sequence[Sequence[int]], pad_id: int,
            cache: Any) -> Any:
    """Prefill `prompts` and write them into the free `rows` of `batch` (rows past its end are added);
    returns their last-position logits."""
    fresh, logits = _prefill(model, prompts, pad_id, cache)
    if max(rows) >= len(batch.owner):
        batch.grow(max(rows) + 1 - len(batch.owner))
    if fresh.width > batch.width:
        batch.widen(fresh.width - batch.width)
    batch.place(rows, fresh.cache, fresh.mask, fresh.position)
    return logits


def _left_padded(prompts: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def decode(model: Any, prompts: Sequence[Sequence[int]], **kwargs: Any) -> list[list[int]]:
    """Every prompt's new tokens, in the order of `prompts` (`stream`'s arguments)."""
    done = dict(stream(model, prompts, **kwargs))
    return [done[i] for i in range(len(prompts))]
