"""The student: a local transformers causal LM that answers prompts in batches.

`Student.load()` picks the model: an explicit source, else `$DISTILL_STUDENT` (a local model
directory, or a hub id where the user has network), else the embedded SmolLM2-135M-Instruct
(converted once into the cache, see `distill.student.embedded`). Every answer records the model's
identity, including a SHA-256 of its weights, so any output can be traced to the exact model.

One student handle per process: the base weights are read from disk once per (model directory,
weights hash, device, dtype) and shared (`distill.student.weights`, which holds the most recent
model only; `Student.release()` drops it). Every Student is a view: its own module tree over the
shared, frozen tensors, so answering, training, evaluation and a local teacher on the same model
hold one copy of the weights, and a LoRA adapter or training run (PEFT injects its layers into
the view's own modules and trains only them) never changes what another Student sees. Code that
rewrites weights in place (`distill merge`; adapters whose initialisation rewrites the base, such
as PiSSA) gets weights of its own (`private=True`).

Generation renders each chat with the model's own chat template, sorts prompts by length to cut
padding, pads on the left, and decodes greedily unless a temperature is given, with a KV cache that
grows in place (`distill.student.kv_cache`; the same numbers as transformers' own cache). Sampled runs are
seeded per batch from `seed` and the batch's prompt ids, so a resumed run draws the same samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from distill.config import cache_dir, option, student_source
from distill.errors import ConfigError, InputError, ModelError
from distill.records.ids import content_hash
from distill.records.prompts import Prompt
from distill.student import embedded
from distill.student.weights import SHARED_WEIGHTS

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
# LoRA initialisations that compute from, and rewrite, the base weights when PEFT builds the layer
REWRITES_BASE = ("pissa", "corda", "olora", "loftq")


@dataclass(frozen=True)
class ModelIdentity:
    """What exactly produced an output: a name, where it was loaded from, and a weights hash."""

    name: str
    path: str
    weights_sha256: str
    adapter: str | None = None
    adapter_sha256: str | None = None

    @property
    def key(self) -> str:
        """A short stable tag: name@hash, plus the adapter's hash when one is applied."""
        tag = f"{self.name}@{self.weights_sha256[:12]}"
        return tag + (f"+lora@{self.adapter_sha256[:12]}" if self.adapter_sha256 else "")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None} | {"key": self.key}


@dataclass(frozen=True)
class GenerationParams:
    """How to decode. Greedy (temperature 0) by default; `samples` answers per prompt."""

    max_new_tokens: int = option(256, help="longest answer in tokens")
    temperature: float = option(0.0, help="0 = greedy; above 0 samples")
    top_p: float = option(1.0, help="nucleus sampling mass when sampling")
    samples: int = option(1, help="answers per prompt; needs --temperature > 0")
    seed: int = option(0, help="seed for sampling")
    stop_failing: bool = option(False, cli=False, toml=False,
                                help="stop an answer once its prompt's check can no longer pass (self-training "
                                     "sets it: such a sample is thrown away; `distill.student.rejection`)")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.samples < 1:
            raise ConfigError(f"samples must be at least 1, got {self.samples}")
        if self.samples > 1 and self.temperature == 0:
            raise ConfigError(f"samples={self.samples} with temperature 0 gives {self.samples} identical "
                              "greedy answers; set a temperature above 0 (e.g. 0.7)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        """The fields, without `stop_failing` when it is off (so answers made before it keep their ids)."""
        fields = asdict(self)
        if not self.stop_failing:
            del fields["stop_failing"]
        return fields


@dataclass(frozen=True)
class Answer:
    """One generated answer to one prompt (sample index `sample`)."""

    prompt: Prompt
    sample: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end-of-turn token), "length" (hit max_new_tokens) or "failed" (stop_failing)
    model: ModelIdentity = field(repr=False)
    params: GenerationParams = field(repr=False)

    @property
    def id(self) -> str:
        return answer_id(self.prompt.id, self.model, self.params, self.sample)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id,
            "prompt_id": self.prompt.id,
            "sample": self.sample,
            "prompt": self.prompt.text,
            "messages": [dict(m) for m in self.prompt.messages],
            "answer": self.text,
            "finish_reason": self.finish_reason,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "model": self.model.to_dict(),
            "generation": self.params.to_dict(),
        }
        if self.prompt.reference is not None:
            row["reference"] = self.prompt.reference
        if self.prompt.meta:
            row["meta"] = dict(self.prompt.meta)
        return row


def answer_id(prompt_id: str, model: ModelIdentity, params: GenerationParams, sample: int) -> str:
    """Stable id of an answer: the same prompt, model, decoding and sample index give the same id."""
    return "a-" + content_hash({"prompt": prompt_id, "model": model.key,
                                "generation": params.to_dict(), "sample": sample})


# ---------------------------------------------------------------- model identity

def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def weights_sha256(directory: Path) -> str:
    """SHA-256 over a directory's weight files, memoised by (path, size, mtime) under the cache."""
    files = _weight_files(directory)
    if not files:
        raise ModelError(f"{directory}: no weights file (*.safetensors or *.bin) found; "
                         "point DISTILL_STUDENT at a transformers model directory")
    memo_path = cache_dir() / "weights-sha256.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        memo = {}
    digests: list[tuple[str, str]] = []
    changed = False
    for f in files:
        stat = f.stat()
        memo_key = f"{f.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if memo_key not in memo:
            memo[memo_key] = embedded.sha256_file(f)
            changed = True
        digests.append((f.name, memo[memo_key]))
    if changed:
        _save_memo(memo_path, memo)
    if len(digests) == 1:
        return digests[0][1]
    return hashlib.sha256("".join(f"{name}:{sha}\n" for name, sha in digests).encode()).hexdigest()


def _save_memo(path: Path, memo: dict[str, str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(memo, indent=0), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # the memo is only a speed-up


def resolve_source(source: str | os.PathLike[str] | None) -> tuple[Path, str, str | None]:
    """(model directory, display name, known weights hash or None) for a source, env or default."""
    chosen = str(source) if source is not None else student_source()
    if chosen in (None, "", "default", "embedded"):
        directory = embedded.ensure_converted()
        identity = embedded.check_converted(directory)
        return directory, embedded.NAME, identity["weights_sha256"]
    path = Path(chosen).expanduser()
    if path.is_dir():
        return path, path.name, None
    if path.exists():
        raise ModelError(f"{path}: is a file; DISTILL_STUDENT must name a model directory")
    if "/" in chosen and not chosen.startswith((".", "/", "~")):
        return _download(chosen), chosen, None
    raise ModelError(f"student {chosen!r}: no such directory; set DISTILL_STUDENT to a local "
                     "transformers model directory, a hub id (needs network), or unset it for the embedded default")


def model_identity(source: str | os.PathLike[str] | None = None,
                   adapter: str | os.PathLike[str] | None = None) -> tuple[Path, ModelIdentity]:
    """The model directory and identity for a source (and adapter), without loading any weights."""
    directory, name, known_sha = resolve_source(source)
    identity = ModelIdentity(name=name, path=str(directory), weights_sha256=known_sha or weights_sha256(directory))
    if adapter is None:
        return directory, identity
    adapter_dir = Path(adapter).expanduser()
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir}: not a LoRA adapter directory (no adapter_config.json); "
                         "give the adapter/ folder written by `distill train`")
    _check_trained_on(adapter_dir, identity)
    return directory, ModelIdentity(name=name, path=str(directory), weights_sha256=identity.weights_sha256,
                                    adapter=str(adapter_dir), adapter_sha256=weights_sha256(adapter_dir))


def _check_trained_on(adapter_dir: Path, base: ModelIdentity) -> None:
    """Refuse an adapter from `distill train` on other weights than its base (training.json records
    the base's hash): on weights of the same shape it would load without error and answer nonsense."""
    try:
        trained_on = json.loads((adapter_dir / "training.json").read_text(encoding="utf-8"))["base_model"]
        sha = trained_on["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # an adapter from elsewhere: nothing recorded to check against
    if sha != base.weights_sha256:
        raise ModelError(f"{adapter_dir}: the adapter was trained on {trained_on.get('key', sha[:12])} "
                         f"({trained_on.get('path')}), not on {base.key} ({base.path}); pass that model "
                         "with --student (or $DISTILL_STUDENT)")


def _apply_adapter(model: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter_dir)
    except Exception as exc:  # peft raises ValueError/KeyError/OSError for mismatched or broken adapters
        raise ModelError(f"{adapter_dir}: cannot apply the adapter ({type(exc).__name__}: {exc}); it may have been "
                         "trained for another base model") from None


def _rewrites_base(adapter_dir: Path) -> bool:
    """Whether PEFT rewrites the base weights in place when it builds this adapter's layers."""
    try:
        init = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8")).get("init_lora_weights")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(init, str) and init.lower().startswith(REWRITES_BASE)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id))
    except Exception as exc:  # no network, unknown repo, gated model...
        raise ModelError(f"student {repo_id!r}: cannot fetch from the model hub ({type(exc).__name__}); "
                         "without network, set DISTILL_STUDENT to a local model directory") from None


def _device_name(device: str) -> str:
    """`cuda` and `cuda:0` are one device (the current one): one key for the shared weights."""
    import torch

    parsed = torch.device(device)
    if parsed.type == "cuda" and parsed.index is None:
        parsed = torch.device("cuda", torch.cuda.current_device())
    return str(parsed)


# ---------------------------------------------------------------- the student

# Prompts decoding together (continuous batching, `distill.student.decode`) by default. Measured on 2
# CPU cores, the 168 held-out and general prompts of prompts/instructions at 64 tokens: 71 s at 32,
# 60 s at 64, 53 s at 96 (fixed batches through `generate`: 96 s, 74 s, 67 s), the same 168 greedy
# answers in every case. 64 keeps most of the gain at half the key/value memory of 96.
ANSWER_BATCH = 64


class Answerer:
    """What answers prompts in batches: the local `Student` and the served one
    (`distill.teachers.served_student.ServedStudent`). Each yields batches from `iter_answers`;
    `answer` collects them in input order."""

    def iter_answers(self, prompts: Sequence[Prompt], params: GenerationParams, *, batch_size: int = ANSWER_BATCH,
                     skip: frozenset[tuple[str, int]] = frozenset(), progress: bool = False) -> Iterator[list[Answer]]:
        raise NotImplementedError

    def answer(self, prompts: Sequence[Prompt | str], params: GenerationParams | None = None, *,
               batch_size: int = ANSWER_BATCH, progress: bool = False) -> list[Answer]:
        """Answer every prompt (`params.samples` times each); results in input order."""
        items = as_prompts(prompts)
        params = params or GenerationParams()
        return in_order(self.iter_answers(items, params, batch_size=batch_size, progress=progress), items, params)


class Student(Answerer):
    """A loaded causal LM plus tokenizer, able to answer prompts in batches."""

    def __init__(self, model: Any, tokenizer: Any, identity: ModelIdentity):
        self.model = model
        self.tokenizer = tokenizer
        self.identity = identity
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = sorted({i for i in (tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None))
                               if isinstance(i, int)})

    @classmethod
    def load(cls, source: str | os.PathLike[str] | None = None, *, adapter: str | os.PathLike[str] | None = None,
             device: str | None = None, dtype: str | None = None, private: bool = False) -> "Student":
        """Load the student from `source`, else `$DISTILL_STUDENT`, else the embedded default;
        with `adapter`, a PEFT LoRA adapter directory is applied on top.

        The base weights come from `SHARED_WEIGHTS` (read from disk once per process); `private`
        reads a copy of its own instead, for code that changes the weights in place (merging)."""
        import torch
        from transformers import AutoTokenizer

        directory, identity = model_identity(source, adapter)
        _quiet_transformers()
        device = _device_name(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                       None: torch.bfloat16 if device.startswith("cuda") else torch.float32}.get(dtype)
        if torch_dtype is None:
            raise ConfigError(f"dtype {dtype!r}: expected float32, bfloat16 or float16")
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory)
        except Exception as exc:  # OSError, ValueError... all mean "cannot load"
            raise ModelError(f"{directory}: cannot load the tokenizer ({type(exc).__name__}: {exc}); the model "
                             "directory may be incomplete (for the embedded default run `distill convert --force`)") from None
        private = private or (adapter is not None and _rewrites_base(Path(adapter)))
        model = (SHARED_WEIGHTS.read(directory, torch_dtype, device) if private
                 else SHARED_WEIGHTS.view(directory, identity.weights_sha256, torch_dtype, device))
        if adapter is not None:
            model = _apply_adapter(model, Path(adapter)).to(device).eval()
        return cls(model, tokenizer, identity)

    @staticmethod
    def release() -> None:
        """Drop the process's shared base weights (a long-lived process switching students calls this)."""
        SHARED_WEIGHTS.release()

    @property
    def device(self) -> Any:
        return self.model.device

    @property
    def context_window(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def render(self, messages: Sequence[Any]) -> str:
        """The chat rendered with the model's own template, ending with the assistant's turn opener."""
        return self.tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                                  add_generation_prompt=True)

    def encode(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Each prompt's token ids, as the model reads it (rendered with the chat template)."""
        return self.tokenizer([self.render(p.messages) for p in prompts], add_special_tokens=False)["input_ids"]

    def check_lengths(self, prompts: Sequence[Prompt], max_new_tokens: int) -> list[list[int]]:
        """Each prompt's token ids; InputError naming every prompt that cannot fit the context."""
        encoded = self.encode(prompts)
        limit = self.context_window - max_new_tokens
        too_long = [(p.id, len(ids)) for p, ids in zip(prompts, encoded) if len(ids) > limit]
        if too_long:
            shown = ", ".join(f"{pid} ({n} tokens)" for pid, n in too_long[:10])
            raise InputError(f"{len(too_long)} prompt(s) do not fit the context window of {self.context_window} "
                             f"tokens with max_new_tokens={max_new_tokens} (limit {limit} prompt tokens): {shown}. "
                             "Shorten them or lower --max-new-tokens.")
        return encoded

    def iter_answers(self, prompts: Sequence[Prompt], params: GenerationParams, *, batch_size: int = ANSWER_BATCH,
                     skip: frozenset[tuple[str, int]] = frozenset(), progress: bool = False) -> Iterator[list[Answer]]:
        """Yield answers `batch_size` at a time as they are finished, `batch_size` generated together
        (continuous batching, `distill.student.decode`), longest prompts first; (prompt id, sample)
        pairs in `skip` are not redone."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        encoded = dict(zip((p.id for p in prompts), self.check_lengths(prompts, params.max_new_tokens)))
        work = [(p, k) for p in prompts for k in range(params.samples) if (p.id, k) not in skip]
        work.sort(key=lambda item: (-len(encoded[item[0].id]), item[0].id, item[1]))
        bar = progress_bar(len(work), enabled=progress)
        started, produced, ready = time.monotonic(), 0, []
        try:
            for answer in self._generate(work, [encoded[p.id] for p, _ in work], params, batch_size):
                ready.append(answer)
                produced += answer.completion_tokens
                bar.update(1)
                bar.set_postfix_str(f"{produced / max(time.monotonic() - started, 1e-9):.1f} tok/s", refresh=False)
                if len(ready) == batch_size:
                    yield ready
                    ready = []
            if ready:
                yield ready
        finally:
            bar.close()

    def _generate(self, work: list[tuple[Prompt, int]], encoded: list[list[int]], params: GenerationParams,
                  slots: int) -> Iterator[Answer]:
        """Each (prompt, sample) of `work` (its prompt's token ids in `encoded`) answered, as it is
        finished, `slots` decoding at a time."""
        import torch

        from distill.student.decode import Sampling, stream
        from distill.student.rejection import FAILED, StopFailing

        if not work:
            return
        sampling = Sampling() if params.greedy else Sampling(params.temperature, params.top_p)
        if not params.greedy:
            torch.manual_seed(int(content_hash([params.seed, [(p.id, k) for p, k in work]]), 16) % (2**63))
        rules = None
        if params.stop_failing:
            rules = StopFailing(sampling, self.eos_ids, self.tokenizer,
                                {i: p.checks for i, (p, _) in enumerate(work) if p.checks})
        with torch.inference_mode():
            for i, ids in stream(self.model, encoded, slots=slots, max_new_tokens=params.max_new_tokens,
                                 eos_ids=self.eos_ids, pad_id=self.tokenizer.pad_token_id, sampling=sampling,
                                 rules=rules):
                prompt, sample = work[i]
                failed = rules is not None and i in rules.failed
                yield self._to_answer(prompt, sample, ids, len(encoded[i]), params, FAILED if failed else None)

    def _to_answer(self, prompt: Prompt, sample: int, ids: list[int], prompt_tokens: int,
                   params: GenerationParams, reason: str | None = None) -> Answer:
        stop = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        kept = ids if stop is None else ids[:stop]
        text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
        return Answer(prompt=prompt, sample=sample, text=text, prompt_tokens=int(prompt_tokens),
                      completion_tokens=len(kept) + (stop is not None), model=self.identity, params=params,
                      finish_reason=reason or ("length" if stop is None else "stop"))


def head_logits(model: Any, input_ids: Any, attention_mask: Any, picked: Any) -> Any:
    """Logits only at the `picked` positions (those whose next token is a completion label).

    The backbone runs once over the batch; the vocabulary projection runs only where a loss is
    taken, which on CPU saves most of the output head's cost (prompt tokens are about half of
    every example). `model` is a causal LM, with or without a PEFT wrapper.

    The projection runs in float32 even under bfloat16 autocast: a bfloat16 logit near 20 is only
    known to 0.125, which puts a floor of noise under every loss that compares distributions (the
    on-policy reverse KL, DPO's log-prob margins). Measured on an AVX512-BF16 CPU: with bfloat16
    logits the on-policy learning test reached 42% held out (answers repeating "Final answer: X"
    without stopping), with float32 logits 100%, as in float32 throughout.
    """
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    head, states = base.get_output_embeddings(), hidden[:, :-1][picked].float()
    with torch.autocast(device_type=states.device.type, enabled=False):
        if head.weight.dtype == torch.float32:
            return head(states)
        return torch.nn.functional.linear(states, head.weight.float())  # bfloat16 weights (a GPU)


def _quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and advisory warnings; our own bars remain."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def as_prompts(prompts: Sequence[Prompt | str]) -> list[Prompt]:
    """Prompts as given, a bare string made a Prompt (its id from its content)."""
    return [p if isinstance(p, Prompt) else Prompt.from_text(p) for p in prompts]


def in_order(batches: Iterable[list[Answer]], prompts: Sequence[Prompt], params: GenerationParams) -> list[Answer]:
    """The answers of `batches` (in whatever order they were produced) in input order: prompt by
    prompt, sample by sample. Every answerer's `answer` (local or served) returns them so."""
    order = {(p.id, k): i for i, (p, k) in enumerate((p, k) for p in prompts for k in range(params.samples))}
    out: list[Answer | None] = [None] * len(order)
    for batch in batches:
        for a in batch:
            out[order[(a.prompt.id, a.sample)]] = a
    return [a for a in out if a is not None]


def progress_bar(total: int, *, enabled: bool) -> Any:
    """The `answer` progress bar (rows), shared by the local and the served student."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="row", desc="answer", disable=not enabled, dynamic_ncols=True)
