"""An Ollama Modelfile for an exported GGUF: FROM, ADAPTER, TEMPLATE and PARAMETER stop.

Ollama renders prompts with Go templates, not the Jinja template a transformers tokenizer carries,
so the TEMPLATE is rebuilt here. It is built only for the ChatML layout (`<|im_start|>role\\n
content<|im_end|>\\n` per message, SmolLM2's and Qwen's), and only after the model's own template
has been rendered on probe chats and found to produce exactly that layout, including a default
system message it inserts when the chat has none. For any other template the Modelfile has no
TEMPLATE line, and Ollama falls back to the chat template inside the GGUF file.

The stop words are the texts of the end-of-sequence tokens the tokenizer and the model config name,
so Ollama stops where transformers' generation stops.
"""

from __future__ import annotations

from typing import Any, Sequence

from distill.errors import ModelError

MODELFILE = "Modelfile"
START, END = "<|im_start|>", "<|im_end|>"
_PROBE_SYSTEM, _PROBE_TURNS = "probe system text", ("probe user one", "probe assistant one", "probe user two")


def chatml_template(tokenizer: Any) -> str | None:
    """A Go template for Ollama equivalent to the tokenizer's chat template, when that template is
    ChatML (with or without a default system message); None when it is anything else."""
    default_system = _chatml_default_system(tokenizer)
    if default_system is None:
        return None
    turn = f"{START}{{{{ $m.Role }}}}\n{{{{ $m.Content }}}}{END}\n"
    system = ("" if not default_system else
              f'{{{{ if and (eq $i 0) (ne $m.Role "system") }}}}{START}system\n{default_system}{END}\n{{{{ end }}}}')
    return f"{{{{- range $i, $m := .Messages }}}}{system}{turn}{{{{ end }}}}{START}assistant\n"


def _chatml_default_system(tokenizer: Any) -> str | None:
    """The system message the template inserts when a chat has none ("" when it inserts none), or
    None when the template does not render ChatML."""
    roles = ("user", "assistant", "user")
    chat = [{"role": r, "content": c} for r, c in zip(roles, _PROBE_TURNS)]
    with_system = [{"role": "system", "content": _PROBE_SYSTEM}, chat[0]]
    try:
        plain = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        given = tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
    except Exception:  # no template, or a template that refuses the probe chat
        return None
    if given != _chatml(with_system) + f"{START}assistant\n":
        return None
    expected = _chatml(chat) + f"{START}assistant\n"
    if not plain.endswith(expected):
        return None
    prefix = plain[: -len(expected)]
    if not prefix:
        return ""
    opener, closer = f"{START}system\n", f"{END}\n"
    inner = prefix[len(opener): -len(closer)]
    if not (prefix.startswith(opener) and prefix.endswith(closer)) or START in inner or END in inner:
        return None
    return inner


def _chatml(messages: Sequence[dict[str, str]]) -> str:
    return "".join(f"{START}{m['role']}\n{m['content']}{END}\n" for m in messages)


def stop_words(tokenizer: Any, config: Any, generation_config: Any = None) -> list[str]:
    """The texts of every end-of-sequence token id the tokenizer, the config and the generation
    config name, in id order."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None),
                   getattr(generation_config, "eos_token_id", None)):
        ids.update(i for i in (source if isinstance(source, (list, tuple)) else [source]) if isinstance(i, int))
    return [tokenizer.convert_ids_to_tokens(i) for i in sorted(ids)]


def modelfile(model_file: str, *, template: str | None, stops: Sequence[str], adapter_file: str | None = None) -> str:
    """The Modelfile text: FROM the GGUF beside it, ADAPTER (a LoRA GGUF) when given, the TEMPLATE when
    known, one PARAMETER stop per stop word."""
    lines = [f"FROM ./{model_file}"]
    if adapter_file:
        lines.append(f"ADAPTER ./{adapter_file}")
    if template is not None:
        if '"""' in template:
            raise ModelError('the chat template holds """, which a Modelfile TEMPLATE cannot quote; '
                             "write the Modelfile's TEMPLATE by hand")
        lines.append(f'TEMPLATE """{template}"""')
    for stop in stops:
        if '"' in stop or "\n" in stop:
            raise ModelError(f"stop token {stop!r} cannot be written as a Modelfile PARAMETER; edit the Modelfile by hand")
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"
