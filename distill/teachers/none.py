"""The `none` teacher: no teacher at all, for self-training (`--teacher none`, DISTILL_TEACHER=none).

A round with it calls no one: the student samples answers and the ones its prompt's check (or
the samples' agreement) verifies become training data (`distill.stages.self_training`). It is
registered like every backend so that `distill teachers` lists it and the settings accept it;
building a client from it is a mistake, and says so.
"""

from __future__ import annotations

from typing import Any

from distill.errors import ConfigError
from distill.teachers.base import Teacher
from distill.teachers.registry import BackendSpec
from distill.teachers.settings import TeacherSettings

NAME = "none"


def _refuse(settings: TeacherSettings) -> Teacher:
    raise ConfigError("the teacher 'none' makes no calls: it only runs self-training (distill run --teacher none); "
                      "commands that need a teacher (critique, judge) need DISTILL_TEACHER=BACKEND:MODEL")


def _identity(settings: TeacherSettings) -> dict[str, Any]:
    return {"provider": NAME, "model": NAME}


BACKEND = BackendSpec(name=NAME, summary="no teacher: self-training on the student's own verified samples",
                      make=_refuse, identify=_identity)
