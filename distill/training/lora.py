"""The model being trained: a fresh LoRA adapter on the base student, and its completion-only loss.

The loss module runs the backbone once and projects onto the vocabulary only at completion
positions (`distill.training.examples.head_logits`); with `kl_weight` it adds KL(adapter || base),
the base being the same network with the adapter switched off (no second copy in memory).
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

from distill.errors import ConfigError
from distill.training.config import TrainConfig
from distill.training.examples import IGNORE, head_logits, summed_kl


def linear_layer_names(model: Any) -> tuple[str, ...]:
    """Leaf names of every linear layer except the output head, as named in the base model."""
    import torch

    head = model.get_output_embeddings()
    return tuple(sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear) and module is not head}))


def add_lora(model: Any, config: TrainConfig, targets: Sequence[str]) -> Any:
    """Wrap the base model with a fresh LoRA adapter (seeded), every other weight frozen."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=list(targets),
                      bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:  # PEFT: a target module that the model does not have
        raise ConfigError(f"training option target_modules {list(targets)}: {exc}") from None


def completion_loss_module(peft_model: Any, kl_weight: float) -> Any:
    """An nn.Module whose forward returns the completion-only loss of a batch (what DDP wraps);
    logits only at completion positions (`head_logits`)."""
    import torch
    import torch.nn.functional as F

    class _CompletionLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = peft_model

        def _logits(self, input_ids: Any, attention_mask: Any, picked: Any) -> Any:
            return head_logits(self.model, input_ids, attention_mask, picked).float()

        def forward(self, input_ids: Any, attention_mask: Any, labels: Any) -> dict[str, Any]:
            targets = labels[:, 1:]
            picked = targets != IGNORE
            logits = self._logits(input_ids, attention_mask, picked)
            nll = F.cross_entropy(logits, targets[picked], reduction="sum")
            out = {"nll": nll, "tokens": picked.sum(), "loss": nll}
            if kl_weight > 0:
                with torch.no_grad(), self.model.disable_adapter():
                    base_logits = self._logits(input_ids, attention_mask, picked)
                kl = summed_kl(logits, base_logits)  # KL(trained || base)
                out["kl"] = kl
                out["loss"] = nll + kl_weight * kl
            return out

    return _CompletionLoss()


def sequence_logps_module(peft_model: Any) -> Any:
    """An nn.Module whose forward returns each row's summed log-probability of its labelled tokens and
    how many there are ([rows] each): what preference losses compare (what DDP wraps); logits only
    at completion positions (`head_logits`)."""
    import torch
    import torch.nn.functional as F

    class _SequenceLogps(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = peft_model

        def forward(self, input_ids: Any, attention_mask: Any, labels: Any) -> tuple[Any, Any]:
            targets = labels[:, 1:]
            picked = targets != IGNORE
            logits = head_logits(self.model, input_ids, attention_mask, picked).float()
            token_logps = -F.cross_entropy(logits, targets[picked], reduction="none")
            rows = picked.nonzero()[:, 0]  # the row of each picked position, in the order head_logits keeps
            logps = token_logps.new_zeros(labels.shape[0]).index_add(0, rows, token_logps)
            return logps, picked.sum(dim=1)

    return _SequenceLogps()


def adapter_state_sha256(peft_model: Any) -> str:
    """A hash of the adapter's weights as this process holds them (ranks must agree)."""
    from peft import get_peft_model_state_dict

    digest = hashlib.sha256()
    for name, tensor in sorted(get_peft_model_state_dict(peft_model).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
