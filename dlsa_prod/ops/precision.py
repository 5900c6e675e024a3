"""Keep fp32 matrix products in full IEEE precision (no TF32 / bf16 shortcuts) inside a block.

PROCESS-WIDE: PyTorch's fp32-precision knobs (``torch.backends.cuda.matmul`` and
``torch.backends.mkldnn.matmul``) are global, and Python has no thread-local guard for them
(the native CUDA ops use at::NoTF32Guard, which is thread-local, and need none of this).
So while any thread is inside ``ieee_fp32()``, fp32 matmuls of every thread run in IEEE fp32
(more precise, never less).  Concurrent blocks are reference-counted: the first to enter
switches the reduced-precision knobs to "ieee", the last to leave restores what it found, so
no block ever sees its setting undone by another thread's exit.  Changing the knobs yourself
while a block runs in another thread is not supported.

Cost: an uncontended lock and one read per knob (negligible next to the product it guards).
"""

from __future__ import annotations

import contextlib
import threading

import torch

_REDUCED = ("tf32", "bf16")
_MKLDNN = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)


def _knobs() -> list:
    owners = [getattr(torch.backends.cuda, "matmul", None), _MKLDNN]
    return [k for k in owners if k is not None and hasattr(k, "fp32_precision")]


_KNOBS = _knobs()
_lock = threading.Lock()
_state = {"depth": 0, "saved": []}  # blocks inside; (knob, value) to restore when the last leaves


def _reduced_knobs() -> list:
    if _KNOBS:
        return [k for k in _KNOBS if k.fp32_precision in _REDUCED]
    return [None] if torch.backends.cuda.matmul.allow_tf32 else []  # older torch: the legacy flag only


def _set(knob, value) -> None:
    if knob is None:
        torch.backends.cuda.matmul.allow_tf32 = value
    else:
        knob.fp32_precision = value


@contextlib.contextmanager
def ieee_fp32():
    """Force IEEE fp32 matmuls in this block (process-wide, see the module docstring)."""
    with _lock:
        if _state["depth"] == 0:
            saved = [(k, torch.backends.cuda.matmul.allow_tf32 if k is None else k.fp32_precision)
                     for k in _reduced_knobs()]
            for k, _ in saved:
                _set(k, False if k is None else "ieee")
            _state["saved"] = saved
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                for k, v in _state["saved"]:
                    _set(k, v)
                _state["saved"] = []


def reduced_cpu_matmul() -> bool:
    """Whether oneDNN may run fp32 CPU matmuls in a reduced precision (bf16 / tf32) now."""
    return _MKLDNN is not None and getattr(_MKLDNN, "fp32_precision", "ieee") in _REDUCED
