"""Keep fp32 matrix products in full IEEE precision (no TF32 / bf16 shortcuts) inside a block."""

from __future__ import annotations

import contextlib
import threading

import torch

_lock = threading.RLock()


def _precision_knobs():
    knobs = []
    for owner in (getattr(torch.backends.cuda, "matmul", None), getattr(torch.backends, "cudnn", None),
                  getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)):
        if owner is not None and hasattr(owner, "fp32_precision"):
            knobs.append(owner)
    return knobs


@contextlib.contextmanager
def ieee_fp32():
    """Force IEEE fp32 for matmuls in this block, restoring the caller's settings afterwards."""
    with _lock:
        knobs = _precision_knobs()
        saved = []
        for k in knobs:
            try:
                saved.append((k, k.fp32_precision))
                if k.fp32_precision not in ("ieee", "none"):
                    k.fp32_precision = "ieee"
            except (RuntimeError, AttributeError):
                pass
        legacy = None
        if not knobs:  # older torch: the allow_tf32 flags
            legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            for k, v in saved:
                try:
                    if k.fp32_precision != v:
                        k.fp32_precision = v
                except (RuntimeError, AttributeError):
                    pass
            if legacy is not None:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy
