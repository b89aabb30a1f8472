"""The openai and anthropic backends, driven through the official SDKs against the loopback server.

No SDK internals are mocked: the SDKs speak HTTP to a real server on 127.0.0.1 that injects the
faults. Most tests run for both providers.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fakes import run_all
from loopback_server import Fault, LoopbackRequest, LoopbackServer, Reply

from distill.errors import ConfigError, QuotaExhausted, TeacherError
from distill.teachers.base import Completion, Request, Teacher
from distill.teachers.openai_api import OpenAIWire
from distill.teachers.pacing import PacedTeacher
from distill.teachers.stack import live_teacher
from distill.teachers.resolve import resolve_settings

KEY = "sk-loopback-0123456789-abcdefghij"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5"}
PROVIDERS = ("openai", "anthropic")


def make_teacher(server: LoopbackServer, provider: str, **flags: Any) -> Teacher:
    env = {
        "DISTILL_TEACHER": f"{provider}:{MODELS[provider]}",
        "DISTILL_TEACHER_BASE_URL": server.openai_url if provider == "openai" else server.anthropic_url,
        "DISTILL_TEACHER_API_KEY": KEY,
        "DISTILL_TEACHER_TIMEOUT": "2",
        "DISTILL_TEACHER_MAX_RETRIES": "3",
    }
    return live_teacher(resolve_settings(env=env, overrides=flags))


def paced(teacher: Teacher) -> PacedTeacher:
    """The retry-and-pacing layer of a stack from `make_teacher`."""
    layer = teacher.layer(PacedTeacher)  # type: ignore[attr-defined]
    assert layer is not None
    return layer


def wire(teacher: Teacher) -> OpenAIWire:
    """The openai backend of a stack from `make_teacher` (its JSON mode steps down)."""
    layer = teacher.layer(OpenAIWire)  # type: ignore[attr-defined]
    assert layer is not None
    return layer


def ask(text: str, **fields: Any) -> Request:
    return Request(messages=({"role": "user", "content": text},), prompt_id=text, **{"max_tokens": 32, **fields})


def run_one(teacher: Teacher, request: Request) -> Completion:
    (result,) = run_all(teacher, [request])
    if isinstance(result, BaseException):
        raise result
    return result


# ---------------------------------------------------------------- wire format

@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_completion_carries_text_usage_model_and_cost(loopback: LoopbackServer, provider: str) -> None:
    loopback.script(lambda r: Reply(f"answer to {r.prompt}", input_tokens=1000, output_tokens=2000))
    done = run_one(make_teacher(loopback, provider), ask("q1"))
    assert done.text == "answer to q1"
    assert done.finish_reason == "stop"
    assert (done.usage.input_tokens, done.usage.output_tokens) == (1000, 2000)
    assert done.model == MODELS[provider] and done.retries == 0 and done.latency_s > 0
    expected = {"openai": (1000 * 0.15 + 2000 * 0.60) / 1e6, "anthropic": (1000 * 3 + 2000 * 15) / 1e6}
    assert done.cost == pytest.approx(expected[provider])
    assert done.raw["usage"]  # the provider's body is kept
    assert loopback.count(provider) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_unknown_model_has_unknown_cost(loopback: LoopbackServer, provider: str) -> None:
    done = run_one(make_teacher(loopback, provider, teacher=f"{provider}:my-private-finetune"), ask("q"))
    assert done.cost is None


def test_anthropic_gets_the_system_prompt_in_its_own_field(loopback: LoopbackServer) -> None:
    request = Request(messages=({"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}))
    run_one(make_teacher(loopback, "anthropic"), request)
    body = loopback.requests[0].body
    assert body["system"] == "Be terse."
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    headers = loopback.requests[0].headers  # SDK 2.x sends the key as a bearer token, older ones as x-api-key
    assert KEY in (headers.get("x-api-key"), headers.get("authorization", "").removeprefix("Bearer "))


def test_openai_sends_messages_and_decoding_parameters(loopback: LoopbackServer) -> None:
    request = Request(messages=({"role": "system", "content": "S"}, {"role": "user", "content": "U"}),
                      temperature=0.7, top_p=0.9, max_tokens=50, stop=("END",), seed=3)
    run_one(make_teacher(loopback, "openai"), request)
    body = loopback.requests[0].body
    assert body["messages"][0] == {"role": "system", "content": "S"}
    assert (body["temperature"], body["top_p"], body["seed"], body["stop"]) == (0.7, 0.9, 3, ["END"])
    assert body["max_tokens"] == 50  # a compatible server gets max_tokens, api.openai.com max_completion_tokens
    assert loopback.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_the_official_openai_endpoint_gets_max_completion_tokens(loopback: LoopbackServer) -> None:
    import openai

    settings = resolve_settings(env={"DISTILL_TEACHER": "openai:gpt-5-mini", "OPENAI_API_KEY": KEY})
    client = openai.AsyncOpenAI(api_key=KEY, base_url=loopback.openai_url, max_retries=0)  # stands in for the API
    run_one(PacedTeacher(OpenAIWire(settings, client), settings), ask("q", max_tokens=77))
    body = loopback.requests[0].body
    assert body["max_completion_tokens"] == 77 and "max_tokens" not in body


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["verdict", "score"],
          "properties": {"verdict": {"type": "string", "enum": ["better", "worse"]}, "score": {"type": "integer"}}}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_json_schema_goes_out_natively_and_the_reply_parses(loopback: LoopbackServer, provider: str) -> None:
    loopback.script(lambda r: json.dumps({"verdict": "better", "score": 4}))
    done = run_one(make_teacher(loopback, provider), ask("judge", response_schema=SCHEMA, schema_name="judgement"))
    assert json.loads(done.text) == {"verdict": "better", "score": 4}
    assert done.finish_reason == "stop"
    body = loopback.requests[0].body
    if provider == "openai":
        assert body["response_format"] == {"type": "json_schema",
                                           "json_schema": {"name": "judgement", "schema": SCHEMA, "strict": True}}
    else:
        assert body["tool_choice"] == {"type": "tool", "name": "judgement"}
        assert body["tools"][0]["input_schema"] == SCHEMA


def llama_cpp_python_like(accepted: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """A responder that, like the llama-cpp-python server, answers a response_format type it does
    not take with HTTP 500 and a pydantic validation error, and otherwise a schema instance."""
    def respond(request: LoopbackRequest) -> str | Fault:
        kind = (request.body.get("response_format") or {}).get("type")
        if kind is not None and kind not in accepted:
            return Fault(500, body={"error": {"message": "1 validation error:\n  {'type': 'literal_error', 'loc': "
                                                         "('body', 'response_format', 'type'), 'msg': \"Input should be "
                                                         f"'text' or 'json_object'\", 'input': '{kind}'}}",
                                              "type": "internal_server_error"}})
        return json.dumps({"verdict": "better", "score": 4})
    return respond


def test_a_server_that_rejects_json_schema_gets_json_object_with_the_schema(loopback: LoopbackServer) -> None:
    loopback.script(llama_cpp_python_like(accepted=("text", "json_object")))
    teacher = make_teacher(loopback, "openai")

    async def go() -> list:
        try:  # several requests in flight when the first refusal comes back: one step down for all
            return list(await asyncio.gather(*(teacher.complete(ask(f"judge {i}", response_schema=SCHEMA))
                                               for i in range(4))))
        finally:
            await teacher.aclose()

    done = asyncio.run(go())
    assert [json.loads(d.text)["verdict"] for d in done] == ["better"] * 4
    kinds = [(s.body.get("response_format") or {}).get("type") for s in loopback.requests]
    assert kinds.count("json_object") == 4 and 1 <= kinds.count("json_schema") <= 4  # no blind retries
    sent = next(s.body["response_format"] for s in loopback.requests if s.status == 200)
    assert sent == {"type": "json_object", "schema": SCHEMA} and wire(teacher).json_mode == "json_object"


def test_a_server_that_rejects_every_response_format_gets_the_prompt_alone(loopback: LoopbackServer) -> None:
    loopback.script(llama_cpp_python_like(accepted=()))
    done = run_one(make_teacher(loopback, "openai"), ask("judge", response_schema=SCHEMA))
    assert json.loads(done.text)["score"] == 4
    assert [(s.body.get("response_format") or {}).get("type") for s in loopback.requests] == \
        ["json_schema", "json_object", None]


@pytest.mark.parametrize("mode, expected", [("json_object", {"type": "json_object", "schema": SCHEMA}), ("off", None)])
def test_the_json_mode_can_be_chosen(loopback: LoopbackServer, mode: str, expected) -> None:
    loopback.script(lambda r: json.dumps({"verdict": "worse", "score": 1}))
    run_one(make_teacher(loopback, "openai", json_mode=mode), ask("judge", response_schema=SCHEMA))
    assert loopback.requests[0].body.get("response_format") == expected


def test_with_an_explicit_json_mode_a_rejection_is_an_error_not_a_step_down(loopback: LoopbackServer) -> None:
    loopback.script(llama_cpp_python_like(accepted=("json_object",)))
    with pytest.raises(TeacherError, match="response_format"):
        run_one(make_teacher(loopback, "openai", json_mode="json_schema", max_retries=0),
                ask("judge", response_schema=SCHEMA))
    assert len(loopback.requests) == 1


def test_an_unknown_json_mode_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="DISTILL_TEACHER_JSON_MODE='strict': expected one of auto, json_schema"):
        resolve_settings(env={"DISTILL_TEACHER": "openai:m", "DISTILL_TEACHER_JSON_MODE": "strict"})


def test_anthropic_wraps_a_non_object_schema_in_its_forced_tool(loopback: LoopbackServer) -> None:
    schema = {"type": "array", "items": {"type": "string"}}
    loopback.script(lambda r: json.dumps({"value": ["a", "b"]}))
    done = run_one(make_teacher(loopback, "anthropic"), ask("list", response_schema=schema))
    assert json.loads(done.text) == ["a", "b"]
    assert loopback.requests[0].body["tools"][0]["input_schema"]["properties"]["value"] == schema


# ---------------------------------------------------------------- the retry loop

RETRYABLE = [408, 409, 429, 500, 502, 503, 529, "malformed", "drop"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("fault", RETRYABLE)
def test_transient_failures_are_retried_once_each(loopback: LoopbackServer, provider: str, fault: Any) -> None:
    loopback.fail_next(fault, retry_after=0.05 if fault == 429 else None)
    done = run_one(make_teacher(loopback, provider), ask("again"))
    assert done.text == "echo: again"
    assert done.retries == 1
    assert loopback.count(provider) == 2  # the SDK did not retry on its own: exactly our one retry


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_complete_reply_that_cannot_be_read_is_not_bought_again(loopback: LoopbackServer, provider: str) -> None:
    """A 200 with well-formed JSON that holds no answer was produced, and billed, and the same
    request would get the same: it is not bought max_retries more times (six here); the request
    fails at once with its reason, for the row to record (the next run asks again)."""
    loopback.fail_next("unreadable", times=7)
    with pytest.raises(TeacherError) as caught:
        run_one(make_teacher(loopback, provider, max_retries=6), ask("empty"))
    assert loopback.count(provider) == 1
    assert caught.value.reason == "malformed_response" and "1 attempt" in str(caught.value)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_reply_with_a_field_of_the_wrong_type_is_a_teacher_error_not_a_crash(loopback: LoopbackServer,
                                                                               provider: str) -> None:
    """A whole answer with a token count that is no number fails its request like any unreadable
    answer (a TeacherError the row records, not bought again), not with a bare ValueError."""
    loopback.fail_next("bad_usage", times=7)
    with pytest.raises(TeacherError) as caught:
        run_one(make_teacher(loopback, provider, max_retries=6), ask("usage"))
    assert loopback.count(provider) == 1
    assert caught.value.reason == "malformed_response" and "'many'" in str(caught.value)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_timeout_is_retried(loopback: LoopbackServer, provider: str) -> None:
    loopback.fail_next("timeout", delay=5.0)
    done = run_one(make_teacher(loopback, provider, timeout=1.0), ask("slowly"))
    assert done.retries == 1 and loopback.count(provider) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("status,reason", [(400, "bad_request"), (401, "auth"), (403, "forbidden"),
                                           (404, "not_found"), (422, "unprocessable")])
def test_client_errors_are_never_retried(loopback: LoopbackServer, provider: str, status: int, reason: str) -> None:
    loopback.fail_next(status)
    with pytest.raises(TeacherError) as caught:
        run_one(make_teacher(loopback, provider), ask("bad"))
    assert loopback.count(provider) == 1
    assert caught.value.status == status and caught.value.reason == reason
    assert f"HTTP {status}" in str(caught.value) and "1 attempt" in str(caught.value)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retries_run_out_with_a_recorded_reason(loopback: LoopbackServer, provider: str) -> None:
    loopback.fail_next(503, times=3, retry_after=0.01)
    with pytest.raises(TeacherError) as caught:
        run_one(make_teacher(loopback, provider, max_retries=2), ask("doomed"))
    assert loopback.count(provider) == 3
    assert caught.value.reason == "server_error" and "3 attempts" in str(caught.value)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retry_after_is_honoured(loopback: LoopbackServer, provider: str) -> None:
    loopback.fail_next(429, retry_after=0.6)
    done = run_one(make_teacher(loopback, provider), ask("wait"))
    first, second = loopback.requests
    assert second.received - first.received >= 0.6
    assert done.retries == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_exhausted_quota_stops_the_batch(loopback: LoopbackServer, provider: str) -> None:
    loopback.fail_next("insufficient_quota")
    teacher = make_teacher(loopback, provider, concurrency=1)
    results = run_all(teacher, [ask(f"q{i}") for i in range(10)])
    assert all(isinstance(r, QuotaExhausted) for r in results)
    assert loopback.count(provider) == 1  # nobody hammered the API after the first answer
    assert "exhausted quota" in str(results[0]) and "DISTILL_TEACHER" in str(results[0])


# ---------------------------------------------------------------- pacing against enforced limits

@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_configured_rate_is_kept_without_429s(provider: str) -> None:
    with LoopbackServer(rpm=1200) as server:  # 20 per second, one second of burst
        teacher = make_teacher(server, provider, rpm=1200)
        results = run_all(teacher, [ask(f"p{i}") for i in range(40)])
        assert [r.text for r in results] == [f"echo: p{i}" for i in range(40)]  # type: ignore[union-attr]
        assert server.count(status=429) == 0
        first, last = server.requests[0].received, server.requests[-1].received
        assert last - first >= (40 - 20) / 20 * 0.9  # paced: the burst, then 20 per second


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_limit_is_learned_from_rate_limit_headers(provider: str) -> None:
    with LoopbackServer(rpm=1200, tpm=60_000) as server:
        teacher = make_teacher(server, provider, concurrency=4)
        results = run_all(teacher, [ask(f"p{i}") for i in range(30)])
        assert all(isinstance(r, Completion) for r in results)
        assert paced(teacher).pacer.requests.rate == pytest.approx(20)  # type: ignore[attr-defined]
        assert paced(teacher).pacer.tokens.rate == pytest.approx(1000)  # type: ignore[attr-defined]


def test_tokens_per_minute_are_paced_from_estimates_corrected_by_usage() -> None:
    with LoopbackServer(tpm=6000) as server:  # 100 tokens per second
        server.script(lambda r: Reply("ok", input_tokens=10, output_tokens=10))
        teacher = make_teacher(server, "openai", tpm=6000)
        results = run_all(teacher, [ask(f"p{i}") for i in range(12)])
        assert all(isinstance(r, Completion) for r in results)
        assert server.count(status=429) == 0
        assert paced(teacher).pacer.tokens.level > -1  # type: ignore[attr-defined]  # refunds kept it out of debt


# ---------------------------------------------------------------- nothing lost, nothing doubled

@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_request_completes_exactly_once_or_fails_with_a_reason(provider: str) -> None:
    """Under random faults and an enforced limit, each request ends in exactly one outcome: its own
    completion (the reply for its prompt, served once) or a TeacherError with a reason tag."""
    def respond(r: Any) -> Any:
        return Fault(400) if r.prompt.startswith("bad") else f"echo: {r.prompt}"

    with LoopbackServer(rpm=6000) as server:
        server.script(respond)
        server.chaos(0.25, [500, 503, 529, "drop", "malformed", Fault(429, retry_after=0.05),
                            Fault("timeout", delay=3.0)], seed=7)
        teacher = make_teacher(server, provider, timeout=1.5, max_retries=8, concurrency=16)
        prompts = [f"bad-{i}" if i % 25 == 0 else f"p{i}" for i in range(100)]
        results = run_all(teacher, [ask(p) for p in prompts])

        served = [s.body for s in server.requests if s.status == 200 and s.fault is None]
        served_prompts = [json.dumps(b["messages"][-1]) for b in served]
        assert len(served_prompts) == len(set(served_prompts))  # no request was answered twice
        for prompt, result in zip(prompts, results):
            if prompt.startswith("bad"):
                assert isinstance(result, TeacherError) and result.reason == "bad_request"
            else:
                assert isinstance(result, Completion), f"{prompt}: {result!r}"
                assert result.text == f"echo: {prompt}"
        assert len(served) == sum(isinstance(r, Completion) for r in results)
        assert server.count(status=None) + server.count(status=500) > 0  # the chaos really happened
