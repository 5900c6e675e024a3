"""The compiled ops ``torch.ops.dlsa_prod.*`` (extension ``dlsa_prod._C``): loading and the
fake (meta) kernels that torch.compile / torch.export need.

Schemas live in csrc/ops.cpp; CPU kernels in csrc/cpu, CUDA kernels in csrc/cuda, and the
autograd of gmm_loglik_fwd in csrc/autograd (C++, so no Python runs on the backward path).
"""

from __future__ import annotations

import torch

from .gmm_torch import GMMOutput
from .precision import ieee_fp32, reduced_cpu_matmul

_state: dict = {"loaded": None, "error": ""}


def _load() -> bool:
    if _state["loaded"] is None:
        try:
            from .. import _C  # noqa: F401  (loading the library registers the ops)
        except ImportError as exc:
            _state.update(loaded=False, error=str(exc))
        else:
            _register()
            _state["loaded"] = True
    return _state["loaded"]


_KERNELS: dict[str, bool] = {}


def available(device: str | torch.device = "cpu") -> bool:
    """Whether the native ops have a kernel for this device type (cached: it is asked per call)."""
    dev = device.type if isinstance(device, torch.device) else torch.device(device).type
    found = _KERNELS.get(dev)
    if found is None:
        key = {"cpu": "CPU", "cuda": "CUDA"}.get(dev)
        found = _load() and key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
            "dlsa_prod::gmm_loglik_fwd", key)
        _KERNELS[dev] = found
    return found


def build_info() -> str:
    if not _load():
        return f"not built (pure-torch GEMM path in use): {_state['error']}"
    devices = [d for d in ("cpu", "cuda") if available(d)]
    return "built for " + ", ".join(d.upper() for d in devices) + f" (CPU row kernels: {cpu_row_isa()})"


def cpu_row_isa() -> str:
    """Which float32 row kernels the CPU ops use here: "avx2+fma" or "portable"."""
    return torch.ops.dlsa_prod.cpu_row_isa() if _load() else "not built"


def _register() -> None:
    lib = "dlsa_prod::"

    @torch.library.register_fake(lib + "gmm_loglik_fwd")
    def _fwd_fake(u, means, log_det, mask, return_log_probs):
        b, k = u.shape[0], means.shape[0]
        return (u.new_empty(b), u.new_empty(b, dtype=torch.int64),
                u.new_empty((b, k) if return_log_probs else (0, k)))

    @torch.library.register_fake(lib + "gmm_loglik_bwd")
    def _bwd_fake(grad_loglik, grad_log_probs, u, means, loglik, log_det, mask, log_probs):
        return torch.empty_like(u), u.new_empty(u.shape[0])

    @torch.library.register_fake(lib + "filter_split")
    def _filter_fake(loglik, threshold):
        ctx = torch.library.get_ctx()
        return (loglik.new_empty(ctx.new_dynamic_size(), dtype=torch.int64),
                loglik.new_empty(ctx.new_dynamic_size(), dtype=torch.int64))


def gmm_loglik_native(u, means, log_det=None, cluster_mask=None, return_log_probs=False) -> GMMOutput:
    # Autograd is registered in C++ (csrc/autograd): when a gradient will be needed it keeps
    # the (B, K) log-densities for the backward itself, whatever return_log_probs says.
    # Precision: the CUDA ops keep cuBLAS in IEEE fp32 themselves (at::NoTF32Guard, forward and
    # backward), whatever the global TF32 setting.  On CPU only an explicit oneDNN bf16/tf32
    # setting could reach at::mm: the forward (likelihoods, routing) is then run in IEEE fp32
    # here, while the backward follows the setting like every other layer's.
    fwd = torch.ops.dlsa_prod.gmm_loglik_fwd.default
    if u.device.type == "cpu" and reduced_cpu_matmul():
        with ieee_fp32():
            loglik, cluster, log_probs = fwd(u, means, log_det, cluster_mask, return_log_probs)
    else:
        loglik, cluster, log_probs = fwd(u, means, log_det, cluster_mask, return_log_probs)
    return GMMOutput(loglik, cluster, log_probs if return_log_probs else None)


def filter_split_native(loglik: torch.Tensor, threshold: float):
    return torch.ops.dlsa_prod.filter_split(loglik, float(threshold))
