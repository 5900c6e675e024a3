"""Vectorised index samplers: positive/negative class pairs and class-balanced batches."""

from __future__ import annotations

import numpy as np
import torch


class ClassIndex:
    """Labels grouped by class for O(1) vectorised draws of 'a random sample of class c'."""

    def __init__(self, labels: np.ndarray | torch.Tensor, num_classes: int):
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.order = torch.argsort(labels, stable=True)
        self.counts = torch.bincount(labels, minlength=num_classes)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.present = torch.nonzero(self.counts > 0).flatten()

    def draw(self, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        r = torch.rand(classes.shape[0], generator=generator)
        within = torch.minimum((r * self.counts[classes]).long(), self.counts[classes] - 1)
        return self.order[self.offsets[classes] + within]


class PairSampler:
    """Each item: a positive class and a different negative class uniformly over the classes
    present, then one random sample of each.  One epoch = ceil(N / batch) batches."""

    def __init__(self, labels, num_classes: int, batch_size: int, generator: torch.Generator):
        self.index = ClassIndex(labels, num_classes)
        self.n = len(labels)
        self.batch_size = batch_size
        self.generator = generator
        self.has_negatives = self.index.present.numel() > 1

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def sample_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        present = self.index.present
        c = present.numel()
        pos_slot = torch.randint(c, (size,), generator=self.generator)
        pos = self.index.draw(present[pos_slot], self.generator)
        if not self.has_negatives:
            return pos, None
        shift = torch.randint(1, c, (size,), generator=self.generator)
        neg = self.index.draw(present[(pos_slot + shift) % c], self.generator)
        return pos, neg

    def __iter__(self):
        for i in range(len(self)):
            yield self.sample_batch(min(self.batch_size, self.n - i * self.batch_size))


def epoch_batches(labels, num_classes: int, batch_size: int, balanced: bool, generator: torch.Generator):
    """Index batches for one classifier epoch: a shuffled pass, or class-balanced draws
    (uniform class, then uniform sample) of the same total size."""
    n = len(labels)
    if balanced:
        index = ClassIndex(labels, num_classes)
        present = index.present
        classes = present[torch.randint(present.numel(), (n,), generator=generator)]
        idx = index.draw(classes, generator)
    else:
        idx = torch.randperm(n, generator=generator)
    return list(torch.split(idx, batch_size))
