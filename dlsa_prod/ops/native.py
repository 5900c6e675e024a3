"""The compiled ops ``torch.ops.dlsa_prod.*`` (extension ``dlsa_prod._C``), loaded when this
module is imported (``dlsa_prod.ops`` imports it), with their fake kernels registered then.

Schemas: csrc/ops.cpp; typed C++ signatures: csrc/include/dlsa_prod/ops.h; CPU kernels in
csrc/cpu, CUDA kernels in csrc/cuda, the autograd of gmm_loglik_fwd in csrc/autograd (C++, so
no Python runs on the backward path); fake kernels in fake_kernels.py.
"""

from __future__ import annotations

import torch

from .gmm_torch import GMMOutput
from .precision import ieee_fp32, reduced_cpu_matmul


def _load() -> str:
    """'' when the extension loaded (and its fake kernels are registered), else why not."""
    try:
        from .. import _C  # noqa: F401  (loading the library registers the ops)
    except ImportError as exc:
        return str(exc)
    from . import fake_kernels

    try:
        fake_kernels.register()
    except RuntimeError as exc:  # an extension built from older sources lacks an op
        return f"dlsa_prod._C is stale ({exc}); rebuild it: pip install --no-build-isolation -e ."
    return ""


_LOAD_ERROR = _load()
LOADED = not _LOAD_ERROR
_KERNELS = {dev: LOADED and torch._C._dispatch_has_kernel_for_dispatch_key("dlsa_prod::gmm_loglik_fwd", key)
            for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))}


def available(device: str | torch.device = "cpu") -> bool:
    """Whether the native ops have a kernel for this device type."""
    dev = device.type if isinstance(device, torch.device) else torch.device(device).type
    return _KERNELS.get(dev, False)


def build_info() -> str:
    if not LOADED:
        return f"not built (pure-torch GEMM path in use): {_LOAD_ERROR}"
    devices = [d for d in ("cpu", "cuda") if available(d)]
    return "built for " + ", ".join(d.upper() for d in devices) + f" (CPU row kernels: {cpu_row_isa()})"


def cpu_row_isa() -> str:
    """Which float32 row kernels the CPU ops use here: "avx2+fma" or "portable"."""
    return torch.ops.dlsa_prod.cpu_row_isa() if LOADED else "not built"


def cuda_forward(select: str | None = None) -> str:
    """The CUDA forward kernel in use, "gemm" or "tiled" (DLSA_PROD_CUDA_FWD, read once at load);
    ``select`` switches it for the whole process (benchmarks and tests compare the two)."""
    if not LOADED:
        raise RuntimeError(f"dlsa_prod native ops are not built: {_LOAD_ERROR}")
    return torch.ops.dlsa_prod._cuda_forward(select or "")


def gmm_path(device: str | torch.device = "cpu") -> str:
    """One line naming the GMM path ``gmm_loglik(backend="auto")`` takes on this device."""
    dev = device.type if isinstance(device, torch.device) else torch.device(device).type
    if not LOADED:
        return f"pure-torch GEMM (native ops not built: {_LOAD_ERROR})"
    if not available(dev):
        return f"pure-torch GEMM (native ops have no {dev.upper()} kernels)"
    if dev == "cuda":
        return f"native CUDA kernels ({cuda_forward()} forward)"
    return f"native CPU kernels ({cpu_row_isa()} row kernels)"


def gmm_loglik_native(u, means, log_det=None, return_log_probs=False) -> GMMOutput:
    # Autograd is registered in C++ (csrc/autograd): when a gradient will be needed it keeps
    # the (B, K) log-densities for the backward itself, whatever return_log_probs says.
    # Precision: the CUDA ops keep cuBLAS in IEEE fp32 themselves (at::NoTF32Guard, forward and
    # backward, thread-local), whatever the global TF32 setting.  On CPU only an explicit oneDNN
    # bf16/tf32 setting could reach at::mm, and it has no thread-local guard: the forward
    # (likelihoods, routing) then runs inside ieee_fp32() (process-wide, see precision.py), while
    # the backward follows the setting like every other layer's.
    fwd = torch.ops.dlsa_prod.gmm_loglik_fwd.default
    if u.device.type == "cpu" and reduced_cpu_matmul():
        with ieee_fp32():
            loglik, cluster, log_probs = fwd(u, means, log_det, return_log_probs)
    else:
        loglik, cluster, log_probs = fwd(u, means, log_det, return_log_probs)
    return GMMOutput(loglik, cluster, log_probs if return_log_probs else None)


def filter_split_native(loglik: torch.Tensor, threshold: float):
    return torch.ops.dlsa_prod.filter_split(loglik, float(threshold))
