"""Which examples a training step sees: epochs of examples plus a replay sample, cut into batches.

Data order is a pure function of (data, config, epoch), so a resumed run sees exactly the batches
the uninterrupted run would have seen; batches are grouped by length (little padding), shared out
among processes, and cut into forward passes that fit a token budget.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

from distill.training.config import TrainConfig
from distill.training.examples import Encoded


def replay_count(n_train: int, n_replay: int, fraction: float) -> int:
    """Replay examples per epoch so that they make up `fraction` of it (capped by the replay set)."""
    if not n_replay or fraction <= 0:
        return 0
    return min(n_replay, round(n_train * fraction / (1 - fraction)))


def epoch_batches(train: Sequence[Encoded], replay: Sequence[Encoded], config: TrainConfig,
                  epoch: int) -> list[list[Encoded]]:
    """The batches of one epoch: a pure function of (data, config, epoch), so a resumed run replays it.

    The epoch is the training examples plus a fresh replay sample, shuffled, then cut into
    windows of 16 batches whose examples are sorted by length (little padding), in shuffled order.
    """
    rng = random.Random(f"{config.seed}:{epoch}")
    items = list(train) + rng.sample(list(replay), replay_count(len(train), len(replay), config.replay_fraction))
    rng.shuffle(items)
    size = config.batch_size
    window = size * 16
    batches: list[list[Encoded]] = []
    for start in range(0, len(items), window):
        chunk = sorted(items[start:start + window], key=len, reverse=True)
        batches.extend(chunk[i:i + size] for i in range(0, len(chunk), size))
    rng.shuffle(batches)
    return batches


def rank_batches(batches: list[list[Encoded]], rank: int, world: int) -> list[list[Encoded]]:
    """This process's share of an epoch; the list is wrapped around so every process gets as many."""
    per_rank = math.ceil(len(batches) / world)
    padded = [batches[i % len(batches)] for i in range(per_rank * world)]
    return padded[rank::world]


def split_by_tokens(batch: Sequence[Encoded], budget: int) -> list[list[Encoded]]:
    """Cut a batch into runs whose padded size (rows x longest row) stays within `budget` tokens."""
    pieces: list[list[Encoded]] = []
    current: list[Encoded] = []
    for example in sorted(batch, key=len, reverse=True):
        if current and (len(current) + 1) * len(current[0]) > budget:
            pieces.append(current)
            current = []
        current.append(example)
    return pieces + [current] if current else pieces
