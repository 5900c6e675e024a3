"""Training precision for the flow MLP (MAF) and the classifiers: fp32, tf32 or bf16.

- ``fp32``: IEEE fp32 everywhere (the default).
- ``tf32``: fp32 tensors, but CUDA matrix products and convolutions may use TF32 tensor cores.
  The switch is torch's process-wide matmul/cuDNN precision setting, held for the whole
  training call (forward and backward) and restored afterwards.  No effect on CPU.
- ``bf16``: ``torch.autocast`` to bfloat16 around the forward passes (CPU and CUDA); parameters,
  gradients and optimizer state stay fp32 and the losses are computed in fp32.

Whatever the setting, the GMM term (log p_k = -0.5|u|^2 + u.mu_k - 0.5|mu_k|^2) is computed in
IEEE fp32: ``FlowGMM`` casts the latent to fp32 and leaves autocast before the GMM op, and the
op keeps TF32 off itself.
"""

from __future__ import annotations

import contextlib

import torch

from ..precisions import TRAIN_PRECISIONS


def check_train_precision(precision: str) -> str:
    if precision not in TRAIN_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(TRAIN_PRECISIONS)}, got {precision!r}")
    return precision


def forward_autocast(precision: str, device: torch.device):
    """Context for a training forward pass: bf16 autocast, or nothing."""
    if check_train_precision(precision) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device):
    """Allow TF32 CUDA matmuls/convolutions for the block (``tf32`` on CUDA only; process-wide)."""
    if check_train_precision(precision) != "tf32" or device.type != "cuda":
        yield
        return
    knobs = [k for k in (torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None))
             if k is not None and hasattr(k, "fp32_precision")]
    if knobs:
        saved = [k.fp32_precision for k in knobs]
        for k in knobs:
            k.fp32_precision = "tf32"
        try:
            yield
        finally:
            for k, v in zip(knobs, saved):
                k.fp32_precision = v
    else:  # older torch: the legacy flags
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

