"""Records on disk: prompts and answers files, JSON Lines reading and writing, ids, locks.

Owns: `ids` (canonical JSON and content hashes), `files` (atomic, durable writes; the run
directory's lock), `jsonl` (validated reading with FILE:LINE errors; the resumable `JsonlSink`),
`prompts` (the `Prompt` record and the prompts/answers file formats), `rows` (the typed records a
round writes: revisions, critiques, training rows, preference pairs, rejections), `rundir` (`RunDir`, a run's
folder, and the rule for naming one: a bare name means RUNS_DIR/NAME, a path needs a slash).

May import: `distill.errors`, `distill.checks` (a prompt's reference is parsed into checks as it is read).
Must not import: students, teachers, stages, training, evaluation or the CLI: every layer above
reads and writes through this one.
"""
