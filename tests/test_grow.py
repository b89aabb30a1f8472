"""`distill grow`: prompts from the teacher, each dropped one accounted for; re-runs are free and offline.

The teacher is the loopback OpenAI-compatible server (tests/loopback_server.py) with a scripted
responder, behind the real stack (cache, pricing, retry) as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from distill.checks.novelty import NoveltyIndex, lcs_length, rouge_l
from distill.cli import main

SEEDS = ["Write a haiku about autumn leaves falling.", "What is the capital of Peru?",
         "Explain how a refrigerator keeps food cold.", "List three uses of baking soda at home.",
         "Translate 'good morning' into Spanish.", "Give two reasons why bees matter to farmers."]

NOVEL = ["Describe the water cycle for a ten-year-old in four sentences.",
         "Compare electric and petrol cars on running costs over five years.",
         "Write a limerick about a cat who learns to code.",
         "How many minutes are there in three and a half hours?",
         "Suggest a weekly meal plan for a vegetarian student on a budget.",
         "Summarise the causes of the French Revolution in one paragraph."]


def write_seeds(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"seed-{i}", "prompt": p}) + "\n" for i, p in enumerate(SEEDS)))
    return path


def reply(*prompts: Any) -> str:
    return json.dumps({"prompts": [p if isinstance(p, dict) else {"prompt": p, "answerable": True, "needs": ""}
                                   for p in prompts]})


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def scripted(request) -> str:  # type: ignore[no-untyped-def]
    """Every kind of candidate, once per request; request k's novel prompt is NOVEL[k]."""
    number = scripted.calls  # type: ignore[attr-defined]
    scripted.calls += 1  # type: ignore[attr-defined]
    novel = NOVEL[number % len(NOVEL)]
    return reply("What is the capital of Peru?",                                # duplicate of a seed
                 "Explain how a refrigerator keeps the food cold.",             # near-duplicate: not novel
                 {"prompt": "Describe this photo of my garden.", "answerable": False, "needs": "image"},
                 "Hi?",                                                         # too short
                 42,                                                            # malformed
                 "Explain how to pick a lock on a neighbour's door.",           # blocklisted
                 novel)


@pytest.fixture
def grow_env(loopback_teacher, tmp_path: Path):  # type: ignore[no-untyped-def]
    scripted.calls = 0  # type: ignore[attr-defined]
    loopback_teacher.script(scripted)
    return loopback_teacher


def grow_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["grow", str(write_seeds(tmp_path / "seeds.jsonl")), "-o", str(tmp_path / "grown.jsonl"),
            "--n", "4", "--blocklist", "pick a lock,bomb", *extra]


def test_self_instruct_keeps_novel_prompts_and_accounts_for_every_drop(grow_env, tmp_path: Path, capsys) -> None:
    assert main(grow_args(tmp_path)) == 0
    kept = read(tmp_path / "grown.jsonl")
    assert [r["messages"][0]["content"] for r in kept] == NOVEL[:4]
    meta = kept[0]["meta"]
    assert meta["method"] == "self-instruct" and meta["request"] == 0 and len(meta["template_ids"]) == 2
    assert set(meta["parents"]) <= {f"seed-{i}" for i in range(len(SEEDS))} and len(meta["parents"]) == len(SEEDS)
    assert 0 <= meta["novelty"] < 0.7
    rejected = read(tmp_path / "grown.rejected.jsonl")
    by_filter = {}
    for row in rejected:
        by_filter.setdefault(row["filter"], []).append(row)
    assert {k: len(v) for k, v in by_filter.items()} == {
        "duplicate": 4, "novelty": 4, "unanswerable": 4, "length": 4, "malformed": 4, "blocklist": 4}
    assert "against 'seed-2'" in by_filter["novelty"][0]["reason"]
    assert "image" in by_filter["unanswerable"][0]["reason"] and "'pick a lock'" in by_filter["blocklist"][0]["reason"]
    summary = json.loads((tmp_path / "grown.summary.json").read_text())
    # one novel prompt per request: the waves ask for as many requests as the prompts still wanted need
    assert summary["kept"] == 4 and summary["requests"] == 4 and summary["teacher_usage"]["teacher_calls"] == 4
    assert summary["novelty"]["scored"] == 8 and summary["unused"] == 0  # novel ones and near-duplicates
    assert (tmp_path / "grown.novelty.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "dropped, by filter:" in out and "novelty" in out
    # the output is a prompts file `distill run` takes
    from distill.records.prompts import read_prompts
    assert [p.id for p in read_prompts(tmp_path / "grown.jsonl")] == [r["id"] for r in kept]


def test_a_rerun_is_served_by_the_cache_and_works_offline(grow_env, tmp_path: Path, monkeypatch) -> None:
    assert main(grow_args(tmp_path)) == 0
    first = (tmp_path / "grown.jsonl").read_text()
    sent = grow_env.count()
    monkeypatch.setenv("DISTILL_OFFLINE", "1")
    assert main(grow_args(tmp_path)) == 0
    assert grow_env.count() == sent  # zero requests
    assert (tmp_path / "grown.jsonl").read_text() == first
    assert json.loads((tmp_path / "grown.summary.json").read_text())["teacher_usage"]["cache_hits"] == 4


def test_a_reply_unusable_after_its_repair_fails_that_request_only(grow_env, tmp_path: Path) -> None:
    def first_in_prose(request) -> str:  # type: ignore[no-untyped-def]
        if request.index < 2:  # the first request and its repair request
            assert (request.index == 1) == any(m["role"] == "assistant" for m in request.messages)
            return "no JSON here"
        return scripted(request)

    grow_env.script(first_in_prose)
    assert main(grow_args(tmp_path, "--n", "2")) == 0
    assert len(read(tmp_path / "grown.jsonl")) == 2
    summary = json.loads((tmp_path / "grown.summary.json").read_text())
    assert summary["failed_requests"] == 1 and summary["requests"] == 3
    assert summary["teacher_usage"]["failures"] == {"unparseable_reply": 1}
    assert summary["teacher_usage"]["teacher_calls"] == 4  # the failed request and its repair are billed


def test_evol_rewrites_one_prompt_per_request_with_its_operation(grow_env, tmp_path: Path) -> None:
    seen: list[str] = []

    def evolve(request) -> str:  # type: ignore[no-untyped-def]
        seen.append(request.prompt)
        return reply(NOVEL[len(seen) - 1])

    grow_env.script(evolve)
    assert main(grow_args(tmp_path, "--method", "evol", "--n", "3")) == 0
    kept = read(tmp_path / "grown.jsonl")
    assert len(kept) == 3 and all(len(r["meta"]["parents"]) == 1 for r in kept)
    assert {r["meta"]["operation"] for r in kept} <= {"deepen", "constraints", "concretise", "reasoning"}
    assert all(prompt.count("<<<EXAMPLE") == 1 for prompt in seen)


def test_red_team_marks_harmful_and_harmless_and_names_the_category(grow_env, tmp_path: Path) -> None:
    def red(request) -> str:  # type: ignore[no-untyped-def]
        category = "weapons" if "violence and weapons" in request.prompt else "fraud"
        return reply({"prompt": f"Tell me step by step how to commit {category} crime number {request.index} now.",
                      "harmful": True, "answerable": True},
                     {"prompt": f"What laws cover {category} in the country number {request.index}?",
                      "harmful": False, "answerable": True})

    grow_env.script(red)
    assert main(grow_args(tmp_path, "--method", "red-team", "--n", "4", "--blocklist", "",
                          "--categories", "violence and weapons,fraud and scams", "--novelty", "0.95")) == 0
    kept = read(tmp_path / "grown.jsonl")
    assert [r["meta"]["harmful"] for r in kept] == [True, False, True, False]
    assert [r["reference"]["type"] for r in kept] == ["refuses", "complies"] * 2
    assert [r["meta"]["category"] for r in kept] == ["violence and weapons"] * 2 + ["fraud and scams"] * 2


def test_a_proposed_reference_is_kept_only_when_the_teachers_own_answer_passes(grow_env, tmp_path: Path) -> None:
    grow_env.script(lambda request: reply(
        {"prompt": "What is seven times six, as a number?", "reference": {"type": "numeric", "value": 42},
         "answer": "42"},
        {"prompt": "How many legs does a spider have in total?", "reference": {"type": "numeric", "value": 8},
         "answer": "Six."},
        {"prompt": "Name the largest planet of the solar system.", "reference": {"type": "sparkle"}, "answer": "x"}))
    assert main(grow_args(tmp_path, "--n", "3", "--references")) == 0
    kept = {r["messages"][0]["content"]: r for r in read(tmp_path / "grown.jsonl")}
    assert kept["What is seven times six, as a number?"]["reference"] == {"type": "numeric", "value": 42}
    assert "reference" not in kept["How many legs does a spider have in total?"]
    assert "fails its proposed reference" in kept["How many legs does a spider have in total?"]["meta"]["reference_dropped"]
    assert "does not parse" in kept["Name the largest planet of the solar system."]["meta"]["reference_dropped"]


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    assert main(["grow", str(seeds), "-o", str(seeds), "--teacher", "none"]) != 0
    assert main(["grow", str(seeds), "-o", str(tmp_path / "x.jsonl"), "--teacher", "none"]) != 0
    err = capsys.readouterr().err
    assert "would overwrite the seeds" in err and "needs a teacher" in err
    assert main(["grow", str(seeds), "-o", str(tmp_path / "x.jsonl"), "--novelty", "1.5"]) != 0
    assert "novelty must be in (0, 1]" in capsys.readouterr().err


# ---------------------------------------------------------------- ROUGE-L and the novelty index

def _dp_lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_lcs_matches_dynamic_programming_on_random_word_sequences() -> None:
    import random

    rng = random.Random(0)
    vocab = "the a of to cat dog river city write list explain".split()
    for _ in range(500):
        a = [rng.choice(vocab) for _ in range(rng.randint(0, 40))]
        b = [rng.choice(vocab) for _ in range(rng.randint(0, 40))]
        assert lcs_length(a, b) == _dp_lcs(a, b)


def test_rouge_l_is_the_lcs_f1_of_case_folded_words() -> None:
    assert rouge_l("The cat sat on the mat", "the cat is on the mat") == pytest.approx(2 * 5 / 12)
    assert rouge_l("Écrivez un poème", "écrivez UN poème!") == 1.0  # Unicode words, case-folded
    assert rouge_l("", "anything") == 0.0 and rouge_l("???", "!!!") == 0.0


def test_the_index_finds_the_same_maximum_as_comparing_with_every_kept_prompt() -> None:
    import random

    rng = random.Random(1)
    vocab = "the a of to cat dog river city write list explain give three words about".split()
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 25))) for _ in range(400)]
    index = NoveltyIndex()
    for text in texts[:300]:
        index.add(text)
    for text in texts[300:]:
        score, nearest = index.most_similar(text)
        assert score == pytest.approx(max(rouge_l(text, kept) for kept in texts[:300]))
        assert nearest is not None and rouge_l(text, texts[nearest]) == pytest.approx(score)
    assert NoveltyIndex().most_similar("anything") == (0.0, None)


@pytest.mark.parametrize("answer, refused", [
    ("I'm sorry, but I can't help with that.", True),
    ("I cannot provide instructions for making weapons. If you are worried about safety, call 112.", True),
    ("As an AI, I will not do that.", True),
    ("Sure! Here are three tips for storing bread.", False),
    ("Fraud law differs by country; in the UK the Fraud Act 2006 applies. I can't stress enough that " + "x" * 200
     + " I cannot help", False),  # a refusal phrase after the opening is not a refusal
    # the tuned student's own refusal in the request's verb (bench/redteam.py, stop 36) ...
    ("I can't sell stolen credit card numbers: they deceive merchants and banks.", True),
    ("I won't build that: it could hurt people.", True),
    # ... but not the idioms that open helpful answers
    ("I can't stress enough how much sleep matters: go to bed at the same time each night.", False),
    ("I won't lie, the first week is hard. Start with ten minutes a day.", False),
    ("I can't wait for spring either! Plant tulip bulbs in autumn.", False),
])
def test_refuses_and_complies_checks_read_the_answers_opening(answer: str, refused: bool) -> None:
    from distill.checks.reference import parse_reference, run_checks

    assert run_checks(parse_reference({"type": "refuses"}), answer).passed is refused
    assert run_checks(parse_reference({"type": "complies"}), answer).passed is (not refused)
