"""Training examples: chats with a completion to imitate, their tokens and labels, and a model's loss on them.

An `Example` is a chat prompt (ending in a user turn) plus the assistant's completion, read from
TRL's conversational formats (`sft.jsonl`, replay files, reviewed rows). `encode` renders it with
the student's own chat template exactly as at inference and labels the completion only, by
position, so the end-of-turn `<|im_end|>` stays a label although this tokenizer pads with it.

The trainer fits these labels and the evaluation gate measures them (held-out fidelity, forgetting
on replay, KL from the current model) with the same rendering and the same loss: one definition of
"the loss on an example", here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from distill.config import default_of
from distill.errors import ModelError
from distill.records.ids import content_hash
from distill.records.jsonl import read_rows
from distill.records.prompts import Prompt, parse_messages, parse_prompt
from distill.student.model import GenerationParams, Student, head_logits

IGNORE = -100  # label of a position that carries no loss (prompt tokens and padding)


# ---------------------------------------------------------------- examples

@dataclass(frozen=True)
class Example:
    """One training example: a chat prompt (ending in a user turn) and the assistant's completion."""

    id: str
    prompt: tuple[Mapping[str, str], ...]
    completion: str
    source: str = "train"  # "train" or "replay"
    ends: bool = True
    """Whether the completion is a whole turn. False for the base student's replay answer cut off at
    the token limit: its text is trained, its end-of-turn token is not (see `encode`)."""

    def to_row(self) -> dict[str, Any]:
        row = {"id": self.id, "prompt": [dict(m) for m in self.prompt],
               "completion": [{"role": "assistant", "content": self.completion}]}
        return row if self.ends else {**row, "ends": False}


def parse_example(obj: Any, source: str = "train") -> Example:
    """Validate one decoded row in TRL's conversational formats; ValueError naming the field.

    Accepted: {"prompt": [chat ending in a user turn] or "text", "completion": [{"role": "assistant",
    "content": ...}] or "text"} (prompt-completion), or {"messages": [chat ending in the assistant's
    turn]}. An optional "id" (else a stable hash of the content) and "meta" are kept or ignored;
    `"ends": false` marks a completion cut off before its turn ended (trained without end-of-turn).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if ("messages" in obj) == ("completion" in obj):
        raise ValueError("give either 'prompt' and 'completion' (prompt-completion) or 'messages' "
                         "(a chat ending in the assistant's turn)")
    if "messages" in obj:
        prompt, completion = _split_messages(obj["messages"])
    else:
        if "prompt" not in obj:
            raise ValueError("field 'prompt': missing (the chat the completion answers)")
        prompt, completion = parse_prompt_field(obj["prompt"]), parse_completion(obj["completion"])
    raw_id = obj.get("id")
    if raw_id is None:
        eid = "x-" + content_hash({"prompt": [dict(m) for m in prompt], "completion": completion})
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id).strip():
        eid = str(raw_id)
    else:
        raise ValueError(f"field 'id': expected a non-empty string or integer, got {raw_id!r}")
    ends = obj.get("ends", True)
    if not isinstance(ends, bool):
        raise ValueError(f"field 'ends': expected true or false, got {ends!r}")
    return Example(id=eid, prompt=prompt, completion=completion, source=source, ends=ends)


def parse_prompt_field(value: Any) -> tuple[Mapping[str, str], ...]:
    """A row's "prompt": a chat ending in a user turn, or a plain text (one user turn)."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    try:
        return parse_messages(value)
    except ValueError as exc:
        raise ValueError(str(exc).replace("field 'messages", "field 'prompt")) from None


def parse_completion(value: Any, name: str = "completion") -> str:
    """A row's assistant reply (field `name`): one assistant message, or a plain text."""
    if isinstance(value, str):
        value = [{"role": "assistant", "content": value}]
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        raise ValueError(f"field '{name}': expected one assistant message, [{{\"role\": \"assistant\", "
                         "\"content\": \"...\"}] (multi-turn completions are not supported)")
    role, content = value[0].get("role"), value[0].get("content")
    if role != "assistant":
        raise ValueError(f"field '{name}[0].role': expected 'assistant', got {role!r}")
    if not isinstance(content, str) or not content.strip():
        raise ValueError(f"field '{name}[0].content': expected a non-empty string")
    return content


def _split_messages(value: Any) -> tuple[tuple[Mapping[str, str], ...], str]:
    if not isinstance(value, list) or len(value) < 2:
        raise ValueError("field 'messages': expected a chat of at least a user turn and the assistant's reply")
    last = value[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise ValueError("field 'messages': the last message must be the assistant's reply (role 'assistant'); "
                         "a chat ending in a user turn is a prompt, not a training example")
    content = last.get("content")
    if not isinstance(content, str) or not content.strip():
        raise ValueError(f"field 'messages[{len(value) - 1}].content': expected a non-empty string")
    return parse_messages(value[:-1]), content


EXAMPLE_ROW = (', e.g. {"prompt": [{"role": "user", "content": "Hi"}], '
               '"completion": [{"role": "assistant", "content": "Hello!"}]}')


def read_examples(path: str | os.PathLike[str], source: str = "train") -> list[Example]:
    """Read and validate a whole dataset file; every bad line is reported as FILE:LINE in one InputError."""
    return read_rows(path, lambda obj: parse_example(obj, source), example=EXAMPLE_ROW)


def read_replay(path: str | os.PathLike[str]) -> tuple[list[Example], list[Prompt]]:
    """A replay file: chat examples (used as they are) and/or prompts (the student will answer them)."""
    rows = read_rows(path, lambda obj: parse_prompt(obj) if _is_prompt_row(obj) else parse_example(obj, "replay"),
                     example=EXAMPLE_ROW)
    return [r for r in rows if isinstance(r, Example)], [r for r in rows if isinstance(r, Prompt)]


def _is_prompt_row(obj: Any) -> bool:
    """A row with nothing to imitate yet: no completion, and no chat ending in the assistant's turn."""
    if not isinstance(obj, dict) or "completion" in obj:
        return False
    messages = obj.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return messages[-1].get("role") != "assistant"
    return "prompt" in obj


def answer_replay(student: Student, prompts: Sequence[Prompt],
                  max_new_tokens: int = default_of(GenerationParams, "max_new_tokens")) -> list[Example]:
    """The student's own greedy answers to general prompts, as replay examples (`replay_examples`)."""
    answers = student.answer(prompts, GenerationParams(max_new_tokens=max_new_tokens), batch_size=16)
    return replay_examples((a.prompt.id, a.prompt.messages, a.text, a.finish_reason) for a in answers)


def replay_examples(answers: Iterable[tuple[str, Sequence[Mapping[str, str]], str, str | None]]) -> list[Example]:
    """Replay examples from (id, prompt chat, answer text, finish reason) of a student's own answers.

    An answer cut off by the token limit (finish reason other than "stop") is kept with `ends=False`:
    its text is the student's own and is trained, but not an end-of-turn token where it was cut,
    which would teach the model to stop mid-sentence. Keeping them matters: dropping them left only
    the student's short answers as replay, so replay itself taught it to answer plain questions
    briefly, and the general-knowledge answers it lost were short ones (measured in bench/learning.py,
    see the README). A blank answer teaches nothing and is dropped.
    """
    return [Example(id=eid, prompt=tuple(messages), completion=text, source="replay", ends=finish_reason == "stop")
            for eid, messages, text, finish_reason in answers if text.strip()]


# ---------------------------------------------------------------- tokens

@dataclass(frozen=True)
class Encoded:
    """An example as token ids, with labels IGNORE on the prompt."""

    id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    source: str

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def completion_tokens(self) -> int:
        """Positions that carry loss: each completion token is predicted from the one before it."""
        return sum(label != IGNORE for label in self.labels[1:])


def encode(example: Example, student: Student) -> Encoded:
    """Render with the student's own chat template, exactly as at inference; loss on the completion.

    The prompt is `student.render()` (what generation starts from) tokenized alone. The completion is
    the template's text after it, tokenized alone, up to and including the first end-of-turn token:
    the tokens the student emits before it stops. Nothing after that token is trained. A completion
    that did not end its turn (`example.ends` False) is trained up to, not including, that token.
    """
    tokenizer = student.tokenizer
    prompt_text = student.render(example.prompt)
    full_text = tokenizer.apply_chat_template(
        [dict(m) for m in example.prompt] + [{"role": "assistant", "content": example.completion}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ModelError(f"{student.identity.path}: the chat template renders the assistant's turn differently from "
                         "its generation prompt, so the completion cannot be separated from the prompt "
                         f"(example {example.id!r})")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    stop = next((i for i, t in enumerate(completion_ids) if t in student.eos_ids), None)
    if stop is None:  # a template without an end-of-turn token: end with EOS so the model learns to stop
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    else:
        completion_ids = completion_ids[:stop + 1]
    if not example.ends:
        completion_ids = completion_ids[:-1]
    return Encoded(id=example.id, input_ids=tuple(prompt_ids + completion_ids),
                   labels=tuple([IGNORE] * len(prompt_ids) + completion_ids), source=example.source)


def encode_all(examples: Sequence[Example], student: Student, max_length: int) -> tuple[list[Encoded], list[str]]:
    """Encode every example; those longer than `max_length` tokens are dropped: (kept, dropped ids)."""
    kept: list[Encoded] = []
    dropped: list[str] = []
    for example in examples:
        encoded = encode(example, student)
        if len(encoded) <= max_length:
            kept.append(encoded)
        else:
            dropped.append(example.id)
    return kept, dropped


def completion_nll(student: Student, examples: Sequence[Example], batch_size: int = 8) -> float:
    """Mean negative log-likelihood per completion token of `examples` under `student` (no training).

    The examples are rendered and labelled exactly as for training, so this is the training loss on
    held-out data: the measure of forgetting on a replay set, and of fit on a training set.
    """
    losses = completion_losses(student, examples, batch_size)
    return sum(total for total, _ in losses) / max(sum(count for _, count in losses), 1)


def completion_losses(student: Student, examples: Sequence[Example],
                      batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed NLL, completion tokens) of each example under `student`, computed in batches.

    Right padding plus the attention mask leave each row's logits as if it ran alone, so the
    per-example values do not depend on `batch_size`, nor on which examples share a batch: the
    batches take the examples in order of length (`by_length`), and the results come back in
    the examples' order.
    """
    import torch
    import torch.nn.functional as F

    encoded = [encode(e, student) for e in examples]
    out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    with torch.inference_mode():
        for rows in by_length(encoded, batch_size):
            logits, targets, picked = completion_logits(student, [encoded[i] for i in rows])
            nll = F.cross_entropy(logits.float(), targets[picked], reduction="none")
            counts = picked.sum(dim=1).tolist()
            for i, part, n in zip(rows, nll.split(counts), counts):
                out[i] = (float(part.sum()), n)
    return out


def by_length(encoded: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    """The indices of `encoded` in batches of `batch_size`, shortest first: rows of similar length
    share a batch, so little of it is padding (measured on 176 held-out answers, a fifth less time
    for the same values than batches in input order)."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def summed_kl(logits: Any, ref_logits: Any) -> Any:
    """KL(p || q) summed over positions, where p and q are the next-token distributions of `logits`
    and `ref_logits` ([positions, vocabulary], as from `completion_logits` or `head_logits`)."""
    import torch.nn.functional as F

    logp, ref = F.log_softmax(logits.float(), dim=-1), F.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - ref)).sum()


def completion_logits(student: Student, batch: Sequence[Encoded]) -> tuple[Any, Any, Any]:
    """Logits at the completion positions of a batch (flattened, row by row), the shifted targets
    and the [rows, positions] mask of which positions those are."""
    tensors = {k: v.to(student.device) for k, v in collate(batch, student.tokenizer.pad_token_id).items()}
    targets = tensors["labels"][:, 1:]
    picked = targets != IGNORE
    return head_logits(student.model, tensors["input_ids"], tensors["attention_mask"], picked), targets, picked


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors; padding is masked out of attention and labels by position, not by id."""
    import torch

    width = max(len(e) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, :len(e)] = torch.tensor(e.input_ids)
        labels[row, :len(e)] = torch.tensor(e.labels)
        mask[row, :len(e)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
