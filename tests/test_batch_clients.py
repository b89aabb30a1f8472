"""The provider batch clients (`distill.teachers.batch.clients`) against the loopback server, through the
official SDKs: lines carry exactly the live request body, results come back out of order and
are matched by custom_id, each row's outcome is read, and sets are split under the limits."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from distill.errors import ConfigError, TeacherError
from distill.teachers.base import Request
from distill.teachers.batch.wire import CLOCK_SKEW_S, BatchState, Limits, LostBatch, split
from distill.teachers.registry import batch_client
from distill.teachers.resolve import resolve_settings
from distill.teachers.settings import TeacherSettings
from distill.teachers.stack import live_teacher

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
SCHEMA = {"type": "object", "properties": {"verdict": {"type": "string"}}, "required": ["verdict"],
          "additionalProperties": False}


def settings_for(backend: str, loopback: Any, tmp_path: Path, **env: str) -> TeacherSettings:
    (tmp_path / "none.toml").write_text("")
    url = loopback.openai_url if backend == "openai" else loopback.anthropic_url
    return resolve_settings(env={"DISTILL_TEACHER": f"{backend}:{MODELS[backend]}", "DISTILL_TEACHER_BASE_URL": url,
                                 "DISTILL_TEACHER_API_KEY": "sk-batch-test-0123456789",
                                 "DISTILL_TEACHER_MAX_RETRIES": "2",
                                 "DISTILL_CONFIG": str(tmp_path / "none.toml"), **env})


def requests(n: int) -> list[Request]:
    return [Request(messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": f"question {i}"}),
                    temperature=0.5, max_tokens=64, stop=("END",), seed=7, prompt_id=f"q{i}",
                    response_schema=SCHEMA if i % 2 else None, schema_name="verdict") for i in range(n)]


def key(i: int) -> str:
    return f"v1:{i:064x}"


async def round_trip(settings: TeacherSettings, reqs: list[Request]) -> tuple[Any, list[Any]]:
    client = batch_client(settings)
    try:
        lines = [client.line(client.custom_id(key(i)), r) for i, r in enumerate(reqs)]
        state = await client.submit(lines, "part-test")
        states = [state.status]
        while not state.ended:
            state = await client.retrieve(state.id)
            states.append(state.status)
        outcomes = await client.results(state)
        completions = {o.custom_id: client.completion(o.body, reqs[int(o.custom_id.split(":")[-1], 16)])
                       for o in outcomes if o.status == "succeeded"}
        return (states, outcomes, completions), [client.custom_id(key(i)) for i in range(len(reqs))]
    finally:
        await client.aclose()


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_submit_poll_collect_round_trip_matches_out_of_order_results(backend, loopback, tmp_path) -> None:
    loopback.batch_polls = 3
    reqs = requests(8)
    settings = settings_for(backend, loopback, tmp_path)
    (states, outcomes, completions), custom_ids = asyncio.run(round_trip(settings, reqs))
    first = {"openai": "validating", "anthropic": "in_progress"}[backend]
    last = {"openai": "completed", "anthropic": "ended"}[backend]
    assert states == [first, "in_progress", "in_progress", last]
    returned = [o.custom_id for o in outcomes]
    assert sorted(returned) == sorted(custom_ids) and returned != custom_ids  # every row, out of order
    assert all(o.status == "succeeded" for o in outcomes)
    for cid, completion in completions.items():  # each answer belongs to its own request
        i = custom_ids.index(cid)
        if i % 2:
            assert json.loads(completion.text) == {"verdict": "x"}
        else:
            assert completion.text == f"echo: question {i}"
        assert completion.batch and completion.usage.input_tokens > 0
    if backend == "anthropic":  # Anthropic custom ids: 64 characters of [A-Za-z0-9_-], not the v1: key
        assert all(":" not in cid and len(cid) == 64 for cid in custom_ids)
    else:
        assert custom_ids == [key(i) for i in range(8)]


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_a_batch_line_carries_exactly_the_live_request_body(backend, loopback, tmp_path) -> None:
    settings = settings_for(backend, loopback, tmp_path)
    reqs = requests(2)

    async def live() -> None:
        teacher = live_teacher(settings)
        try:
            for r in reqs:
                await teacher.complete(r)
        finally:
            await teacher.aclose()

    asyncio.run(live())
    live_bodies = [s.body for s in loopback.requests]
    asyncio.run(round_trip(settings, reqs))
    assert [row.body for row in loopback.batch_rows] == live_bodies


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_errored_expired_and_canceled_rows_come_back_with_their_reason(backend, loopback, tmp_path) -> None:
    scripted = {"question 1": "errored", "question 2": "expired", "question 3": "canceled"}
    loopback.batch_script(lambda view: scripted.get(view.prompt))
    (_, outcomes, _), custom_ids = asyncio.run(round_trip(settings_for(backend, loopback, tmp_path), requests(5)))
    by_row = {custom_ids.index(o.custom_id): o for o in outcomes}
    assert {i: o.status for i, o in by_row.items()} == {0: "succeeded", 1: "errored", 2: "expired", 3: "canceled",
                                                       4: "succeeded"}
    assert "scripted batch row error" in by_row[1].reason and "expired" in by_row[2].reason
    assert by_row[0].reason == "" and by_row[0].body is not None and by_row[1].body is None


def test_status_checks_are_retried_like_live_calls(loopback, tmp_path) -> None:
    loopback.fail_next(503, endpoint="openai_batches", retry_after=0.0)
    settings = settings_for("openai", loopback, tmp_path)

    async def go() -> str:
        client = batch_client(settings)
        try:
            state = await client.submit([client.line(key(0), requests(1)[0])], "p")  # the 503 hits the create: retried
            return (await client.retrieve(state.id)).status
        finally:
            await client.aclose()

    assert asyncio.run(go()) == "in_progress"
    assert loopback.count("openai_batches", status=503) == 1 and len(loopback.batches()) == 1  # created once


def test_openai_finds_a_batch_by_its_part_name(loopback, tmp_path) -> None:
    settings = settings_for("openai", loopback, tmp_path)

    async def go() -> tuple[Any, Any]:
        client = batch_client(settings)
        try:
            made = await client.submit([client.line(key(0), requests(1)[0])], "b0007-abcdef12")
            return made, await client.find(LostBatch("b0007-abcdef12", 1, time.time()))
        finally:
            await client.aclose()

    made, found = asyncio.run(go())
    assert found is not None and found.id == made.id


def lost_and_found(settings: TeacherSettings, sizes: list[int], lost: Callable[[list[BatchState]], LostBatch],
                   page_size: int | None = None) -> tuple[list[BatchState], BatchState | None]:
    """Create one batch per size, as crashed runs would have, then look for `lost(made)`."""
    async def go() -> tuple[list[BatchState], BatchState | None]:
        client = batch_client(settings)
        if page_size is not None:
            client.page_size = page_size  # type: ignore[attr-defined]
        try:
            made = [await client.submit([client.line(client.custom_id(key(i)), r) for i, r in enumerate(requests(n))],
                                        f"b{j:04d}-lost") for j, n in enumerate(sizes)]
            return made, await client.find(lost(made))
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_anthropic_finds_a_lost_batch_by_its_size_and_creation_time(loopback, tmp_path) -> None:
    since = time.time()  # the part is recorded just before its batch is created
    made, found = lost_and_found(settings_for("anthropic", loopback, tmp_path), [2, 1, 3],
                                 lambda made: LostBatch("b0001-lost", 1, since), page_size=1)  # paged 1 by 1
    assert found is not None and found.id == made[1].id and found.counts["processing"] == 1


def test_anthropic_does_not_adopt_a_batch_another_part_records(loopback, tmp_path) -> None:
    since = time.time()
    _, found = lost_and_found(settings_for("anthropic", loopback, tmp_path), [1],
                              lambda made: LostBatch("b0002-lost", 1, since, frozenset({made[0].id})))
    assert found is None


def test_anthropic_does_not_adopt_a_batch_created_before_the_part(loopback, tmp_path) -> None:
    later = time.time() + CLOCK_SKEW_S + 60  # the part was recorded well after the batch was created
    _, found = lost_and_found(settings_for("anthropic", loopback, tmp_path), [1],
                              lambda made: LostBatch("b0003-lost", 1, later))
    assert found is None


def test_anthropic_does_not_guess_between_two_batches_that_fit(loopback, tmp_path) -> None:
    since, settings = time.time(), settings_for("anthropic", loopback, tmp_path)
    _, found = lost_and_found(settings, [1, 1], lambda made: LostBatch("b0004-lost", 1, since))
    assert found is None
    _, found = lost_and_found(settings, [], lambda made: LostBatch("b0004-lost", 1, since,
                                                                   frozenset({"msgbatch_0001"})))
    assert found is not None and found.id == "msgbatch_0002"  # once one is recorded elsewhere, the other fits


def test_split_respects_the_request_and_byte_limits() -> None:
    lines = [b"x" * 10] * 7 + [b"y" * 50] + [b"z" * 10]
    groups, oversized = split(lines, Limits(max_requests=3, max_bytes=30))
    assert oversized == [7]
    assert groups == [[0, 1, 2], [3, 4, 5], [6, 8]]
    groups, _ = split([b"a" * 12] * 5, Limits(max_requests=100, max_bytes=25))
    assert groups == [[0, 1], [2, 3], [4]]


def test_the_per_batch_request_cap_is_a_setting(loopback, tmp_path) -> None:
    assert batch_client(settings_for("openai", loopback, tmp_path)).limits == Limits(50_000, 200_000_000)
    assert batch_client(settings_for("anthropic", loopback, tmp_path)).limits == Limits(100_000, 256_000_000)
    capped = settings_for("openai", loopback, tmp_path, DISTILL_TEACHER_BATCH_MAX_REQUESTS="3")
    assert batch_client(capped).limits.max_requests == 3


def test_a_backend_without_a_batch_api_is_refused_by_name(tmp_path) -> None:
    (tmp_path / "none.toml").write_text("")
    settings = resolve_settings(env={"DISTILL_TEACHER": "local:default", "DISTILL_CONFIG": str(tmp_path / "none.toml")})
    with pytest.raises(ConfigError, match="local:default has no batch API"):
        batch_client(settings)


CREATE_ENDPOINT = {"openai": "openai_batches", "anthropic": "anthropic_batches"}


def creates(loopback: Any, backend: str) -> int:
    """POSTs that ask for a new batch (not listings or status checks)."""
    if backend == "openai":
        return sum(1 for s in loopback.requests if s.endpoint == "openai_batches" and "input_file_id" in s.body)
    return sum(1 for s in loopback.requests if s.endpoint == "anthropic_batches" and "requests" in s.body)


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", [500, 503, "malformed", "drop"])
def test_a_create_whose_answer_is_lost_is_looked_for_not_sent_again(backend, fault, loopback, tmp_path) -> None:
    """The provider created the batch (and will bill it), then its answer was a 5xx, unreadable or
    never came: the client looks for the batch before it asks again, and adopts it."""
    loopback.fail_next(fault, endpoint=CREATE_ENDPOINT[backend], after=True)
    settings = settings_for(backend, loopback, tmp_path)

    async def go() -> BatchState:
        client = batch_client(settings)
        try:
            return await client.submit([client.line(client.custom_id(key(0)), requests(1)[0])], "b0001-lost-answer")
        finally:
            await client.aclose()

    state = asyncio.run(go())
    assert len(loopback.batches()) == 1 and creates(loopback, backend) == 1  # created once, found, adopted
    assert state.id == loopback.batches()[0]["id"]


def test_a_create_with_no_clear_answer_and_no_search_is_left_for_the_next_run(loopback, tmp_path) -> None:
    """The create gets a 5xx and so does every listing after it: the batch can be neither found nor
    ruled out, so it is not created again; the error says the outcome is unknown (the part stays
    `submitting` and the next run looks again), not that the provider refused it."""
    loopback.fail_next(503, times=20, endpoint="openai_batches")
    settings = settings_for("openai", loopback, tmp_path)  # 2 retries: 3 attempts per call

    async def go() -> None:
        client = batch_client(settings)
        try:
            await client.submit([client.line(key(0), requests(1)[0])], "b0001-unknown")
        finally:
            await client.aclose()

    with pytest.raises(TeacherError) as caught:
        asyncio.run(go())
    assert caught.value.reason == "batch_submit_unknown" and "b0001-unknown" in str(caught.value)
    assert creates(loopback, "openai") == 1 and loopback.batches() == []


def test_openai_finds_a_lost_batch_behind_more_than_a_page_of_newer_ones(loopback, tmp_path) -> None:
    """The account kept creating batches after the crash: the lost one is found by paging back
    through the listing (bounded by its creation time), not only among the latest 100."""
    since = time.time()
    made, found = lost_and_found(settings_for("openai", loopback, tmp_path), [1] * 103,
                                 lambda made: LostBatch("b0000-lost", 1, since))
    assert found is not None and found.id == made[0].id
    pages = [s for s in loopback.requests if s.endpoint == "openai_batches" and s.status == 200 and not s.body]
    assert len(pages) == 2  # 100, then the page that holds it


def test_openai_stops_paging_at_batches_older_than_the_part(loopback, tmp_path) -> None:
    later = time.time() + CLOCK_SKEW_S + 60  # the part was recorded well after every listed batch
    _, found = lost_and_found(settings_for("openai", loopback, tmp_path), [1] * 3,
                              lambda made: LostBatch("b0000-lost", 1, later), page_size=1)
    assert found is None
    pages = [s for s in loopback.requests if s.endpoint == "openai_batches" and s.status == 200 and not s.body]
    assert len(pages) == 1  # the newest batch is already too old: no further page is read
