"""Prompts from where people keep them: JSONL, Parquet, CSV, a saved `datasets` dataset, a Hub dataset.

`prompt_rows(source, columns)` yields (row number, row) from any of them, each row renamed by the
column mapping (`Columns`: which column holds the prompt, the id, the reference) into the fields
a prompts file has, so `distill.records.prompts.parse_prompt` validates every source the same way
and a bad row is reported as `SOURCE:ROW: reason`.

- `.jsonl` (or any other file): the JSON Lines reader, lines numbered from 1;
- `.parquet`: read with pyarrow, rows numbered from 1;
- `.csv`: the header names the columns, an empty cell is no value;
- a folder written by `datasets`' `save_to_disk` (a Dataset, or a DatasetDict with `split`);
- `hub:OWNER/NAME` (or an OWNER/NAME that is no local path): `datasets.load_dataset` with `split`
  (default "train"); with no network, an error that names HF_HUB_OFFLINE.

Tables keep chats and checks as JSON text, so in any source but JSONL a text cell of the prompt,
messages or reference column holding `[...]` or `{...}` is decoded; any other reference text is a
plain "contains" check, as in a prompts file.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from distill.config import option
from distill.errors import InputError
from distill.records.jsonl import iter_jsonl_lenient

HUB_PREFIX = "hub:"
SAVED_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")  # what save_to_disk leaves in a folder


@dataclass(frozen=True)
class Columns:
    """Which source column holds each field of a prompt row (None: the field's own name)."""

    prompt_column: str | None = option(None, help="the column holding the prompt (text, or a list of {role, "
                                       "content} messages)", default_text="prompt or messages", toml=False)
    id_column: str | None = option(None, help="the column holding the id", default_text="id", toml=False)
    reference_column: str | None = option(None, help="the column holding the reference check",
                                          default_text="reference", toml=False)
    split: str | None = option(None, help="the split of a dataset with several (saved or on the Hub)",
                               default_text="train", toml=False)

    def rename(self, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        if self.prompt_column is not None:
            if self.prompt_column not in row:
                raise ValueError(f"no column {self.prompt_column!r} (--prompt-column); columns: "
                                 f"{', '.join(map(str, row))}")
            value = out.pop(self.prompt_column)
            out["messages" if isinstance(value, list) else "prompt"] = value
        for field_name, column in (("id", self.id_column), ("reference", self.reference_column)):
            if column is not None:
                if column not in row:
                    raise ValueError(f"no column {column!r} (--{field_name}-column); columns: {', '.join(map(str, row))}")
                out[field_name] = out.pop(column)
        if out.get("reference") is None:
            out.pop("reference", None)  # an empty cell of a reference column: no check
        return out


def prompt_rows(source: str | os.PathLike[str], columns: Columns, errors: list[str]) -> Iterator[tuple[Any, Any]]:
    """(row number, row with the fields of a prompts file) for every row of `source`; a row that
    cannot be read at all is recorded in `errors` (as JSONL lines are) and skipped. In a table (not
    JSONL, whose values are typed), a text cell of the prompt, messages or reference column that
    holds JSON (`[...]`, `{...}`) is decoded: tables keep chats and checks as JSON text."""
    json_columns = {"messages", "reference", columns.prompt_column, columns.reference_column} - {None}
    decode = kind_of(source) != "jsonl"
    for number, row in _raw_rows(source, columns, errors):
        if not isinstance(row, dict):
            yield number, row  # parse_prompt says what is wrong with it
            continue
        if decode:
            row = {k: _json_cell(v) if k in json_columns else v for k, v in row.items()}
        try:
            yield number, columns.rename(row)
        except ValueError as exc:
            errors.append(f"{source}:{number}: {exc}")


def kind_of(source: str | os.PathLike[str]) -> str:
    """"hub", "saved" (a save_to_disk folder), "parquet", "csv" or "jsonl" (any other file)."""
    text = os.fspath(source)
    path = Path(text)
    if text.startswith(HUB_PREFIX) or (not path.exists() and text.count("/") == 1 and not path.suffix):
        return "hub"
    if path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS):
        return "saved"
    return {".parquet": "parquet", ".csv": "csv"}.get(path.suffix.lower(), "jsonl")


def unit_of(source: str | os.PathLike[str]) -> str:
    """What a number in an error message counts: lines of a JSONL file, rows of anything else."""
    return "line" if kind_of(source) == "jsonl" else "row"


def _raw_rows(source: str | os.PathLike[str], columns: Columns, errors: list[str]) -> Iterator[tuple[Any, Any]]:
    kind, path = kind_of(source), Path(source)
    if kind == "hub":
        yield from _hub_rows(os.fspath(source).removeprefix(HUB_PREFIX), columns.split)
    elif kind == "saved":
        yield from _saved_rows(path, columns.split)
    elif kind == "parquet":
        yield from _parquet_rows(path)
    elif kind == "csv":
        yield from _csv_rows(path)
    else:
        yield from iter_jsonl_lenient(path, errors)


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    yield from enumerate(table.to_pylist(), start=1)


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """The rows of a CSV file with a header; an empty cell is None."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=1):
                yield number, {k: (v if v != "" else None) for k, v in row.items() if k is not None}
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _json_cell(value: Any) -> Any:
    """A table cell of a JSON column: decoded when it is text holding a JSON list or object."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _saved_rows(path: Path, split: str | None) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"{path}: a folder, but not one written by datasets' save_to_disk ({exc})") from None
    yield from _dataset_rows(loaded, split, str(path))


def _hub_rows(name: str, split: str | None) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # the hub client raises many types: connection, offline mode, not found
        raise InputError(f"{name}: cannot load the Hub dataset ({type(exc).__name__}: {str(exc)[:300]}); with no "
                         "network (or HF_HUB_OFFLINE=1) only datasets already in the Hugging Face cache load; "
                         "a local file needs a path such as ./data.jsonl") from None
    yield from _dataset_rows(loaded, None, name)


def _dataset_rows(loaded: Any, split: str | None, where: str) -> Iterator[tuple[int, Any]]:
    if hasattr(loaded, "keys") and not hasattr(loaded, "features"):  # a DatasetDict
        names = list(loaded.keys())
        chosen = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
        if chosen not in names:
            raise InputError(f"{where}: a dataset with splits {', '.join(names)}; choose one with --split")
        loaded = loaded[chosen]
    elif split is not None:
        raise InputError(f"{where}: a single dataset has no splits; drop --split {split}")
    yield from enumerate(loaded, start=1)
