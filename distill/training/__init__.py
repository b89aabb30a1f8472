"""Training: LoRA distillation of the student on the rows the stages kept.

Owns: `examples` (training examples: parsing, chat rendering, token labels with loss on the
completion only, and the losses evaluation measures the same way), `config` (`TrainConfig`),
`batching` (data order, replay sampling, micro-batches), `lora` (the adapter and its losses),
`checkpoints`, `losslog`, `run` (the machinery every method shares: devices, the step loop,
checkpoints and resume, saving, on accelerate + PEFT), `sft` (`train()`: completion-only
imitation), `pairs` (preference data: prefs.jsonl, KTO's labelled answers) and `preference`
(`train_preferences()`: DPO, IPO, length-normalised DPO, KTO).

May import: `distill.student`, `distill.records`, `distill.checks`, `distill.config`, `distill.errors`.
Must not import: teachers, stages, evaluation or the CLI. Training reads sft.jsonl, prefs.jsonl
(and replay chats, rejected.jsonl, revisions.jsonl, review decisions) as data; it does not know how
they were made.
"""
