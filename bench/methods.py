"""SFT, SFT then DPO, DPO alone, and online DPO: the same prompts, the same held-out set, side by side.

The prompts are the demo's instruction-following sets (prompts/instructions/demo-*.jsonl: N bullet
points, one word, no commas, a word limit; training and held-out prompts on different topics). The
teacher is bench/learning.py's constraint-repair teacher behind a real OpenAI-compatible server on
127.0.0.1 (it rewrites an answer that breaks its instruction into one that follows it; its judge
prefers the answer that passes the check). Everything runs through the Python API (`distill.api`):

- offline pairs: one round `distill.run(..., rounds=1, methods=("sft", "dpo"))`: the student answers,
  the teacher revises, the filters keep verified fixes (sft.jsonl) and pairs (prefs.jsonl: chosen =
  the revision, rejected = the student's answer); then SFT, and DPO from the SFT adapter;
- SFT then a gentle DPO: the same pairs from the SFT adapter at a tenth of the learning rate, one epoch;
- DPO alone: `distill.train(prefs.jsonl, method="dpo")` from the base student, on the same pairs;
- online DPO (OAIF): a round with `pairs="online"`: two samples of the student per prompt, decided
  by the check or else the teacher's judge in both orders, then DPO from the base on those pairs.

Each adapter is then compared with the base student on the held-out prompts by `distill.evaluate`:
pass rate per kind, the judge's win rate against the base, and forgetting (NLL of the base
student's own answers to the general-knowledge prompts, prompts/instructions/general.jsonl). The
training speed of DPO against TRL's DPOTrainer is bench/preference.py's.

    python bench/methods.py      # writes runs/methods*/ and bench/results/methods.md, prints the table

Adapters and evaluations already made are reused (a re-run trains and evaluates only what is new).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from learning import TEACHER, make_teacher  # noqa: E402  (also puts tests/ on the path)
from loopback_server import LoopbackServer  # noqa: E402

PROMPTS = Path("prompts/instructions")
COMMON = {"max_new_tokens": 64, "chain": "quick", "eval_max_new_tokens": 64}
TRAIN = {"learning_rate": 5e-4}  # bench/learning.py's learning rate when results/methods.md was measured
GENTLE = {"learning_rate": 5e-5, "epochs": 1}
RESULTS = Path("bench/results/methods.md")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def forgetting_set(path: Path) -> Path:
    """The base student's greedy answers to the general-knowledge prompts, as chat rows (made once)."""
    import distill

    if not path.is_file():
        prompts = distill.api.prompts_of(PROMPTS / "general.jsonl")
        answers = distill.Student.load().answer(prompts, distill.GenerationParams(max_new_tokens=64))
        rows = [{"id": a.prompt.id, "prompt": [dict(m) for m in a.prompt.messages],
                 "completion": [{"role": "assistant", "content": a.text}]} for a in answers if a.text.strip()]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train_adapters() -> dict[str, Path]:
    """The four adapters: trained once, reused on a re-run (each call resumes or finds it finished)."""
    import distill

    runs = Path("runs")
    offline = runs / "methods"
    distill.run(PROMPTS / "demo-train.jsonl", name="methods", rounds=1, heldout=PROMPTS / "demo-heldout.jsonl",
                methods=("sft", "dpo"), train_options=TRAIN, judge=False, **COMMON)
    gentle = offline / "round-1" / "adapter-dpo-gentle"
    if not (gentle / "training.json").is_file():  # DPO as a light touch on SFT: a tenth of the rate, one epoch
        distill.train(offline / "round-1" / "prefs.jsonl", gentle, method="dpo",
                      init_adapter=offline / "round-1" / "adapter", **GENTLE)
    dpo_only = offline / "dpo-only"
    if not (dpo_only / "training.json").is_file():
        distill.train(offline / "round-1" / "prefs.jsonl", dpo_only, method="dpo", **TRAIN)
    distill.run(PROMPTS / "demo-train.jsonl", name="methods-online", pairs="online", samples=2, temperature=1.0,
                **COMMON)
    online = runs / "methods-online" / "adapter-dpo"
    if not (online / "training.json").is_file():
        distill.train(runs / "methods-online" / "prefs.jsonl", online, method="dpo", **TRAIN)
    return {"SFT": offline / "round-1" / "adapter", "SFT then DPO": offline / "round-1" / "adapter-dpo",
            "SFT then DPO (5e-5, 1 epoch)": gentle, "DPO only": dpo_only, "online DPO": online}


def evaluation(adapter: Path, forgetting: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`distill.evaluate` of the adapter against the base on the held-out prompts (per-prompt rows,
    metrics), kept beside the adapter as methods-eval.json so a re-run evaluates only new adapters."""
    import distill

    kept = adapter / "methods-eval.json"
    if not kept.is_file():
        result = distill.evaluate(PROMPTS / "demo-heldout.jsonl", adapter, judge=True, replay=forgetting,
                                  max_new_tokens=64)
        kept.write_text(json.dumps({"rows": result.evaluation.rows, **result.to_dict()}), encoding="utf-8")
    data = json.loads(kept.read_text(encoding="utf-8"))
    return data["rows"], data["metrics"]


def compare(adapters: dict[str, Path], forgetting: Path) -> tuple[str, str]:

    heldout = _rows(PROMPTS / "demo-heldout.jsonl")
    kind_of = {r["id"]: r["meta"]["kind"] for r in heldout}
    kinds = sorted(set(kind_of.values()))
    per_kind = ["| method | rows/pairs | " + " | ".join(kinds) + " | all | judge wins/ties/losses vs base | "
                "replay NLL change | train tok/s |", "|---|---:|" + "---:|" * len(kinds) + "---:|---|---:|---:|"]
    base_row: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for method, adapter in adapters.items():
        rows, metrics = evaluation(adapter, forgetting)
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for row in rows:
            counts[kind_of[row["prompt_id"]]][0] += row["new_passed"]
            counts[kind_of[row["prompt_id"]]][1] += 1
            base_row[kind_of[row["prompt_id"]]][0] += row["current_passed"]
            base_row[kind_of[row["prompt_id"]]][1] += 1
        judge, forget = metrics.get("judge") or {}, metrics.get("forgetting") or {}
        training = json.loads((adapter / "training.json").read_text())
        total = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
        per_kind.append(f"| {method} | {training['data']['trained']} | "
                        + " | ".join(f"{counts[k][0]}/{counts[k][1]}" for k in kinds)
                        + f" | {total[0] / total[1]:.0%} | {judge.get('wins')}/{judge.get('ties')}/{judge.get('losses')}"
                        f" | {forget.get('nll_increase', 0):+.1%} | {training['throughput']['tokens_per_s']:.0f} |")
    n = len(adapters)
    base = "| base | - | " + " | ".join(f"{base_row[k][0] // n}/{base_row[k][1] // n}" for k in kinds) + \
        f" | {sum(v[0] for v in base_row.values()) / sum(v[1] for v in base_row.values()):.0%} | - | - | - |"
    return per_kind[0] + "\n" + per_kind[1] + "\n" + base, "\n".join(per_kind[2:])


def main() -> int:
    os.chdir(ROOT)
    load = os.getloadavg()[0]  # how quiet the machine was when the run began
    started = time.monotonic()
    rows = _rows(PROMPTS / "demo-train.jsonl") + _rows(PROMPTS / "demo-heldout.jsonl")
    with LoopbackServer(responder=make_teacher(rows)) as server:
        os.environ.update(DISTILL_TEACHER=f"openai:{TEACHER}", DISTILL_TEACHER_BASE_URL=server.openai_url,
                          DISTILL_TEACHER_API_KEY="sk-loopback-bench")
        adapters = train_adapters()
        head, body = compare(adapters, forgetting_set(Path("runs/methods/forgetting.jsonl")))
        requests = server.count()
    table = f"{head}\n{body}"
    tail = f"{(time.monotonic() - started) / 60:.1f} min in all; teacher HTTP requests: {requests}"
    print("\n## Held-out pass rate per kind, judge and forgetting against the base student\n")
    print(table)
    print("\n" + tail)
    RESULTS.write_text("# SFT, DPO and online DPO on the same prompts\n\n`python bench/methods.py` (one run; "
                       f"{os.cpu_count()} CPU cores, load average {load:.1f} at the start)\n\n{table}\n\n{tail}\n",
                       encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
