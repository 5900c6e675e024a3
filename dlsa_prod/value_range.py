"""Input values the models can compute with: finite, and inside the float32 range (numpy only).

One check for every input path (runtime features, images): NaN/inf, or finite values that a
float32 cast would turn into inf, named with their position so the user can find the bad entry."""

from __future__ import annotations

import numpy as np

from .errors import DLSAError

FLOAT32_MAX = float(np.finfo(np.float32).max)
ROW_COLUMN = ("row", "column")


def _where(index, axes, first_row: int) -> str:
    index = [int(i) for i in index]
    index[0] += first_row
    names = axes if len(axes) == len(index) else [f"axis {a}" for a in range(len(index))]
    return ", ".join(f"{name} {i}" for name, i in zip(names, index))


def check_values(batch: np.ndarray, what: str = "input", first_row: int = 0, axes=ROW_COLUMN) -> None:
    """Refuse NaN/inf, or finite values that float32 cannot hold, with one line naming the first bad
    entry by ``axes`` (one name per dimension; ``first_row`` is the number of BATCH's first entry
    along axis 0 in the caller's whole input).  Call it before any cast to float32."""
    if batch.dtype.kind == "f":
        bad = ~np.isfinite(batch)
        if bad.any():
            raise DLSAError(f"{what} contains NaN or inf (first at {_where(np.argwhere(bad)[0], axes, first_row)})")
    if batch.dtype.kind in "fiu" and batch.dtype.itemsize >= 4 and batch.dtype != np.float32 and batch.size:
        big = np.abs(batch) > FLOAT32_MAX
        if big.any():
            index = np.argwhere(big)[0]
            raise DLSAError(f"{what} value {batch[tuple(index)]:.3g} at {_where(index, axes, first_row)} is beyond "
                            f"the float32 range (|x| <= {FLOAT32_MAX:.3g}) the model computes in")
