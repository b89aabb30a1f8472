"""Serving the student over HTTP: `distill serve`, an OpenAI-compatible server.

Owns: `batching` (the queue that turns requests arriving together into one batched generation per
served model, token by token, with per-request sampling, stop strings and text deltas for
streaming), `api` (the OpenAI wire format: /v1/chat/completions, /v1/completions, /v1/models, its
validation and error bodies, the API key; the uvicorn server in a thread), `vllm` (the `vllm serve`
command line for `--engine vllm`), `models` (the base and the adapters served by name), `http` (an
ASGI app on uvicorn in a background thread; the review page runs on it too).

Why a server: the student can then be used by anything that speaks the OpenAI API (the official
SDK, another distill run's `openai:` teacher, an evaluation harness), with several adapters chosen
per request by model name, as vLLM's multi-LoRA serving does.

May import: `distill.errors`, `distill.config`, `distill.records`, `distill.student` (whose batched
generation and constrained decoding the local teacher shares).
Must not import: stages, training, evaluation or the CLI.
"""
