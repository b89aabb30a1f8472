"""Training: LoRA distillation of the student on the rows the stages kept.

Owns: `examples` (training examples: parsing, chat rendering, token labels with loss on the
completion only, and the losses evaluation measures the same way), `config` (`TrainConfig`),
`batching` (data order, replay sampling, micro-batches), `lora` (the adapter and its loss),
`checkpoints`, `losslog`, and `sft` (`train()`: the run itself, on accelerate + PEFT).

May import: `distill.student`, `distill.records`, `distill.checks`, `distill.config`, `distill.errors`.
Must not import: teachers, stages, evaluation or the CLI. Training reads sft.jsonl (and replay
chats) as data; it does not know how they were made.
"""
