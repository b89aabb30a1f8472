"""A real two-round distillation on the embedded student, with a rule-following scripted teacher.

The teacher is a loopback OpenAI-compatible HTTP server (tests/loopback_server.py) that knows the
answers to template questions (capitals, opposites, sums, products) and rewrites each student
answer to one sentence plus a last line "Final answer: X"; its judge prefers answers that end so.
Everything else is the product as a user runs it: `distill run --rounds 2` with the real
SmolLM2-135M student, real LoRA training with replay, and the real evaluation gate on held-out
questions (reference: the answer's last line is "Final answer: ..."). The forgetting measure is
the base student's own answers to open-ended prompts (`--replay`).

    python bench/rounds_demo.py                # writes runs/rounds-demo/, prints the report table
    python bench/rounds_demo.py --name rounds-demo-e3 --train-option epochs=3   # any more `distill run` flags

Two epochs per round (the trainer's default is 3) so that the first round learns the rule only
partly and the second round has something left to learn: measured, 1 epoch learns nothing
(round 1 refused), 3 epochs learn it all in round 1 (round 2 refused: nothing new survived).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakes import between, critique_reply, judge_reply  # noqa: E402
from loopback_server import LoopbackRequest, LoopbackServer  # noqa: E402
from test_train_learning import replay_prompts, rule_sets  # noqa: E402

FINAL = re.compile(r"^Final answer:\s*\S", re.MULTILINE)


def make_teacher(answers: dict[str, tuple[str, str]]):  # type: ignore[no-untyped-def]
    def teacher(request: LoopbackRequest) -> str:
        user = next(m["content"] for m in request.messages if m["role"] == "user")
        if "winner" in json.dumps(request.schema or {}):
            a, b = bool(FINAL.search(between(user, "A"))), bool(FINAL.search(between(user, "B")))
            return judge_reply("A" if a and not b else "B" if b and not a else "tie",
                               reason="ends with the final answer line")
        question, answer = between(user, "USER"), between(user, "ANSWER")
        sentence, final = answers[question]
        if answer.strip().endswith(f"Final answer: {final}"):
            return critique_reply(answer, verdict="acceptable", critique="Correct and in the required form.",
                                  issues=())
        return critique_reply(f"{sentence}\nFinal answer: {final}", verdict="needs_revision",
                              critique="Answer in one sentence, then a last line 'Final answer: X'.",
                              issues=("no final answer line",))
    return teacher


def main(extra: list[str]) -> int:
    """`extra`: more `distill run` flags, e.g. --train-option epochs=1 or --name other."""
    train, heldout = rule_sets(seed=0)
    answers = {p.text: (sentence, final) for p, sentence, final in train + heldout}
    os.chdir(ROOT)  # runs/ and the paths recorded in the report are relative to the repository
    work = Path("runs") / "rounds-demo-inputs"
    work.mkdir(parents=True, exist_ok=True)
    rule = {"type": "regex", "pattern": r"^Final answer:\s*\S", "flags": "m"}
    files = {
        "train.jsonl": [{"id": p.id, "prompt": p.text} for p, _, _ in train],
        "heldout.jsonl": [{"id": p.id, "prompt": p.text, "reference": rule} for p, _, _ in heldout],
        "replay.jsonl": [{"id": p.id, "prompt": p.text} for p in replay_prompts()],
    }
    for name, rows in files.items():
        (work / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with LoopbackServer(responder=make_teacher(answers)) as server:
        os.environ.update(DISTILL_TEACHER="openai:rule-teacher", DISTILL_TEACHER_BASE_URL=server.openai_url,
                          DISTILL_TEACHER_API_KEY="sk-loopback-demo")
        from distill.cli import main as distill

        code = distill(["run", str(work / "train.jsonl"), "--name", "rounds-demo", "--rounds", "2",
                        "--heldout", str(work / "heldout.jsonl"), "--replay", str(work / "replay.jsonl"),
                        "--chain", "quick", "--max-new-tokens", "64", "--eval-max-new-tokens", "48",
                        "--train-option", "epochs=2", *extra])
        print(f"teacher HTTP requests: {server.count()}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
