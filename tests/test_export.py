"""`distill export`: merged model, GGUF (f16, q8_0, f32), LoRA GGUF and the Ollama Modelfile, read back.

The fast tests export the tiny random Llama (the real SmolLM2 tokenizer) with a LoRA adapter whose
B matrices are random (PEFT's init_lora_weights=False), so every adapted matrix, q and k included,
really changes. The GGUF files are read back with the `gguf` package and reloaded with transformers'
own GGUF loader, which undoes llama.cpp's q/k row order: the reload must give the merged model's
logits. The slow test does the same on the embedded SmolLM2 and compares the metadata and tensor
layout with the GGUF file SmolLM2 ships in. The llama.cpp test runs only where llama-cpp-python is
installed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from distill.cli import main

MIXED = ["Hello there, how are you today?", "List three colours.", "12 + 30 = ?"]


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter", scale=0.2)


def random_adapter(base: Path, directory: Path, *, scale: float, rank: int = 4) -> Path:
    """A PEFT LoRA adapter on every linear layer of `base` with random A and B (seeded)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * scale)
    peft_model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every format of base + adapter through the CLI, once per module: name -> output folder."""
    root = tmp_path_factory.mktemp("exports")
    runs = {
        "f16": ["--format", "gguf"], "q8_0": ["--format", "gguf", "--type", "q8_0"],
        "f32": ["--format", "gguf", "--type", "f32"], "lora": ["--format", "gguf-lora", "--type", "f32"],
        "base-f32": ["--format", "gguf", "--type", "f32", "--base-only"], "merged": ["--format", "merged"],
        "ollama": ["--format", "ollama"], "ollama-lora": ["--format", "ollama", "--lora"],
    }
    for name, flags in runs.items():
        assert main(["export", str(adapter), *flags, "-o", str(root / name), "--student", str(tiny_model_dir)]) == 0
    return {name: root / name for name in runs}


@pytest.fixture(scope="module")
def merged_model(tiny_model_dir: Path, adapter: Path) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    return with_adapter.merge_and_unload().eval()


def reader(path: Path) -> Any:
    import gguf

    return gguf.GGUFReader(path)


def tensors(gguf_reader: Any) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file, dequantized to float32, in numpy (rows, columns) order."""
    import gguf

    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(
        tuple(reversed(t.shape.tolist()))) for t in gguf_reader.tensors}


def f16_rounded(model: Any) -> Any:
    """A copy of `model` whose weights went through float16 and back, as an f16 GGUF holds them."""
    import copy

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in rounded.named_parameters():
            if param.dim() >= 2:
                param.copy_(param.half().float())
    return rounded


def test_f16_gguf_reloads_in_transformers_with_the_merged_models_logits(exported, merged_model, smollm_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = exported["f16"]
    reloaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf").eval()
    ids = smollm_tokenizer(MIXED[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
        same_weights = f16_rounded(merged_model)(input_ids=ids).logits
        full = merged_model(input_ids=ids).logits
    assert (got - same_weights).abs().max() < 1e-4  # the same numbers: names, layout and q/k order are right
    assert (got - full).abs().max() < 0.05 * full.abs().max()  # f16 rounding only
    with torch.no_grad():
        a = reloaded.generate(ids, max_new_tokens=12, do_sample=False)
        b = f16_rounded(merged_model).generate(ids, max_new_tokens=12, do_sample=False)
    assert a.tolist() == b.tolist()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="model.gguf")
    assert tokenizer.chat_template == smollm_tokenizer.chat_template
    assert tokenizer(MIXED[1])["input_ids"] == smollm_tokenizer(MIXED[1])["input_ids"]
    record = json.loads((folder / "distill-export.json").read_text())
    assert record["format"] == "gguf" and "+lora@" in record["exported_from"]["key"]


def test_gguf_metadata_carries_hyperparameters_tokenizer_template_and_stop_token(exported, smollm_tokenizer,
                                                                                 tiny_model_dir):
    import gguf

    fields = reader(exported["f16"] / "model.gguf").fields
    value = {k: f.contents() for k, f in fields.items() if k != "tokenizer.ggml.merges"}
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert value["general.architecture"] == "llama" and value["general.type"] == "model"
    assert value["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert (value["llama.block_count"], value["llama.embedding_length"], value["llama.attention.head_count"],
            value["llama.attention.head_count_kv"], value["llama.feed_forward_length"]) == (2, 64, 4, 2, 128)
    assert value["llama.rope.dimension_count"] == 16 and value["llama.vocab_size"] == config["vocab_size"]
    assert value["tokenizer.ggml.model"] == "gpt2" and value["tokenizer.ggml.pre"] == "smollm"
    assert value["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert value["tokenizer.ggml.token_type"][:3] == [gguf.TokenType.CONTROL] * 3
    assert value["tokenizer.ggml.eos_token_id"] == smollm_tokenizer.eos_token_id == 2
    assert value["tokenizer.ggml.bos_token_id"] == 1 and value["tokenizer.ggml.padding_token_id"] == 2
    assert value["tokenizer.ggml.add_bos_token"] is False
    assert value["tokenizer.chat_template"] == smollm_tokenizer.chat_template
    assert len(fields["tokenizer.ggml.merges"].data) > 40000


def test_q8_0_tensors_equal_the_f32_ones_within_quantisation_error(exported):
    import gguf

    q8, f32 = reader(exported["q8_0"] / "model.gguf"), reader(exported["f32"] / "model.gguf")
    types = {t.name: t.tensor_type for t in q8.tensors}
    assert types["token_embd.weight"] == types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert "output.weight" not in types  # tied to the embeddings, as llama.cpp expects
    exact, rounded = tensors(f32), tensors(q8)
    assert exact.keys() == rounded.keys() and len(exact) == 1 + 2 * 9 + 1
    for name, want in exact.items():
        blocks = want.reshape(-1, 32) if want.ndim == 2 else want.reshape(1, -1)
        error = np.abs(rounded[name].reshape(blocks.shape) - blocks)
        step = np.abs(blocks).max(axis=1, keepdims=True) / 127  # each block's scale, stored in f16
        bound = step * (0.5 + 127 * 2.0 ** -11) + 1e-7  # half a step, plus the scale's own f16 rounding
        assert (error <= bound).all(), name


def test_lora_gguf_is_the_difference_between_the_merged_and_the_base_gguf(exported):
    lora = reader(exported["lora"] / "adapter.gguf")
    meta = {k: f.contents() for k, f in lora.fields.items()}
    assert (meta["general.type"], meta["adapter.type"], meta["adapter.lora.alpha"]) == ("adapter", "lora", 8.0)
    assert meta["general.architecture"] == "llama"
    pairs, base, merged = tensors(lora), tensors(reader(exported["base-f32"] / "model.gguf")), \
        tensors(reader(exported["f32"] / "model.gguf"))
    shapes = {t.name: t.shape.tolist() for t in lora.tensors}
    assert shapes["blk.0.attn_q.weight.lora_a"] == [64, 4] and shapes["blk.0.attn_q.weight.lora_b"] == [4, 64]
    assert shapes["blk.1.attn_k.weight.lora_b"] == [4, 32] and shapes["blk.1.ffn_down.weight.lora_a"] == [128, 4]
    adapted = sorted(n.removesuffix(".lora_a") for n in pairs if n.endswith(".lora_a"))
    assert len(adapted) == 2 * 7
    for name in adapted:
        a, b = pairs[name + ".lora_a"], pairs[name + ".lora_b"]
        delta = meta["adapter.lora.alpha"] / a.shape[0] * b @ a  # how llama.cpp applies it
        assert np.abs(base[name] + delta - merged[name]).max() < 1e-5, name
        assert np.abs(delta).max() > 1e-2, name  # the adapter really changes every matrix


def go_render(template: str, messages: list[dict[str, str]]) -> str:
    """Render the Go template constructs a ChatML Modelfile uses (range over .Messages, `if and (eq $i 0)
    (ne $m.Role "system")`, `$m.Role`, `$m.Content`, `{{-` trimming): enough to check its output."""
    parts: list[tuple[str, str]] = []
    pos = 0
    for action in re.finditer(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", template, re.S):
        text = template[pos:action.start()]
        parts += [("text", text.rstrip() if action.group(1) else text), ("action", action.group(2))]
        assert not action.group(3), "right trimming is not used"
        pos = action.end()
    parts.append(("text", template[pos:]))
    nodes, end = _go_block(parts, 0)
    assert end == len(parts)
    return _go_eval(nodes, {".Messages": messages})


def _go_block(parts: list[tuple[str, str]], i: int) -> tuple[list[tuple[str, Any]], int]:
    nodes: list[tuple[str, Any]] = []
    while i < len(parts):
        kind, value = parts[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
        elif value == "end":
            return nodes, i
        elif value.startswith(("range ", "if ")):
            body, i = _go_block(parts, i)
            nodes.append((value, body))
        else:
            nodes.append(("field", value))
    return nodes, i


def _go_eval(nodes: list[tuple[str, Any]], scope: dict[str, Any]) -> str:
    out = ""
    for head, body in nodes:
        if head == "text":
            out += body
        elif head == "field":
            out += scope[body]
        elif head.startswith("range"):
            names = re.fullmatch(r"range \$(\w+), \$(\w+) := \.Messages", head)
            assert names, head
            for index, message in enumerate(scope[".Messages"]):
                out += _go_eval(body, {**scope, f"${names[1]}": index, f"${names[2]}.Role": message["role"],
                                       f"${names[2]}.Content": message["content"]})
        else:
            test = re.fullmatch(r'if and \(eq (\$\w+) 0\) \(ne (\$\w+\.Role) "system"\)', head)
            assert test, head
            if scope[test[1]] == 0 and scope[test[2]] != "system":
                out += _go_eval(body, scope)
    return out


def parse_modelfile(text: str) -> dict[str, list[str]]:
    """Directive -> values, with TEMPLATE \"\"\"...\"\"\" read as one value spanning lines."""
    found: dict[str, list[str]] = {}
    for match in re.finditer(r'^(FROM|ADAPTER|TEMPLATE|PARAMETER|SYSTEM) (""".*?"""|[^\n]*)$', text, re.S | re.M):
        value = match.group(2)
        found.setdefault(match.group(1), []).append(value[3:-3] if value.startswith('"""') else value)
    leftover = re.sub(r'^(FROM|ADAPTER|TEMPLATE|PARAMETER|SYSTEM) (""".*?"""|[^\n]*)$', "", text, flags=re.S | re.M)
    assert not leftover.strip(), f"unparsed Modelfile lines: {leftover!r}"
    return found


@pytest.mark.parametrize("chat", [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
])
def test_ollama_modelfile_template_renders_chats_as_the_models_own_template(exported, smollm_tokenizer, chat):
    folder = exported["ollama"]
    directives = parse_modelfile((folder / "Modelfile").read_text(encoding="utf-8"))
    assert directives["FROM"] == ["./model.gguf"] and (folder / "model.gguf").is_file()
    assert directives["PARAMETER"] == ['stop "<|im_end|>"'] and "ADAPTER" not in directives
    expected = smollm_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert go_render(directives["TEMPLATE"][0], chat) == expected


def test_ollama_with_lora_writes_the_base_gguf_and_the_adapter(exported):
    folder = exported["ollama-lora"]
    directives = parse_modelfile((folder / "Modelfile").read_text(encoding="utf-8"))
    assert directives["FROM"] == ["./model.gguf"] and directives["ADAPTER"] == ["./adapter.gguf"]
    assert (folder / "adapter.gguf").is_file()
    assert (folder / "model.gguf").read_bytes() != (exported["ollama"] / "model.gguf").read_bytes()  # not merged
    record = json.loads((folder / "distill-export.json").read_text())
    assert record["files"] == ["model.gguf", "adapter.gguf", "Modelfile"] and "+lora@" in record["exported_from"]["key"]


def test_export_merged_is_a_plain_transformers_model_with_the_adapters_logits(exported, merged_model):
    from transformers import AutoModelForCausalLM

    folder = exported["merged"]
    assert not (folder / "adapter_config.json").exists() and (folder / "distill-merge.json").is_file()
    ids = torch.tensor([[1, 200, 3000, 42, 7, 99]])
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(folder)(input_ids=ids).logits
        assert torch.allclose(got, merged_model(input_ids=ids).logits, atol=1e-5)


def test_a_run_folder_exports_its_promoted_adapter(tiny_model_dir: Path, adapter: Path, tmp_path: Path, capsys):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "rounds.json").write_text(json.dumps({"rounds": [], "best_adapter": str(adapter)}))
    out = tmp_path / "out"
    assert main(["export", str(run), "--format", "gguf-lora", "-o", str(out), "--student", str(tiny_model_dir)]) == 0
    assert json.loads((out / "distill-export.json").read_text())["exported_from"]["adapter"] == str(adapter)
    assert main(["export", "r", "--runs-dir", str(tmp_path / "runs"), "--format", "gguf-lora", "-o", str(out),
                 "--student", str(tiny_model_dir)]) == 2  # a bare name is a run under --runs-dir; out exists
    assert "pass --force" in capsys.readouterr().err
    (run / "rounds.json").write_text(json.dumps({"rounds": [], "best_adapter": None}))
    assert main(["export", str(run), "--format", "gguf", "-o", str(tmp_path / "o2"), "--student",
                 str(tiny_model_dir)]) == 2
    assert "no round was promoted" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_clear_errors_for_what_cannot_be_exported(tiny_model_dir: Path, tmp_path: Path, capsys):
    out = str(tmp_path / "out")
    assert main(["export", "--format", "gguf-lora", "-o", out, "--student", str(tiny_model_dir)]) == 2
    assert "none was given" in capsys.readouterr().err
    assert main(["export", "--format", "onnx", "-o", out]) == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--format", "gguf", "-o", out]) == 2
    assert "neither an adapter directory" in capsys.readouterr().err
    assert main(["export", "--format", "gguf", "--lora", "-o", out]) == 2
    assert "--lora belongs to --format ollama" in capsys.readouterr().err
    assert not Path(out).exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_the_smollm2_vocabulary_is_known_by_its_llama_cpp_pre_tokenizer(smollm_tokenizer) -> None:
    from distill.student.gguf_file import TokenizerMeta

    assert TokenizerMeta.of(smollm_tokenizer, len(smollm_tokenizer)).pre == "smollm"
    assert TokenizerMeta.of(smollm_tokenizer, len(smollm_tokenizer) + 2).tokens[-1] == f"[PAD{len(smollm_tokenizer) + 1}]"


# ---------------------------------------------------------------- the embedded student

@pytest.mark.slow
def test_embedded_student_gguf_matches_the_shipped_gguf_and_answers_like_the_merged_model(embedded_dir: Path,
                                                                                          tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.student import embedded

    adapter = random_adapter(embedded_dir, tmp_path / "adapter", scale=0.02, rank=8)
    out = tmp_path / "gguf"
    assert main(["export", str(adapter), "--format", "gguf", "-o", str(out), "--student", str(embedded_dir)]) == 0
    mine, shipped = reader(out / "model.gguf"), reader(embedded.gguf_path())
    keys = {k for k in shipped.fields if k.startswith(("llama.", "tokenizer.", "general.architecture"))}
    assert keys <= set(mine.fields)
    for key in sorted(keys):
        assert mine.fields[key].contents() == shipped.fields[key].contents(), key
    assert {t.name: t.shape.tolist() for t in mine.tensors} == {t.name: t.shape.tolist() for t in shipped.tensors}

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf").eval()
    merged = f16_rounded(_merged(embedded_dir, adapter))
    for prompt in MIXED:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            a = reloaded.generate(ids, max_new_tokens=24, do_sample=False)
            b = merged.generate(ids, max_new_tokens=24, do_sample=False)
        assert a.tolist() == b.tolist(), prompt


def _merged(base: Path, adapter: Path) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload().eval()


@pytest.mark.slow
@pytest.mark.llamacpp
def test_llama_cpp_answers_like_transformers(request, smollm_tokenizer) -> None:
    """Optional: llama.cpp itself runs the exported f32 GGUF; its greedy tokens match transformers'."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    exported, merged_model = request.getfixturevalue("exported"), request.getfixturevalue("merged_model")
    llm = llama_cpp.Llama(model_path=str(exported["f32"] / "model.gguf"), n_ctx=256, verbose=False)
    for prompt in MIXED:
        ids = smollm_tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            expected = merged_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):]
        got = [t for _, t in zip(range(8), llm.generate(ids, temp=0.0, top_k=1))]
        assert got == expected.tolist()[: len(got)], prompt


def test_gguf_export_refuses_what_it_cannot_write_faithfully() -> None:
    from transformers import GPT2Config, LlamaConfig

    from distill.errors import ModelError
    from distill.student.gguf_file import LlamaShape

    with pytest.raises(ModelError, match="GPT2LMHeadModel: GGUF export supports LlamaForCausalLM"):
        LlamaShape.of(GPT2Config(architectures=["GPT2LMHeadModel"]))
    scaled = LlamaConfig(architectures=["LlamaForCausalLM"], rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ModelError, match="rope type 'linear'"):
        LlamaShape.of(scaled)
