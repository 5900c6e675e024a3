"""Input guard: is a row like the training data?  Depth 1's flow gives every row log p(x); the
training set's low quantiles of it (0.1% and 1%) are stored in the run (meta.json ``input_guard``)
and the bundle (manifest ``input_guard``).  A row below the 0.1% quantile is flagged out of
distribution; a batch with more than ``WARN_SHARE`` of its rows flagged gets a one-line warning
(``eval``, ``bench``, the HTTP example).  No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUANTILES = (0.001, 0.01)
WARN_SHARE = 0.05  # warn when more than 5% of a batch falls below the 0.1% quantile (expected: 0.1%)
UNAVAILABLE = ("input guard unavailable: this bundle has no training log-likelihood quantiles "
               "(exported before the guard existed, or a baseline without a flow); re-export a DLSA run to get it")


@dataclass(frozen=True)
class InputGuard:
    """Reference quantiles of the training set's depth-1 log-likelihood."""
    q001: float  # 0.1% quantile: rows below it are flagged
    q01: float  # 1% quantile (reported next to it)
    rows: int  # training rows the quantiles come from

    @classmethod
    def from_loglik(cls, loglik) -> "InputGuard":
        ll = np.asarray(loglik, dtype=np.float64)
        ll = ll[np.isfinite(ll)]
        if ll.size == 0:
            raise ValueError("no finite training log-likelihood to take quantiles of")
        q001, q01 = np.quantile(ll, QUANTILES)
        return cls(float(q001), float(q01), int(ll.size))

    def to_dict(self) -> dict:
        return {"depth": 1, "loglik_quantiles": {"0.001": self.q001, "0.01": self.q01}, "train_rows": self.rows}

    @classmethod
    def from_dict(cls, d: dict | None) -> "InputGuard | None":
        if not d:
            return None
        q = d["loglik_quantiles"]
        return cls(float(q["0.001"]), float(q["0.01"]), int(d.get("train_rows", 0)))

    def in_distribution(self, loglik) -> np.ndarray:
        """(N,) bool: depth-1 log-likelihood at least the training 0.1% quantile (NaN: False)."""
        return np.asarray(loglik) >= self.q001

    def warning(self, loglik, where: str = "input", share: float = WARN_SHARE) -> str | None:
        """One line when more than SHARE of the rows fall below the 0.1% quantile, else None."""
        ll = np.asarray(loglik)
        if ll.size == 0:
            return None
        low = int(np.count_nonzero(~self.in_distribution(ll)))
        if low / ll.size <= share:
            return None
        return (f"warning: {where}: {low} of {ll.size} rows ({100 * low / ll.size:.1f}%) have a depth-1 "
                f"log-likelihood below the training set's 0.1% quantile ({self.q001:.2f}); these inputs look "
                f"unlike the training data (another scale, preprocessing or data set?), predictions may be wrong")
