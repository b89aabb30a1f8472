"""Teacher settings, the backend registry and the `distill config` / `distill teachers` commands."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import textwrap
from pathlib import Path

import pytest

from distill.cli import main
from distill.errors import ConfigError
from distill.teachers.registry import GROUP, backend_identity, installed, load_backend
from distill.teachers.resolve import resolve_settings
from distill.teachers.settings import Secret, TeacherSettings
from distill.teachers.stack import live_teacher

KEY = "sk-settings-0123456789abcdefWXYZ"


@pytest.fixture(autouse=True)
def _no_project_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run where no distill.toml lies around, keeping the default cache (for the embedded model)."""
    from distill.config import cache_dir

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(cache_dir().resolve()))
    monkeypatch.chdir(tmp_path)


def test_nothing_configured_means_local_default() -> None:
    settings = resolve_settings(env={})
    assert (settings.backend, settings.model) == ("local", "default")
    assert settings.uses_default and settings.sources["backend"] == "default"
    assert settings.api_key is None and settings.base_url is None


@pytest.mark.parametrize("value,expected", [
    ("openai:gpt-4o-mini", ("openai", "gpt-4o-mini")),
    ("anthropic:claude-sonnet-4-5", ("anthropic", "claude-sonnet-4-5")),
    ("local:default", ("local", "default")),
    ("local:/models/qwen", ("local", "/models/qwen")),
    ("local", ("local", "default")),
    (" OpenAI:llama3:8b ", ("openai", "llama3:8b")),  # Ollama model names contain colons
])
def test_distill_teacher_names_backend_and_model(value: str, expected: tuple[str, str]) -> None:
    settings = resolve_settings(env={"DISTILL_TEACHER": value})
    assert (settings.backend, settings.model) == expected
    assert settings.sources["model"] == "env DISTILL_TEACHER" and not settings.uses_default


@pytest.mark.parametrize("value", ["openai", "openai:", ":gpt-4o"])
def test_a_malformed_teacher_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="DISTILL_TEACHER=.*expected BACKEND:MODEL"):
        resolve_settings(env={"DISTILL_TEACHER": value})


def test_an_unknown_backend_lists_the_installed_ones() -> None:
    with pytest.raises(ConfigError, match="unknown teacher backend 'opanai'; installed: anthropic, local, none, openai"):
        resolve_settings(env={"DISTILL_TEACHER": "opanai:gpt-4o"})


def test_sdk_variables_are_the_fallback_for_key_and_base_url() -> None:
    env = {"DISTILL_TEACHER": "openai:m", "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://vllm:8000/v1/"}
    settings = resolve_settings(env=env)
    assert settings.api_key == Secret(KEY) and settings.sources["api_key"] == "env OPENAI_API_KEY"
    assert settings.base_url == "http://vllm:8000/v1" and settings.sources["base_url"] == "env OPENAI_BASE_URL"
    env |= {"DISTILL_TEACHER_API_KEY": "sk-distill-own-key-0000000000", "DISTILL_TEACHER_BASE_URL": "http://x:1/v1"}
    settings = resolve_settings(env=env)
    assert settings.api_key == Secret("sk-distill-own-key-0000000000")
    assert settings.base_url == "http://x:1/v1" and settings.sources["base_url"] == "env DISTILL_TEACHER_BASE_URL"


def test_anthropic_reads_its_own_sdk_variables_not_openais() -> None:
    env = {"DISTILL_TEACHER": "anthropic:claude-haiku-4-5", "OPENAI_API_KEY": "sk-openai-000000000000000",
           "ANTHROPIC_API_KEY": KEY}
    assert resolve_settings(env=env).api_key == Secret(KEY)


def test_precedence_is_flags_then_config_file_then_environment_then_defaults(tmp_path: Path) -> None:
    config = tmp_path / "distill.toml"
    config.write_text(textwrap.dedent("""
        [teacher]
        teacher = "anthropic:claude-haiku-4-5"
        rpm = 100
        tpm = 50000
    """))
    env = {"DISTILL_TEACHER": "openai:gpt-4o-mini", "DISTILL_TEACHER_RPM": "10", "DISTILL_TEACHER_TPM": "10",
           "DISTILL_TEACHER_TIMEOUT": "5"}
    settings = resolve_settings(env=env, config_file=config, overrides={"rpm": "1000", "tpm": None})
    assert settings.rpm == 1000 and settings.sources["rpm"] == "flag --rpm"
    assert settings.tpm == 50000 and settings.sources["tpm"] == str(config)
    assert settings.name == "anthropic:claude-haiku-4-5" and settings.sources["backend"] == str(config)
    assert settings.timeout == 5 and settings.sources["timeout"] == "env DISTILL_TEACHER_TIMEOUT"
    assert settings.max_retries == 6 and settings.sources["max_retries"] == "default"


def test_the_config_file_defaults_to_distill_toml_or_distill_config(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "distill.toml").write_text('[teacher]\nconcurrency = 3\n')
    assert resolve_settings(env={}).concurrency == 3
    other = tmp_path / "other.toml"
    other.write_text('[teacher]\nconcurrency = 5\n')
    assert resolve_settings(env={"DISTILL_CONFIG": str(other)}).concurrency == 5


def test_a_config_file_may_not_hold_a_key_but_may_name_its_variable(tmp_path: Path) -> None:
    config = tmp_path / "distill.toml"
    config.write_text(f'[teacher]\nteacher = "openai:m"\napi_key = "{KEY}"\n')
    with pytest.raises(ConfigError, match="keys must not be stored in files") as caught:
        resolve_settings(env={}, config_file=config)
    assert KEY not in str(caught.value)
    config.write_text('[teacher]\nteacher = "openai:m"\napi_key_env = "MY_VLLM_KEY"\n')
    with pytest.raises(ConfigError, match="api_key_env names MY_VLLM_KEY, which is not set"):
        resolve_settings(env={}, config_file=config)
    settings = resolve_settings(env={"MY_VLLM_KEY": KEY}, config_file=config)
    assert settings.api_key == Secret(KEY) and "MY_VLLM_KEY" in settings.sources["api_key"]


@pytest.mark.parametrize("content,match", [
    ("[teacher]\nrpm = 0\n", r"\[teacher\] rpm=0: expected a positive integer"),
    ("[teacher]\nspeed = 3\n", r"unknown key\(s\) speed"),
    ("[teacher\n", "not valid TOML"),
])
def test_config_file_errors_name_the_file_and_key(tmp_path: Path, content: str, match: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=match) as caught:
        resolve_settings(env={}, config_file=config)
    assert str(config) in str(caught.value)


@pytest.mark.parametrize("variable,value", [
    ("DISTILL_TEACHER_RPM", "lots"), ("DISTILL_TEACHER_CONCURRENCY", "0"), ("DISTILL_TEACHER_TIMEOUT", "-1"),
    ("DISTILL_TEACHER_MAX_RETRIES", "-2"), ("DISTILL_TEACHER_BASE_URL", "localhost:8000"),
])
def test_a_bad_environment_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{variable}='{value}': expected"):
        resolve_settings(env={variable: value})


def test_a_missing_key_fails_before_any_work_naming_the_variables() -> None:
    with pytest.raises(ConfigError, match="set DISTILL_TEACHER_API_KEY or OPENAI_API_KEY"):
        live_teacher(resolve_settings(env={"DISTILL_TEACHER": "openai:gpt-4o-mini"}))
    with pytest.raises(ConfigError, match="set DISTILL_TEACHER_API_KEY or ANTHROPIC_API_KEY"):
        live_teacher(resolve_settings(env={"DISTILL_TEACHER": "anthropic:claude-sonnet-4-5"}))


def test_a_local_compatible_server_needs_no_key() -> None:
    env = {"DISTILL_TEACHER": "openai:llama3", "DISTILL_TEACHER_BASE_URL": "http://127.0.0.1:11434/v1"}
    teacher = live_teacher(resolve_settings(env=env))
    assert teacher.backend == "openai" and teacher.model == "llama3"


def test_a_secret_never_shows_its_value() -> None:
    secret = Secret(KEY)
    settings = TeacherSettings(backend="openai", model="m", api_key=secret)
    for shown in (repr(secret), str(secret), f"{secret}", repr(settings), str(dataclasses.asdict(settings)),
                  str(copy.deepcopy(settings)), json.dumps(settings.display())):
        assert KEY not in shown
    assert "WXYZ" in secret.masked() and secret.reveal() == KEY
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(settings)
    assert secret.redact(f"Incorrect API key provided: {KEY}.") == "Incorrect API key provided: ***WXYZ."


# ---------------------------------------------------------------- the registry

def test_builtin_backends_come_from_the_entry_point_group() -> None:
    found = {item.name: item for item in installed()}
    assert {"openai", "anthropic", "local"} <= set(found)
    assert found["openai"].target == "distill.teachers.openai_api:BACKEND" and found["openai"].builtin
    backend = load_backend("anthropic")
    assert backend.key_env == ("ANTHROPIC_API_KEY",) and backend.base_url_env == ("ANTHROPIC_BASE_URL",)


def test_identity_builds_no_client() -> None:
    settings = resolve_settings(env={"DISTILL_TEACHER": "openai:gpt-4o-mini"})  # no key: a client would refuse
    assert backend_identity(settings) == {"backend": "openai", "model": "gpt-4o-mini",
                                          "base_url": "https://api.openai.com/v1"}


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed third-party package registering backend `echo` (a dist-info on sys.path)."""
    (tmp_path / "echo_teacher.py").write_text(textwrap.dedent('''
        from distill.teachers.base import Completion
        from distill.teachers.registry import BackendSpec

        class EchoTeacher:
            backend = "echo"
            def __init__(self, settings):
                self.model = settings.model
            def identity(self):
                return {"backend": "echo", "model": self.model}
            async def complete(self, request):
                return Completion(text=request.messages[-1]["content"], finish_reason="stop")
            async def aclose(self):
                pass

        BACKEND = BackendSpec(name="echo", summary="repeats the prompt", make=EchoTeacher,
                              identify=lambda s: {"backend": "echo", "model": s.model})
    '''))
    dist = tmp_path / "echo_teacher-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-teacher\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{GROUP}]\necho = echo_teacher:BACKEND\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_third_party_backend_registers_through_the_same_group(third_party: Path) -> None:
    import asyncio

    from distill.teachers.base import Request

    settings = resolve_settings(env={"DISTILL_TEACHER": "echo:v1"})
    teacher = live_teacher(settings)
    done = asyncio.run(teacher.complete(Request(messages=({"role": "user", "content": "hello"},))))
    assert done.text == "hello" and backend_identity(settings) == {"backend": "echo", "model": "v1"}
    assert {i.name: i.distribution for i in installed()}["echo"] == "echo-teacher"


# ---------------------------------------------------------------- the commands

def test_distill_teachers_lists_builtins_and_plugins(third_party: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["teachers"]) == 0
    out = capsys.readouterr().out
    for name in ("openai", "anthropic", "local"):
        assert f" {name} " in out
    assert "echo-teacher" in out and "repeats the prompt" in out
    assert "* local" in out  # the active one: nothing configured


def test_distill_config_says_when_the_default_is_used(capsys: pytest.CaptureFixture) -> None:
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "local:default" in out and "no teacher configured" in out


def test_distill_config_shows_sources_and_masks_the_key(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("DISTILL_TEACHER", "openai:gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert main(["config", "--rpm", "500"]) == 0
    out = capsys.readouterr().out
    assert KEY not in out and "***WXYZ" in out
    assert "env OPENAI_API_KEY" in out and "flag --rpm" in out and "env DISTILL_TEACHER" in out
    assert "no teacher configured" not in out
    assert main(["config", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["values"]["api_key"] == "***WXYZ" and data["sources"]["rpm"] == "default"


def test_distill_config_fails_naming_the_variable_when_a_key_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("DISTILL_TEACHER", "anthropic:claude-sonnet-4-5")
    assert main(["config"]) == 2
    captured = capsys.readouterr()
    assert "MISSING: set DISTILL_TEACHER_API_KEY or ANTHROPIC_API_KEY" in captured.out
    assert "needs an API key" in captured.err


def test_distill_config_identity_of_the_local_default(capsys: pytest.CaptureFixture) -> None:
    from distill.student import embedded

    assert main(["config", "--identity", "--json"]) == 0
    identity = json.loads(capsys.readouterr().out)["identity"]
    assert identity["weights_sha256"] == embedded.read_identity(embedded.ensure_converted())["weights_sha256"]
    assert identity["path"].endswith("smollm2-135m-instruct")


@pytest.mark.parametrize("url, masked", [
    ("https://user:token@host.example/v1", "https://***@host.example/v1"),
    ("https://token@host.example:8443/v1", "https://***@host.example:8443/v1"),
    ("https://user:p@ss@host.example/v1", "https://***@host.example/v1"),  # an unescaped @ in the password
    ("https://host.example/v1?api-key=abc&api-version=2024", "https://host.example/v1?api-key=***&api-version=***"),
    ("http://localhost:8000/v1", "http://localhost:8000/v1"),
    ("failed: POST http://u:pw@10.0.0.1/v1/chat (refused)", "failed: POST http://***@10.0.0.1/v1/chat (refused)"),
])
def test_mask_url_masks_the_credentials_of_every_url_and_only_them(url: str, masked: str) -> None:
    from distill.teachers.settings import mask_url

    assert mask_url(url) == masked and mask_url(masked) == masked


def test_every_teacher_knob_marked_as_a_flag_is_a_distill_config_flag_that_reaches_the_settings(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The teacher flags are generated from KNOBS: each flag knob's flag sets it, with its source."""
    from distill.teachers.settings import KNOBS

    values = {"base_url": "http://localhost:9/v1", "prices_file": "prices.toml"}
    monkeypatch.setenv("DISTILL_TEACHER", "openai:gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    flagged = [name for name, knob in KNOBS.items() if knob.flag]
    assert {"base_url", "concurrency", "rpm", "timeout", "max_retries"} <= set(flagged)
    args = [a for name in flagged for a in ("--" + name.replace("_", "-"), values.get(name, "3"))]
    assert main(["config", "--json", *args]) == 0
    sources = json.loads(capsys.readouterr().out)["sources"]
    assert {name: sources[name] for name in flagged} == {
        name: "flag --" + name.replace("_", "-") for name in flagged}
