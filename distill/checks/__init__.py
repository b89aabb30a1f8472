"""Objective checks: what can be verified about an answer without asking a model.

Owns: the `reference` checks of a prompt (`reference`: parsing, validating and running them),
IFEval's verifiable instructions (`instructions`), and text similarity (`similarity`: near-identical
revisions, near-duplicate prompts). These are the graders that cannot be pleased, so they are the
authority wherever they apply.

May import: `distill.errors` only. Pure functions of text: no files, no models, no teachers.
Must not import: anything else of distill (records, students, teachers and stages build on this).
"""
