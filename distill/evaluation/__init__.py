"""Evaluation: does the new student beat the current one, and what happened over the rounds.

Owns: `evaluate` (held-out objective checks, the pairwise judge, fidelity and forgetting), `gate`
(the promotion policy and its decision), `config` (`RoundsConfig`), `rounds` (`distill run --rounds
N`: round, train, evaluate, gate, repeat), `state` (rounds.json), `report` (report.md, report.html,
the terminal table), and `review` (a person's review of the training rows: the CSV export and
import), `review_data` and `review_server` (the same review on a local web page, `distill review
NAME --serve`, whose plain HTML/JS/CSS live in `static/`).

May import: `distill.stages` (a multi-round run runs rounds; the judge uses the critique protocol
and templates), `distill.training`, `distill.teachers`, `distill.student`, `distill.records`,
`distill.checks`, `distill.config`, `distill.errors`, and `distill.serving.http` (the review page
runs on the same threaded server as `distill serve`).
Must not import: the CLI, or `distill.testing`.
"""
