"""A run's training data as a Hugging Face dataset: `distill dataset RUN --format hf|parquet -o DIR`.

The rows are the run's `sft.jsonl` (prompt/completion) and `prefs.jsonl` (prompt/chosen/rejected),
in the conversational formats TRL's SFTTrainer and DPOTrainer load as they are; `meta` (where each
row came from: prompt, answer and revision ids, source, verified, the judge's verdicts) travels
as a JSON text column, since its keys differ from row to row. A multi-round run folder gives every
round's rows (each row's `meta.round` says which).

`hf` writes a `datasets.DatasetDict` with `save_to_disk` (splits `sft` and `prefs`; a split with
no rows is left out), ready for `push_to_hub`; `parquet` writes `sft.parquet` and `prefs.parquet`,
one config each in the card (`load_dataset(DIR, "sft")`), since their columns differ.
Both get a dataset card, README.md: a YAML header (licence, tags, the configs) and what a reader
needs to trust the data: the source prompts, the teacher, the templates, the filters and what each
dropped, the counts of the manifest. The folder is written next to DIR and renamed into place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from distill.errors import InputError
from distill.records.files import write_atomic
from distill.records.jsonl import written_rows

FORMATS = ("hf", "parquet")
SPLITS = {"sft": ("prompt", "completion"), "prefs": ("prompt", "chosen", "rejected")}


def round_folders(run: Path) -> list[Path]:
    """The folders holding a round's files: the run itself, or each round-K of a multi-round run."""
    if (run / "manifest.json").is_file():
        return [run]
    rounds = sorted((p for p in run.glob("round-*") if (p / "manifest.json").is_file()),
                    key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else 0)
    if not rounds:
        raise InputError(f"{run}: no manifest.json and no round-K folders; give a run folder written by `distill run`")
    return rounds


def collect(run: Path) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """({split: rows in TRL's format with `id` and `meta` as JSON text}, the rounds' manifests)."""
    folders = round_folders(run)
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for folder in folders:
        for name, columns in SPLITS.items():
            for row in written_rows(folder / f"{name}.jsonl"):
                splits[name].append({"id": row["id"], **{c: row[c] for c in columns},
                                     "meta": json.dumps(row.get("meta", {}), ensure_ascii=False, sort_keys=True)})
    manifests = [json.loads((f / "manifest.json").read_text(encoding="utf-8")) for f in folders]
    return splits, manifests


def card(run: Path, splits: dict[str, list[dict[str, Any]]], manifests: list[dict[str, Any]], *, fmt: str,
         license: str) -> str:
    """The dataset card: a YAML header and the provenance of the rows."""
    present = [name for name, rows in splits.items() if rows]
    # sft and prefs have different columns: one config each (a config's splits must share a schema)
    header_configs = "configs:\n" + "".join(f"- config_name: {n}\n  data_files: {n}.parquet\n" for n in present) \
        if fmt == "parquet" and present else ""
    lines = ["---", f"license: {license}", "tags:", "- distill", "- distillation", "- synthetic",
             "task_categories:", "- text-generation", header_configs.rstrip("\n") if header_configs else None, "---", "",
             f"# {run.name}: distilled training data", "",
             "Training rows written by distill (teacher-student distillation): a "
             "small student answered the prompts, a teacher critiqued and revised the answers, and filters kept the "
             "revisions that pass the prompts' objective checks (or a judge, where a prompt has none).", "",
             "| split | rows | format |", "|---|---:|---|"]
    lines = [line for line in lines if line is not None]
    for name, columns in SPLITS.items():
        lines.append(f"| {name} | {len(splits[name])} | {', '.join(columns)} (conversational, as TRL loads it), "
                     "id, meta (JSON) |")
    for manifest in manifests:
        models = manifest.get("models", {})
        config = manifest.get("config", {})
        dataset = manifest.get("dataset", {})
        lines += ["", f"## Round {manifest.get('round')} ({manifest.get('name')}, {manifest.get('created')})", "",
                  f"- teacher: {models.get('teacher_name') or 'none'}",
                  f"- student: {(models.get('student') or {}).get('key', 'unknown')}",
                  f"- principles chain: {', '.join(manifest.get('chain', [])) or config.get('chain')}",
                  f"- filters, in order: {', '.join(config.get('filters', []))}",
                  f"- templates: {', '.join(f'{k}={v}' for k, v in sorted(manifest.get('templates', {}).items()))}",
                  f"- prompts in: {manifest.get('counts', {}).get('prompts', {}).get('in', 'n/a')}; "
                  f"training rows: {dataset.get('sft')}; preference pairs: {dataset.get('prefs')}",
                  f"- training rows by source: {_pairs(dataset.get('by_source', {}))}",
                  f"- dropped or failed, by filter: {_pairs(manifest.get('rejected_by_filter', {}))}"]
        usage = manifest.get("teacher_usage", {})
        calls = sum(u.get("teacher_calls", 0) for u in usage.values())
        cost = [u.get("cost_usd") for u in usage.values() if u.get("cost_usd") is not None]
        spent = f"${sum(cost):.4f}" if cost else "$0.00" if not calls else "unknown"
        lines.append(f"- teacher calls: {calls}; estimated cost: {spent}")
    lines += ["", "Each row's `meta` traces it to its prompt, the student's answer and the teacher's revision "
                  "(`prompt_id`, `answer_id`, `revision_id`), says where it came from (`source`) and whether the "
                  "prompt's check verifies it (`verified`).", ""]
    return "\n".join(lines)


def _pairs(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-int(kv[1]), kv[0]))) or "none"


def export(run: Path, output: Path, *, fmt: str = "hf", license: str = "other") -> dict[str, int]:
    """Write the run's rows to `output` in `fmt` with a dataset card; returns the rows per split."""
    if fmt not in FORMATS:
        raise InputError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    splits, manifests = collect(run)
    if not any(splits.values()):
        raise InputError(f"{run}: no training rows (sft.jsonl and prefs.jsonl are empty or missing)")
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _write(splits, staging, fmt)
    write_atomic(staging / "README.md", card(run, splits, manifests, fmt=fmt, license=license))
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
    return {name: len(rows) for name, rows in splits.items()}


def _write(splits: dict[str, list[dict[str, Any]]], folder: Path, fmt: str) -> None:
    import datasets

    built = {name: datasets.Dataset.from_list(rows) for name, rows in splits.items() if rows}
    if fmt == "hf":
        datasets.DatasetDict(built).save_to_disk(str(folder))
        return
    for name, table in built.items():
        table.to_parquet(str(folder / f"{name}.parquet"))
