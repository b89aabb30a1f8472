"""Batch mode: teacher requests not yet in the cache go out as provider batches (half price).

Owns: `wire` (the shape of a provider's batch API: lines, limits, states, outcomes, retried
calls), `clients` (OpenAI Batch and Anthropic Message Batches, which the `openai` and `anthropic`
backends declare in their `BackendSpec` and hand their own wire functions), `book` (the run's
record of its batches, runs/NAME/batches.json), `queue` (`BatchQueue`, the teacher that stands
behind the cache in batch mode: it defers each miss, submits, waits, and stores the answers in the
cache).

May import: `distill.teachers.cache` (key, entry, store: batch answers are stored exactly as live
ones), `retry`, `pricing`, `settings`, `base`; `distill.records`, `distill.errors`.
Must not import: the backends (they import their batch clients from here), `registry`,
`distill.teachers.cache.layer` or `distill.teachers.stack`: the stack puts the queue behind the
cache, the queue does not know the cache's wrapper.
"""
