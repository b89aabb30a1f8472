"""Early rejection: a sampled answer stops as soon as its prompt's check can no longer pass.

In self-training with no teacher, a sample that fails its prompt's `reference` is thrown away
(`distill.stages.self_training`). Measured on `make demo`'s prompts at temperature 1, most samples
fail (8% of one-word answers pass, 19% of no-comma ones), and most of those are lost within their
first tokens. `StopFailing` is the decoding loop's `Rules` for such a run: each row samples as
`Sampling` does, and ends at its end-of-turn token or at the first token after which its text
fails a check for good (`distill.checks.prefix.doomed`). Its row goes to the next sample at once.

The stopped answer is kept as it stood, with finish_reason "failed"; it fails its check as it
stands, so self-training's own run of the checks names the failure in rejected.jsonl. A sample
that passes is decoded to its end exactly as before: the check is only consulted, never used to
steer a token.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

from distill.checks.prefix import decidable, doomed
from distill.checks.reference import Check
from distill.student.decode import Sampling

FAILED = "failed"  # the finish_reason of an answer stopped because it could no longer pass its check


class StopFailing:
    """Per-row rules for `distill.student.decode.stream`: sample, and stop a row whose prefix is doomed."""

    def __init__(self, sampling: Sampling, eos_ids: Sequence[int], tokenizer: Any,
                 checks: Mapping[Hashable, tuple[Check, ...]]):
        self.sampling, self.eos, self.tokenizer = sampling, set(eos_ids), tokenizer
        self.checks = {owner: c for owner, c in checks.items() if decidable(c)}
        self.tokens: dict[Hashable, list[int]] = {}
        self.failed: set[Hashable] = set()  # the owners stopped because their prefix was doomed

    def pick(self, owners: Sequence[Hashable], logits: Any) -> Any:
        return self.sampling.pick(logits)

    def ended(self, owner: Hashable, token: int) -> bool:
        if token in self.eos:
            self.tokens.pop(owner, None)
            return True
        checks = self.checks.get(owner)
        if checks is None:
            return False
        tokens = self.tokens.setdefault(owner, [])
        tokens.append(token)
        if doomed(checks, self.tokenizer.decode(tokens, skip_special_tokens=True)) is None:
            return False
        self.failed.add(owner)
        del self.tokens[owner]
        return True
