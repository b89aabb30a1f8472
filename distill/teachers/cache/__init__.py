"""The teacher-call cache: every teacher answer stored once, keyed by everything that shapes it.

Owns: `key` (the versioned request hash), `entry` (one stored answer and its verification),
`store` (the SQLite file, run statistics), `failures` (SQLite's failures as errors that say what
to do), `layer` (`CachedTeacher`, the Teacher that answers from the cache; offline misses),
`export` (the portable export/import format).

May import: the layers below it in `distill.teachers` (`base`, `settings`), `distill.records`,
`distill.config`, `distill.errors`.
Must not import: `distill.teachers.batch` (batch mode builds on the cache, not the other way
round), `distill.teachers.stack` or the registry: the layer never builds a backend itself, it is
handed a factory.
"""
