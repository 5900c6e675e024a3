"""Trained flows and baselines, reused across runs of one caller (tune's candidates, a benchmark's
variants) that differ only in settings those models do not read.

There is no process-wide cache: a caller that wants reuse creates a ``TrainCache`` and passes it
(``train`` passes None and trains everything).  Keys are digests of everything the trainer reads:
the training data, the full dump of every config section it reads, the states of the generators it
draws from, the device and the training options.  Entries are stored and handed out as deep copies,
so a caller never shares a module with the cache (a freshly trained entry is stored as trained:
nothing else holds it).
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from typing import Callable, TypeVar

import numpy as np
import torch

from .options import TrainOptions

T = TypeVar("T")


def digest(*parts) -> str:
    """sha256 over tensors, arrays, generators (their state), pydantic models (full JSON dump),
    TrainOptions and plain values, in order."""
    h = hashlib.sha256()
    for p in parts:
        h.update(type(p).__name__.encode())
        if isinstance(p, torch.Tensor):
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
            h.update(str((p.dtype, tuple(p.shape), p.device.type)).encode())
        elif isinstance(p, np.ndarray):
            h.update(np.ascontiguousarray(p).tobytes())
            h.update(str((p.dtype, p.shape)).encode())
        elif isinstance(p, torch.Generator):
            h.update(p.get_state().numpy().tobytes())
        elif hasattr(p, "model_dump_json"):
            h.update(p.model_dump_json().encode())
        elif isinstance(p, TrainOptions):  # precision / compile / data-parallel ranks change what is trained
            h.update(f"{p.precision}|{p.compile}|{p.dist.world_size}".encode())
        else:
            h.update(repr(p).encode())
        h.update(b"\x00")
    return h.hexdigest()


class TrainCache:
    """Least-recently-used stores of trained flows and baselines (sizes per kind)."""

    SIZES = {"flow": 8, "baseline": 32}

    def __init__(self, sizes: dict[str, int] | None = None):
        self.sizes = {**self.SIZES, **(sizes or {})}
        self._stores: dict[str, OrderedDict] = {kind: OrderedDict() for kind in self.sizes}
        self.hits = {kind: 0 for kind in self.sizes}

    def __len__(self) -> int:
        return sum(len(s) for s in self._stores.values())

    def count(self, kind: str) -> int:
        return len(self._stores[kind])

    def fetch(self, kind: str, key: str, train: Callable[[], T]) -> tuple[T, bool]:
        """(a copy of the entry under key, whether it was there); trains and stores it on a miss."""
        store = self._stores[kind]
        hit = key in store
        if hit:
            store.move_to_end(key)
            self.hits[kind] += 1
        else:
            store[key] = train()
            while len(store) > self.sizes[kind]:
                store.popitem(last=False)
        return copy.deepcopy(store[key]), hit


def cached(cache: TrainCache | None, kind: str, key: Callable[[], str], train: Callable[[], T]) -> tuple[T, bool]:
    """train() when there is no cache, else cache.fetch (the key is computed only when needed)."""
    if cache is None:
        return train(), False
    return cache.fetch(kind, key(), train)
