"""Stages: one distillation round, from prompts to training rows.

Owns: `config` (`RunConfig`, every setting of a round with its one default), `answer` (the student
answers), `critique` (the teacher critiques and revises along a chain of principles), `protocol`
(the JSON requests and replies of critique, judge and repair), `templates` (the teacher's prompt
templates and principles), `filters` (which revisions become training data), `self_training` and
`consistency` (training rows without a teacher: verified samples, agreement), `accounting` (tokens
and cost per stage), `runner` (the one loop every teacher-calling stage runs its rows through:
concurrency, billing, batch passes, offline misses, output files and resume, progress), and
`round` (one round, stage by stage, with its files under runs/NAME/ and its manifest).

May import: `distill.teachers` (a stage sees only a `Teacher`; the round gets its teacher from
`distill.teachers.stack`), `distill.student`, `distill.records`, `distill.checks`, `distill.config`,
`distill.errors`.
Must not import: training, evaluation or the CLI. Training and evaluation read what the stages
wrote (sft.jsonl, prefs.jsonl), not the stages' code.
"""
