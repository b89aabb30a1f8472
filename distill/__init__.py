"""distill: teacher-student distillation for small local LLaMA-family models.

A student answers prompts, a teacher critiques and rewrites the answers, a LoRA trainer distills
the verified corrections, and an evaluation gate decides whether the new adapter is promoted.

    from distill import Student
    student = Student.load()                      # the embedded SmolLM2-135M-Instruct
    [a] = student.answer(["What is the capital of France?"])
    print(a.text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from distill.errors import DistillError

if TYPE_CHECKING:
    from distill.student.model import GenerationParams, Student

__all__ = ["DistillError", "GenerationParams", "Student", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `import distill` must not import torch/transformers (the CLI validates input first).
    if name in ("Student", "GenerationParams"):
        from distill.student import model

        return getattr(model, name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
