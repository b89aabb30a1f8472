"""distill: teacher-student distillation for small local LLaMA-family models.

A student answers prompts, a teacher critiques and rewrites the answers, a LoRA trainer distills
the verified corrections, and an evaluation gate decides whether the new adapter is promoted.

    import distill
    student = distill.Student.load()              # the embedded SmolLM2-135M-Instruct
    [a] = student.answer(["What is the capital of France?"])
    result = distill.run("prompts.jsonl", name="first")   # `distill run` as a function (distill.api)

`run`, `train`, `evaluate` and `teacher_from_env` are `distill.api`'s; the command line is a thin
layer over them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from distill.errors import DistillError

if TYPE_CHECKING:
    from distill.api import EvalResult, RunResult, evaluate, run, teacher_from_env, train
    from distill.records.prompts import Prompt
    from distill.student.model import GenerationParams, Student
    from distill.teachers.base import Completion, Request, Teacher

__all__ = ["Completion", "DistillError", "EvalResult", "GenerationParams", "Prompt", "Request", "RunResult", "Student",
           "Teacher", "__version__", "evaluate", "run", "teacher_from_env", "train"]

# Lazy: `import distill` must not import torch/transformers (the CLI validates input first).
_LAZY = {"Student": "distill.student.model", "GenerationParams": "distill.student.model",
         "Prompt": "distill.records.prompts", "Request": "distill.teachers.base", "Completion": "distill.teachers.base",
         "Teacher": "distill.teachers.base", **{name: "distill.api" for name in
                                                ("run", "train", "evaluate", "teacher_from_env", "RunResult",
                                                 "EvalResult")}}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
