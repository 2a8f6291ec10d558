"""`finetune.sampler: balanced`: each epoch draws its training items with replacement so that every class is
equally likely, instead of shuffling each item once. The class weights (reprotune/models/imbalance.py) give a
rare class the same share of the loss; the sampler gives it the same share of the batches, each of its items
seen many times an epoch.

Unlabelled items (distill's, adapt's target images) keep their share of the draws; the labelled ones are
balanced among their classes. The draw of an epoch depends on the seed and the epoch alone, so a resumed run
draws what an uninterrupted one would; under torchrun every process takes its own positions of one draw.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

UNLABELED = -1  # as reprotune/training/finetuning.py marks an item without a label


def balanced_probabilities(targets: Sequence[int]) -> np.ndarray:
    """Each item's chance per draw: the labelled share split equally among the classes present, then equally
    among each class's items; the unlabelled share split equally among the unlabelled items."""
    targets = np.asarray(targets, dtype=np.int64)
    labelled = targets != UNLABELED
    chances = np.zeros(len(targets))
    if labelled.any():
        classes, inverse, counts = np.unique(targets[labelled], return_inverse=True, return_counts=True)
        chances[labelled] = labelled.mean() / (len(classes) * counts[inverse])
    if (~labelled).any():
        chances[~labelled] = 1.0 / len(targets)
    return chances / chances.sum()


class ClassBalancedSampler(Sampler[int]):
    """len(targets) draws per epoch (rounded up to a multiple of the processes), each process taking every
    `world`-th from `rank`."""

    def __init__(self, targets: Sequence[int], seed: int, rank: int = 0, world: int = 1):
        self.chances = torch.from_numpy(balanced_probabilities(targets))
        self.seed, self.rank, self.world = seed, rank, world
        self.per_process = math.ceil(len(targets) / world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        draws = torch.multinomial(self.chances, self.per_process * self.world, True, generator=generator)
        return iter(draws[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.per_process


def training_sampler(
    sampler: str, targets: Sequence[int], seed: int, rank: int, world: int
) -> Sampler | None:
    """The order of an epoch's training items for `finetune.sampler`: `balanced` draws (above); `shuffle`
    shuffles each item once, through DistributedSampler's shares under torchrun, and through the loader's own
    shuffle (None) in one process."""
    if sampler == "balanced":
        return ClassBalancedSampler(targets, seed, rank, world)
    if world > 1:
        return DistributedSampler(list(targets), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return None
