"""The backend registry: every teacher backend, built-in or third-party, is an entry point.

Backends register in the entry-point group `distill.teachers`. distill's own `openai`,
`anthropic` and `local` are declared there in pyproject.toml exactly as a plugin declares its
own, so there is one path for all of them:

    [project.entry-points."distill.teachers"]
    mybackend = "my_package.teacher:BACKEND"

The entry point names an object with the `Backend` shape; `BackendSpec` is a ready-made one.
Loading an entry point imports only the module that defines it; backends import their SDKs
inside `create`, so listing backends or resolving settings stays cheap.

A backend speaks its wire format only: `create` returns a `Wire` (a hosted API: one attempt, the
stack adds retry, pacing, cache and price) or a `Teacher` (anything else). A backend that has a
provider batch API declares its client as `batch` (a function of the settings returning a
`distill.teachers.batch.wire.BatchClient`), and batch mode works with it like with the built-ins.

The teacher itself is built in one place, `distill.teachers.stack.open_teacher`, from one loaded
backend; `backend_identity(settings)` names the provider and model without building anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Protocol, runtime_checkable

from distill.errors import ConfigError
from distill.teachers.base import Teacher, Wire
from distill.teachers.settings import TeacherSettings, masked_identity

GROUP = "distill.teachers"
BUILTIN = ("anthropic", "local", "none", "openai")


@runtime_checkable
class Backend(Protocol):
    """What an entry point in `distill.teachers` must name."""

    name: str
    summary: str
    key_env: tuple[str, ...]  # the SDK's own key variables, read after DISTILL_TEACHER_API_KEY
    base_url_env: tuple[str, ...]  # the SDK's own base-URL variables, after DISTILL_TEACHER_BASE_URL

    def needs_key(self, settings: TeacherSettings) -> bool: ...

    def identity(self, settings: TeacherSettings) -> dict[str, Any]: ...

    def create(self, settings: TeacherSettings) -> Teacher | Wire: ...

    # optional: `batch(settings) -> BatchClient` when the provider has a batch API (see BackendSpec);
    # `scores(settings, cache_dir) -> Capability` and `scorer(settings, cache_dir) -> Scorer` when it
    # can score given token ids (`distill.teachers.scoring`)


def _never(settings: TeacherSettings) -> bool:
    return False


@dataclass(frozen=True)
class BackendSpec:
    """A `Backend` built from plain functions; what the built-ins and most plugins use."""

    name: str
    summary: str
    make: Callable[[TeacherSettings], Teacher | Wire]
    identify: Callable[[TeacherSettings], dict[str, Any]]
    key_env: tuple[str, ...] = ()
    base_url_env: tuple[str, ...] = ()
    key_required: Callable[[TeacherSettings], bool] = _never
    batch: Callable[[TeacherSettings], Any] | None = None  # the provider batch client, when there is one
    # token scoring (on-policy distillation, `distill.teachers.scoring`): whether it can, and its Scorer
    scores: Callable[[TeacherSettings, Any], Any] | None = None  # (settings, cache_dir) -> Capability
    scorer: Callable[[TeacherSettings, Any], Any] | None = None  # (settings, cache_dir) -> Scorer

    def needs_key(self, settings: TeacherSettings) -> bool:
        return self.key_required(settings)

    def identity(self, settings: TeacherSettings) -> dict[str, Any]:
        return self.identify(settings)

    def create(self, settings: TeacherSettings) -> Teacher | Wire:
        return self.make(settings)


@dataclass(frozen=True)
class Installed:
    """One entry point of the group, loaded or not."""

    name: str
    target: str  # "module:attribute"
    distribution: str  # the package that declared it

    @property
    def builtin(self) -> bool:
        return self.distribution == "distill" and self.name in BUILTIN


def installed() -> list[Installed]:
    """Every backend declared in the entry-point group, sorted by name; nothing is imported."""
    found = []
    for ep in metadata.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        found.append(Installed(ep.name, ep.value, dist.metadata["Name"] if dist is not None else "?"))
    return sorted(found, key=lambda item: item.name)


def load_backend(name: str, *, where: str = "DISTILL_TEACHER") -> Backend:
    """Import and return the backend registered as `name`; ConfigError if absent or broken."""
    matches = [ep for ep in metadata.entry_points(group=GROUP) if ep.name == name]
    if not matches:
        known = ", ".join(item.name for item in installed())
        if not known:
            raise ConfigError(f"no teacher backends are registered in the entry-point group {GROUP!r}; "
                              "distill is not installed as a package: run `pip install -e .`")
        raise ConfigError(f"{where}: unknown teacher backend {name!r}; installed: {known} "
                          "(a third-party backend registers in the entry-point group "
                          f"{GROUP!r}; see `distill teachers`)")
    ep = matches[0]
    try:
        backend = ep.load()
    except Exception as exc:  # a broken plugin must not take distill down: say which one
        raise ConfigError(f"teacher backend {name!r} ({ep.value}) failed to load: "
                          f"{type(exc).__name__}: {exc}") from None
    if not isinstance(backend, Backend):
        raise ConfigError(f"teacher backend {name!r} ({ep.value}) is not a Backend: it needs name, summary, "
                          "key_env, base_url_env, needs_key(), identity() and create()")
    return backend


def require_key(settings: TeacherSettings, backend: Backend | None = None) -> None:
    """ConfigError naming the variable to set when the backend needs a key and none is set."""
    backend = backend or load_backend(settings.backend)
    if settings.api_key is None and backend.needs_key(settings):
        raise ConfigError(f"teacher {settings.name} needs an API key: {settings.key_hint()}")


def backend_identity(settings: TeacherSettings, backend: Backend | None = None) -> dict[str, Any]:
    """Provider and resolved model identity (part of the cache key). Builds no client, loads no
    model; for local models this is the model directory and a SHA-256 of its weights. It is
    recorded (manifests, batch records) and shown, so credentials in a base URL are masked."""
    return masked_identity((backend or load_backend(settings.backend)).identity(settings))


def batch_client(settings: TeacherSettings, backend: Backend | None = None) -> Any:
    """The provider batch client the backend declares (`batch`), after checking the key;
    ConfigError for a backend without one."""
    backend = backend or load_backend(settings.backend)
    make = getattr(backend, "batch", None)
    if make is None:
        raise ConfigError(f"batch mode (--batch / DISTILL_TEACHER_BATCH=1): the teacher {settings.name} has no "
                          f"batch API; it works with openai (and OpenAI-compatible servers that implement "
                          f"/v1/files and /v1/batches), anthropic, and backends that declare a batch client. "
                          "Run without --batch")
    require_key(settings, backend)
    return make(settings)
