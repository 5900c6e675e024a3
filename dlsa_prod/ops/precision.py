"""Keep fp32 matrix products in full IEEE precision (no TF32 / bf16 shortcuts) inside a block.

Cheap when nothing needs changing (the usual case): one read per knob.  A knob set to a
reduced precision ("tf32", "bf16") is switched to "ieee" for the block and restored after.
"""

from __future__ import annotations

import contextlib
import threading

import torch

_lock = threading.RLock()
_REDUCED = ("tf32", "bf16")


_MKLDNN = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)


def _knobs() -> list:
    owners = [getattr(torch.backends.cuda, "matmul", None), _MKLDNN]
    return [k for k in owners if k is not None and hasattr(k, "fp32_precision")]


_KNOBS = _knobs()


@contextlib.contextmanager
def ieee_fp32():
    """Force IEEE fp32 matmuls in this block, restoring the caller's settings afterwards."""
    changed = []
    if _KNOBS:
        for k in _KNOBS:
            if k.fp32_precision in _REDUCED:
                changed.append(k)
    elif torch.backends.cuda.matmul.allow_tf32:  # older torch: the legacy flag only
        changed.append(None)
    if not changed:
        yield
        return
    with _lock:
        saved = [(k, k.fp32_precision if k is not None else torch.backends.cuda.matmul.allow_tf32) for k in changed]
        for k, _ in saved:
            if k is None:
                torch.backends.cuda.matmul.allow_tf32 = False
            else:
                k.fp32_precision = "ieee"
        try:
            yield
        finally:
            for k, v in saved:
                if k is None:
                    torch.backends.cuda.matmul.allow_tf32 = v
                else:
                    k.fp32_precision = v


def reduced_cpu_matmul() -> bool:
    """Whether oneDNN may run fp32 CPU matmuls in a reduced precision (bf16 / tf32) now."""
    return _MKLDNN is not None and getattr(_MKLDNN, "fp32_precision", "ieee") in _REDUCED
