"""What `distill serve` serves: the base student as `student`, and each adapter under its own name.

An adapter is given as `DIR` (served under the directory's name) or `NAME=DIR`. Names must be
distinct and must not be `student`; every directory must be a PEFT LoRA adapter trained on the base
(`distill.student.model.model_identity` checks both before any weights load). Each served model is
a `Student` view over one shared copy of the base weights, so an adapter costs only its own layers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from distill.errors import ConfigError

BASE_NAME = "student"


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    directory: Path


def parse_adapters(specs: Sequence[str]) -> list[AdapterSpec]:
    """`DIR` or `NAME=DIR` each; ConfigError for a reused or reserved name, naming the spec."""
    adapters: list[AdapterSpec] = []
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep:
            directory = spec
            name = Path(spec).expanduser().resolve().name
        if not name or not directory:
            raise ConfigError(f"--adapter {spec!r}: expected DIR or NAME=DIR")
        if name == BASE_NAME:
            raise ConfigError(f"--adapter {spec!r}: the name {BASE_NAME!r} is the base student's; "
                              "give the adapter another with NAME=DIR")
        if any(a.name == name for a in adapters):
            raise ConfigError(f"--adapter {spec!r}: the name {name!r} is given twice; name each adapter "
                              "with NAME=DIR")
        adapters.append(AdapterSpec(name, Path(directory).expanduser()))
    return adapters


def check_adapters(source: str | os.PathLike[str] | None, adapters: Sequence[AdapterSpec]) -> Path:
    """The base model directory, after checking every adapter is a LoRA adapter for it (no weights load)."""
    from distill.student.model import model_identity

    directory, _ = model_identity(source)
    for adapter in adapters:
        model_identity(source, adapter.directory)
    return directory


def load_students(source: str | os.PathLike[str] | None, adapters: Sequence[AdapterSpec], *,
                  device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """name -> Student: the base, then each adapter (views over the base weights, read once), in
    `dtype` (None: the device's default)."""
    from distill.student.model import Student

    check_adapters(source, adapters)
    students = {BASE_NAME: Student.load(source, device=device, dtype=dtype)}
    for adapter in adapters:
        students[adapter.name] = Student.load(source, adapter=adapter.directory, device=device, dtype=dtype)
    return students
