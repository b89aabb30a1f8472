"""Writing a transformers Llama model, or a LoRA adapter for one, as a GGUF file llama.cpp reads.

A model file carries the hyperparameters (`llama.*`), the whole tokenizer (`tokenizer.ggml.*`: the
byte-level BPE vocabulary, token types, merges, the BOS/EOS/padding ids) and the chat template, so
llama.cpp, llama-server and Ollama need nothing else. An adapter file (`general.type = adapter`)
holds only the LoRA matrices, `<tensor>.lora_a` and `<tensor>.lora_b`, for `llama-server --lora`
and Ollama's ADAPTER.

Two layout facts decide whether the file is right, and both are easy to get silently wrong:
- GGUF names tensors its own way (`blk.0.attn_q.weight`); the `gguf` package's tensor map for the
  llama architecture gives each transformers name its GGUF name.
- llama.cpp applies rotary embeddings to adjacent pairs of a head's dimensions, transformers to the
  first and second halves of the head. So the rows of the query and key projections are reordered
  head by head (`rotary_rows`); readers of GGUF (transformers' `gguf_file=` loader among them)
  undo it. A LoRA update of q/k reorders the same rows, which are the rows of its B matrix.

Precision: `f32`, `f16` (matrices in half precision, norms in f32, as llama.cpp's own converter
does) or `q8_0` (matrices in blocks of 32 int8 values with an f16 scale; a matrix whose rows do not
split into blocks stays f16).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

from distill.errors import ModelError

ARCH = "llama"
GGUF_TYPES = ("f16", "q8_0", "f32")
SUPPORTED = ("LlamaForCausalLM",)
# llama.cpp's pre-tokenizer name of known vocabularies, by `vocabulary_sha256`: SmolLM2's, as the
# embedded student's shipped GGUF names it.
KNOWN_PRE = {"bee029ab6e02e20cf941d5a91d9ecc5d6eedadd85ff5aa1abb792a3db7f5c345": "smollm"}


@dataclass(frozen=True)
class LlamaShape:
    """What the GGUF header and the q/k reordering need to know of a Llama config."""

    blocks: int
    heads: int
    kv_heads: int
    hidden: int
    ffn: int
    head_dim: int
    context: int
    vocab: int
    rope_theta: float
    rms_eps: float
    tied: bool

    @classmethod
    def of(cls, config: Any) -> "LlamaShape":
        """The shape of a transformers config; ModelError for a model this writer cannot express."""
        arch = (getattr(config, "architectures", None) or ["?"])[0]
        if arch not in SUPPORTED:
            raise ModelError(f"{arch}: GGUF export supports {', '.join(SUPPORTED)} models only; export this model "
                             "with --format merged and convert it with llama.cpp's convert_hf_to_gguf.py")
        rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ModelError(f"rope type {rope.get('rope_type', rope.get('type'))!r}: only plain rotary embeddings "
                             "are written to GGUF here; export with --format merged and use llama.cpp's converter")
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            raise ModelError("a Llama with bias terms: GGUF export writes bias-free Llama models only; "
                             "export with --format merged")
        heads = int(config.num_attention_heads)
        return cls(blocks=int(config.num_hidden_layers), heads=heads,
                   kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
                   hidden=int(config.hidden_size), ffn=int(config.intermediate_size),
                   head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
                   context=int(config.max_position_embeddings), vocab=int(config.vocab_size),
                   rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
                   rms_eps=float(config.rms_norm_eps), tied=bool(getattr(config, "tie_word_embeddings", False)))


# ---------------------------------------------------------------- tensors

def gguf_name(hf_name: str, shape: LlamaShape) -> str:
    """The GGUF name of a transformers tensor (`model.layers.0.self_attn.q_proj.weight` ->
    `blk.0.attn_q.weight`), from the `gguf` package's tensor map for llama."""
    found = _tensor_map(shape.blocks).get_name(hf_name, try_suffixes=(".weight",))
    if found is None:
        raise ModelError(f"{hf_name}: no GGUF name for this tensor in the llama architecture; the model is not "
                         "a plain Llama (export with --format merged)")
    return found


@lru_cache(maxsize=4)
def _tensor_map(blocks: int) -> Any:
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)


def rotary_rows(weight: Any, gguf_tensor: str, shape: LlamaShape) -> Any:
    """`weight` (rows = output features) with the rows of a query or key projection reordered from
    transformers' half-split rotary layout to llama.cpp's interleaved one; other tensors unchanged.
    Within each head, row j of the first half and row j of the second half become rows 2j and 2j+1."""
    if ".attn_q." in gguf_tensor:
        heads = shape.heads
    elif ".attn_k." in gguf_tensor:
        heads = shape.kv_heads
    else:
        return weight
    rest = weight.shape[1:]
    halves = weight.reshape(heads, 2, weight.shape[0] // heads // 2, *rest)  # head, half, row in half
    return halves.swapaxes(1, 2).reshape(weight.shape)


def encoded(array: Any, gguf_type: str) -> tuple[Any, Any]:
    """(data, raw GGML type or None) of a float32 array stored as `gguf_type`: vectors stay f32,
    matrices become f16 or q8_0 (f16 where rows do not split into q8_0 blocks)."""
    import gguf
    import numpy as np

    if gguf_type not in GGUF_TYPES:
        raise ModelError(f"GGUF type {gguf_type!r}: expected one of {', '.join(GGUF_TYPES)}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim < 2 or gguf_type == "f32":
        return array, None
    q8 = gguf.GGMLQuantizationType.Q8_0
    if gguf_type == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[q8][0] == 0:
        return gguf.quants.quantize(array, q8), q8
    return array.astype(np.float16), None


def file_type(gguf_type: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]


def model_tensors(state: Mapping[str, Any], shape: LlamaShape) -> Iterator[tuple[str, Any]]:
    """(GGUF name, float32 array in GGUF layout) for each weight of a transformers Llama state dict;
    the output head is left out when it is tied to the embeddings (llama.cpp reuses token_embd)."""
    for name, tensor in state.items():
        if shape.tied and name == "lm_head.weight":
            continue
        target = gguf_name(name, shape)
        yield target, rotary_rows(tensor.detach().float().cpu().numpy(), target, shape)


# ---------------------------------------------------------------- the tokenizer

@dataclass(frozen=True)
class TokenizerMeta:
    """The tokenizer as GGUF's `tokenizer.ggml.*` keys hold it."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    chat_template: str | None

    @classmethod
    def of(cls, tokenizer: Any, vocab_size: int) -> "TokenizerMeta":
        """Read a fast (tokenizers-backed) byte-level BPE tokenizer; ModelError for other kinds."""
        import gguf

        spec = _tokenizer_json(tokenizer)
        if spec.get("model", {}).get("type") != "BPE" or not _byte_level(spec):
            raise ModelError("GGUF export writes byte-level BPE (GPT-2 style) tokenizers only; this model's "
                             "tokenizer is another kind: export with --format merged and use llama.cpp's converter")
        by_id = {i: t for t, i in spec["model"]["vocab"].items()}
        added = {a["id"]: a for a in spec.get("added_tokens", [])}
        by_id.update({i: a["content"] for i, a in added.items()})
        if max(by_id) >= vocab_size:
            raise ModelError(f"the tokenizer has token id {max(by_id)} but the model's vocabulary holds {vocab_size}")
        tokens, types = [], []
        for i in range(vocab_size):
            if i not in by_id:
                tokens.append(f"[PAD{i}]")
                types.append(gguf.TokenType.UNUSED)
            else:
                tokens.append(by_id[i])
                types.append(gguf.TokenType.NORMAL if i not in added else
                             gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a")["input_ids"]
        ids = {kind: getattr(tokenizer, f"{kind}_token_id", None) for kind in ("bos", "eos", "unk", "pad")}
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        return cls(tokens=tokens, types=[int(t) for t in types], merges=merges, pre=_pre_tokenizer(tokens),
                   special_ids={k: int(v) for k, v in ids.items() if isinstance(v, int)},
                   add_bos=len(full) > len(bare) and full[0] == ids["bos"],
                   add_eos=len(full) > len(bare) and full[-1] == ids["eos"],
                   add_space_prefix=bool(_byte_level(spec).get("add_prefix_space", False)), chat_template=template)


def _tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("GGUF export needs a fast tokenizer (a tokenizer.json); this model has a slow one only")
    return json.loads(backend.to_str())


def _byte_level(spec: dict[str, Any]) -> dict[str, Any]:
    """The ByteLevel pre-tokenizer step of a tokenizer.json (empty when there is none)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return next((s for s in steps if s.get("type") == "ByteLevel"), {})


def vocabulary_sha256(tokens: list[str]) -> str:
    """A fingerprint of a vocabulary (its tokens in id order), the key of KNOWN_PRE."""
    return hashlib.sha256(json.dumps(tokens, ensure_ascii=False).encode("utf-8")).hexdigest()


def _pre_tokenizer(tokens: list[str]) -> str:
    """llama.cpp's name for the splitting rule applied before BPE (digits, spaces, punctuation). A
    tokenizer.json does not name it, so known vocabularies are looked up by fingerprint (the names
    their own GGUF files carry); any other byte-level BPE gets GPT-2's rule."""
    return KNOWN_PRE.get(vocabulary_sha256(tokens), "gpt-2")


# ---------------------------------------------------------------- the files

def write_model(path: Path, state: Mapping[str, Any], config: Any, tokenizer: Any, *, gguf_type: str,
                name: str) -> None:
    """Write a whole model (weights, hyperparameters, tokenizer, chat template) to the GGUF file `path`."""
    import gguf

    shape = LlamaShape.of(config)
    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    _add_hparams(writer, shape)
    writer.add_file_type(file_type(gguf_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, TokenizerMeta.of(tokenizer, shape.vocab))
    for target, array in model_tensors(state, shape):
        data, raw = encoded(array, gguf_type)
        writer.add_tensor(target, data, raw_dtype=raw)
    _finish(writer)


def write_lora(path: Path, adapter_dir: Path, config: Any, *, gguf_type: str, name: str) -> None:
    """Write the PEFT LoRA adapter in `adapter_dir` as a llama.cpp adapter GGUF for the base `config`."""
    import gguf

    shape = LlamaShape.of(config)
    settings = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    alpha = float(settings.get("lora_alpha") or settings.get("r") or 8)
    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for target, lora_a, lora_b in lora_pairs(adapter_dir, settings, shape):
        for suffix, array in ((".lora_a", lora_a), (".lora_b", lora_b)):
            data, raw = encoded(array, gguf_type)
            writer.add_tensor(target + suffix, data, raw_dtype=raw)
    _finish(writer)


def lora_pairs(adapter_dir: Path, settings: dict[str, Any], shape: LlamaShape) -> Iterator[tuple[str, Any, Any]]:
    """(GGUF weight name, A, B) per adapted matrix, as llama.cpp applies them: W + alpha/r * B @ A, with
    A of shape (r, in) and B of shape (out, r); B's rows follow the q/k reordering of W. A PEFT scale
    that differs from alpha/r (rsLoRA) is folded into B."""
    import numpy as np
    from safetensors.numpy import load_file

    if settings.get("use_dora") or settings.get("alpha_pattern"):
        raise ModelError(f"{adapter_dir}: DoRA adapters and per-module alpha patterns have no llama.cpp LoRA "
                         "form; export the merged model (--format gguf) instead")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{weights}: missing; give an adapter directory written by `distill train` (PEFT safetensors)")
    tensors = load_file(weights)
    alpha = float(settings.get("lora_alpha") or settings.get("r") or 8)
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        module, dot, part = key.removeprefix("base_model.model.").rpartition(".lora_")
        if not dot or part not in ("A.weight", "B.weight"):
            raise ModelError(f"{weights}: tensor {key} is not a LoRA A/B matrix (trained embeddings or saved "
                             "modules); llama.cpp adapters hold LoRA matrices only, export --format gguf instead")
        pairs.setdefault(module + ".weight", {})[part[0]] = value.astype(np.float32)
    for hf_name, pair in sorted(pairs.items()):
        lora_a, lora_b = pair["A"], pair["B"]
        rank = lora_a.shape[0]
        peft_scale = alpha / (rank ** 0.5 if settings.get("use_rslora") else rank)
        target = gguf_name(hf_name, shape)
        yield target, lora_a, rotary_rows(lora_b * (peft_scale / (alpha / rank)), target, shape)


def _add_hparams(writer: Any, shape: LlamaShape) -> None:
    writer.add_block_count(shape.blocks)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_vocab_size(shape.vocab)
    writer.add_rope_dimension_count(shape.head_dim)
    if shape.head_dim * shape.heads != shape.hidden:
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)


def _add_tokenizer(writer: Any, meta: TokenizerMeta) -> None:
    writer.add_add_space_prefix(meta.add_space_prefix)
    writer.add_add_bos_token(meta.add_bos)
    if meta.add_eos:
        writer.add_add_eos_token(True)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(meta.pre)
    writer.add_token_list(meta.tokens)
    writer.add_token_types(meta.types)
    writer.add_token_merges(meta.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id}
    for kind, token_id in meta.special_ids.items():
        adders[kind](token_id)
    if meta.chat_template:
        writer.add_chat_template(meta.chat_template)


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
