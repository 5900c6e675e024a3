"""Vectorised index samplers on the training device: positive/negative class pairs and classifier
epochs (a shuffled pass or class-balanced draws).

Indices are drawn for a whole epoch at once, on the device of the labels, with a generator on
that device (``device_generator``), so a training step never waits for the host and never
copies indices from host memory.  Batches are views into the epoch's index tensors.
"""

from __future__ import annotations

import numpy as np
import torch


def device_generator(generator: torch.Generator, device: torch.device | str) -> torch.Generator:
    """A generator on ``device``: the given one for CPU, else one seeded from it (one draw)."""
    device = torch.device(device)
    if device.type == "cpu" or generator.device == device:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


class ClassIndex:
    """Labels grouped by class for O(1) vectorised draws of 'a random sample of class c'."""

    def __init__(self, labels: np.ndarray | torch.Tensor, num_classes: int, device: torch.device | str | None = None):
        if not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(np.asarray(labels))
        labels = labels.to(device=device if device is not None else labels.device, dtype=torch.int64)
        self.order = torch.argsort(labels, stable=True)
        self.counts = torch.bincount(labels, minlength=num_classes)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.present = torch.nonzero(self.counts > 0).flatten()
        self.num_present = int(self.present.numel())

    @property
    def device(self) -> torch.device:
        return self.order.device

    def draw(self, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        r = torch.rand(classes.shape[0], generator=generator, device=self.device)
        n = self.counts[classes]
        within = torch.minimum((r * n).long(), n - 1)
        return self.order[self.offsets[classes] + within]

    def balanced_draw(self, size: int, generator: torch.Generator) -> torch.Tensor:
        """``size`` samples: a uniform class among those present, then a uniform sample of it."""
        slot = torch.randint(self.num_present, (size,), generator=generator, device=self.device)
        return self.draw(self.present[slot], generator)


class PairSampler:
    """Each item: a positive class and a different negative class uniformly over the classes
    present, then one random sample of each.  One epoch = N items in ceil(N / batch) batches."""

    def __init__(self, labels, num_classes: int, batch_size: int, generator: torch.Generator,
                 device: torch.device | str | None = None):
        self.index = ClassIndex(labels, num_classes, device)
        self.n = len(labels)
        self.batch_size = batch_size
        self.generator = generator
        self.has_negatives = self.index.num_present > 1

    def sample_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        c = self.index.num_present
        present = self.index.present
        pos_slot = torch.randint(c, (size,), generator=self.generator, device=self.index.device)
        pos = self.index.draw(present[pos_slot], self.generator)
        if not self.has_negatives:
            return pos, None
        shift = torch.randint(1, c, (size,), generator=self.generator, device=self.index.device)
        neg = self.index.draw(present[(pos_slot + shift) % c], self.generator)
        return pos, neg

    def epoch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All of an epoch's (positives, negatives), drawn at once."""
        return self.sample_batch(self.n)

    def batch_bounds(self):
        return [(s, min(s + self.batch_size, self.n)) for s in range(0, self.n, self.batch_size)]


def epoch_order(labels: torch.Tensor, num_classes: int, balanced: bool, generator: torch.Generator,
                index: ClassIndex | None = None) -> torch.Tensor:
    """One classifier epoch's sample order on the labels' device: a permutation, or N class-balanced
    draws (uniform class, then uniform sample)."""
    n = int(labels.shape[0])
    if balanced:
        index = index if index is not None else ClassIndex(labels, num_classes)
        return index.balanced_draw(n, generator)
    return torch.randperm(n, generator=generator, device=labels.device)
