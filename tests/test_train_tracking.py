"""`report_to`: each training step's metrics go to a tracker through accelerate; TensorBoard event files
written under ADAPTER/tracking/ and read back here (TFRecord framing parsed by hand, events with tensorboardX's
protobufs), so the test needs neither TensorFlow nor the tensorboard server."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from distill.training.config import TrainConfig
from distill.training.sft import train
from test_train import FAST, word_examples

pytest.importorskip("tensorboardX")


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard event files under `folder`: {tag: [(step, value)]}."""
    from tensorboardX.proto import event_pb2

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            record = data[at + 12:at + 12 + length]  # after the length and its CRC
            at += 12 + length + 4  # the record and its CRC
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_tensorboard_gets_every_steps_loss_and_the_run_records_where(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    train(word_examples(), out, TrainConfig(epochs=2, report_to="tensorboard", **FAST), student=tiny_model_dir)
    logged = scalars(out / "tracking")
    rows = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [step for step, _ in logged["loss"]] == [r["step"] for r in rows]
    assert [v for _, v in logged["loss"]] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert {"lr", "tokens_per_s", "epoch"} <= set(logged)
    summary = json.loads((out / "training.json").read_text())
    assert summary["tracking"] == {"report_to": "tensorboard", "dir": str(out / "tracking")}


def test_no_tracker_by_default_writes_nothing_more(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    train(word_examples(), out, TrainConfig(epochs=1, **FAST), student=tiny_model_dir)
    assert not (out / "tracking").exists() and "tracking" not in json.loads((out / "training.json").read_text())
