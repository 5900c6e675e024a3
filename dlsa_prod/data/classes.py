"""The class space of a data set: ``data.num_classes`` when given, else inferred from the labels of
every split; each class must have training samples."""

from __future__ import annotations

import logging
from typing import Protocol, Sequence

import numpy as np

from ..errors import DataError

log = logging.getLogger("dlsa_prod")


class Labelled(Protocol):
    labels: np.ndarray
    source: str


def num_classes_of(train: Labelled, others: Sequence[Labelled], configured: int | None) -> int:
    """C for TRAIN and the OTHER splits; DataError naming the file whose labels do not fit.

    With ``configured`` (data.num_classes) every label must lie in 0..C-1.  Without it C is the
    largest label + 1; a label that cannot be a class index (C would exceed the number of
    training samples, so some class could not train) is refused before anything is allocated."""
    sets = [train, *others]
    for s in sets:
        lo, hi = int(s.labels.min()), int(s.labels.max())
        if lo < 0 or (configured is not None and hi >= configured):
            span = "0..C-1" if configured is None else f"0..{configured - 1} (data.num_classes = {configured})"
            raise DataError(f"{s.source}: labels must lie in {span}, found {lo}..{hi}")
    if configured is not None:
        return int(configured)
    worst = max(sets, key=lambda s: int(s.labels.max()))
    c = int(worst.labels.max()) + 1
    if c > len(train.labels):
        raise DataError(f"{worst.source}: label {c - 1} is not a class index: train has {len(train.labels)} samples, "
                        f"so at most {len(train.labels)} classes (labels must be 0..C-1; set data.num_classes)")
    return c


def check_train_classes(counts: np.ndarray, source: str, others: Sequence[Labelled] = ()) -> None:
    """Refuse classes with no training sample (naming the train file, and the OTHER splits that hold
    them); warn about classes with a single training sample."""
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        where = [s.source for s in others if np.isin(s.labels, missing).any()]
        seen = f" but appear in {', '.join(where)}" if where else ""
        raise DataError(f"{source}: classes {missing[:10].tolist()}{' ...' if missing.size > 10 else ''} have no "
                        f"training samples{seen}; every class 0..{len(counts) - 1} must appear in train "
                        f"(set data.num_classes to check the labels against a known class count)")
    rare = np.flatnonzero(counts < 2)
    if rare.size:
        log.warning("%s: classes %s have fewer than 2 training samples (a stray label? set data.num_classes "
                    "to reject labels outside 0..C-1)", source, rare[:10].tolist())
