"""`distill teachers`: the teacher backends installed in the `distill.teachers` entry-point group.

Built-in and third-party backends are listed the same way, because they are registered the same
way. Each is loaded (which imports only its module, not its SDK) to show its summary; one that
fails to load is listed with the error instead of breaking the command. The backend the current
configuration selects is marked with `*`.
"""

from __future__ import annotations

import argparse

from distill.errors import DistillError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "teachers",
        help="list the installed teacher backends",
        description=_description,
    )
    p.set_defaults(func=run)


def _description() -> str:
    from distill.teachers.registry import GROUP

    return (f"List the teacher backends registered in the entry-point group {GROUP!r}: distill's own "
            "(openai, anthropic, local, and none for self-training) and any installed by other packages. Select one with "
            "DISTILL_TEACHER=BACKEND:MODEL.")


def run(args: argparse.Namespace) -> int:
    from distill.teachers.registry import GROUP, installed, load_backend
    from distill.teachers.resolve import resolve_settings

    try:
        active = resolve_settings().backend
    except DistillError:
        active = None  # a broken configuration must not hide the list; `distill config` explains it
    rows = []
    for item in installed():
        try:
            summary = load_backend(item.name).summary
        except DistillError as exc:
            summary = f"BROKEN: {exc}"
        origin = "built-in" if item.builtin else item.distribution
        rows.append(("*" if item.name == active else " ", item.name, origin, item.target, summary))
    if not rows:
        print(f"no teacher backends registered in {GROUP!r}; install distill with `pip install -e .`")
        return 1
    name_w = max(len(r[1]) for r in rows)
    origin_w = max(len(r[2]) for r in rows)
    indent = " " * (name_w + origin_w + 6)
    for mark, name, origin, target, summary in rows:
        print(f"{mark} {name:<{name_w}}  {origin:<{origin_w}}  {summary}\n{indent}({target})")
    return 0
