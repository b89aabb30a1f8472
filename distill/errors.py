"""The error tree of distill.

Every failure a user can cause or fix raises one of these, with a message that names the
offending file, line, field, variable or value and says what to do. Only the CLI turns them
into exit codes; library callers catch `DistillError`.

    DistillError
    ├── InputError      a prompts/answers/dataset file is unreadable or malformed
    ├── ConfigError     an environment variable, flag or config value is wrong or missing
    ├── ModelError      a student/teacher model is missing, corrupt or cannot load
    ├── SchemaError     a JSON schema that constrained decoding cannot compile
    ├── TeacherError    a teacher call failed for good (after retries, or not retryable)
    │   ├── QuotaExhausted  the provider says the account is out of credit: stop the batch
    │   └── SystematicFailure  row after row fails the same way (out of memory, a dead server): stop the stage
    ├── CacheError      the teacher-call cache is corrupt, unwritable, or misses offline
    ├── RunInUse        another process is working on the same run directory
    └── BatchesPending  not a failure: provider batches are still running (--no-wait); run again later
"""

from __future__ import annotations


class DistillError(Exception):
    """Base of every error distill raises on purpose."""

    exit_code = 1


class InputError(DistillError):
    """A user-supplied file is unreadable or malformed; the message lists FILE:LINE: reason."""

    exit_code = 2


class ConfigError(DistillError):
    """A configuration value (environment variable, flag, config file) is wrong or missing."""

    exit_code = 2


class ModelError(DistillError):
    """A model directory, weights file or tokenizer is missing, corrupt or unloadable."""


class VocabularyMismatch(ModelError):
    """The teacher and the student tokenize differently, so the teacher cannot score the student's
    token ids (on-policy distillation needs one vocabulary; cross-tokenizer alignment is not done)."""


class SchemaError(DistillError):
    """A requested JSON schema that the grammar engine (xgrammar) cannot compile for the model."""


class TeacherError(DistillError):
    """A teacher request failed for good; `reason` is a short machine-readable tag."""

    def __init__(self, message: str, *, reason: str = "error", status: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.status = status


class QuotaExhausted(TeacherError):
    """The provider reports an exhausted quota or credit: retrying cannot help."""


class SystematicFailure(TeacherError):
    """Many rows in a row failed for the same reason: a fault of the teacher (out of memory, a
    server down, a rejected key), not of the rows, so the stage stops instead of failing them all."""


class CacheError(DistillError):
    """The teacher-call cache cannot be read or written, or misses in offline mode."""


class BatchesPending(DistillError):
    """Provider batches of the run are still running and the run was told not to wait for them
    (`--no-wait`). Not a failure: the same command continues the run later. Exit status 75
    (EX_TEMPFAIL, "try again later"), so scripts can tell it from success and from errors."""

    exit_code = 75


class RunInUse(DistillError):
    """Another live process holds the run directory's lock (`distill.records.files.run_lock`); the message names
    it. Two processes on one run would corrupt each other's files and pay the teacher twice."""
