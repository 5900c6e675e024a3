"""The compiled ops ``torch.ops.dlsa_prod.*`` (extension ``dlsa_prod._C``): loading, fake
(meta) kernels for torch.compile / torch.export, and autograd registration.

Schemas live in csrc/ops.cpp; CPU kernels in csrc/cpu, CUDA kernels in csrc/cuda.
"""

from __future__ import annotations

import torch

from .gmm_torch import GMMOutput
from .precision import ieee_fp32

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
    return "built for " + ", ".join(d.upper() for d in devices)


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

    def setup_context(ctx, inputs, output):
        u, means, log_det, mask, return_log_probs = inputs
        loglik, cluster, log_probs = output
        ctx.has_log_det = log_det is not None
        ctx.mark_non_differentiable(cluster)
        ctx.save_for_backward(u, means, loglik, log_det, mask, log_probs if return_log_probs else None)

    def backward(ctx, grad_loglik, grad_cluster, grad_log_probs):
        u, means, loglik, log_det, mask, log_probs = ctx.saved_tensors
        if grad_loglik is None:
            grad_loglik = torch.zeros_like(loglik)
        if grad_log_probs is not None and grad_log_probs.numel() == 0:
            grad_log_probs = None
        with ieee_fp32():
            grad_u, grad_log_det = torch.ops.dlsa_prod.gmm_loglik_bwd(grad_loglik, grad_log_probs, u, means, loglik,
                                                                      log_det, mask, log_probs)
        return grad_u, None, (grad_log_det if ctx.has_log_det else None), None, None

    torch.library.register_autograd(lib + "gmm_loglik_fwd", backward, setup_context=setup_context)


def gmm_loglik_native(u, means, log_det=None, cluster_mask=None, return_log_probs=False) -> GMMOutput:
    # When a gradient will be needed, materialise log_probs anyway (the kernels form them at
    # no extra cost): autograd saves them and the backward skips recomputing the GEMM.
    needs_grad = torch.is_grad_enabled() and (u.requires_grad or (log_det is not None and log_det.requires_grad))
    with ieee_fp32():  # the CUDA GEMM path uses cuBLAS: never TF32 here
        loglik, cluster, log_probs = torch.ops.dlsa_prod.gmm_loglik_fwd(u, means, log_det, cluster_mask,
                                                                        return_log_probs or needs_grad)
    return GMMOutput(loglik, cluster, log_probs if return_log_probs else None)


def filter_split_native(loglik: torch.Tensor, threshold: float):
    return torch.ops.dlsa_prod.filter_split(loglik, float(threshold))
