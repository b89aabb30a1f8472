"""The student: the small local model that answers, is trained, and is evaluated.

Owns: `model` (loading the embedded default or any transformers causal LM, optionally with a LoRA
adapter; batched generation; `GenerationParams`, `Answer`, model identities and weight hashes),
`weights` (the process's one copy of the base weights, shared by every Student as a view),
`embedded` (the SmolLM2-135M-Instruct shipped as GGUF, converted once to safetensors under the cache);
`decode` (continuous batching: the decoding loop whose batch takes a new prompt as soon as an
answer ends), `generation` (per-row sampling, stops, schema and streaming within that loop: the
local teacher's and `distill serve`'s rows), `grammar` (constrained decoding of a
JSON schema with xgrammar, closing the document when the budget runs out), `collector` (the asyncio
queue that gathers requests arriving together into batches);
`export` (base + adapter written for other runtimes: a merged transformers directory, GGUF, a llama.cpp
LoRA GGUF, an Ollama folder), with `gguf_file` (the GGUF writer) and `modelfile` (Ollama's Modelfile).
`from distill import Student, GenerationParams` is the public spelling.

May import: `distill.errors`, `distill.config`, `distill.checks`, `distill.records`.
Must not import: teachers, stages, training, evaluation or the CLI. (The local teacher backend
builds on the student, not the other way round.)
"""
