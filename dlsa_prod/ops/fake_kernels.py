"""Fake (meta) kernels of the ``dlsa_prod`` ops, for torch.compile / torch.export / opcheck.

They check shapes, dtypes and devices as the C++ kernels do (csrc/gmm_common.h), with the same
messages, so a traced program fails where an eager call would; then they return empty
tensors of the output shapes.  ``register`` runs once, when ``dlsa_prod.ops.native`` loads
the extension.
"""

from __future__ import annotations

import torch

_FLOATS = (torch.float32, torch.float64)


def _check_gmm_inputs(u, means, log_det) -> None:
    name = "dlsa_prod::gmm_loglik"
    torch._check(u.dim() == 2, lambda: f"{name}: u must be 2-D (batch, dim), got shape {tuple(u.shape)}")
    torch._check(means.dim() == 2, lambda: f"{name}: means must be 2-D (K, dim), got shape {tuple(means.shape)}")
    torch._check(u.shape[1] == means.shape[1],
                 lambda: f"{name}: u has dim {u.shape[1]} but means have dim {means.shape[1]}")
    torch._check(means.shape[0] >= 1, lambda: f"{name}: means must hold at least one centre")
    torch._check(u.dtype in _FLOATS, lambda: f"{name}: u must be float32 or float64, got {u.dtype}")
    torch._check(means.dtype == u.dtype, lambda: f"{name}: means dtype {means.dtype} differs from u dtype {u.dtype}")
    torch._check(means.device == u.device, lambda: f"{name}: means on {means.device} but u on {u.device}")
    if log_det is not None:
        torch._check(log_det.dim() == 1 and log_det.shape[0] == u.shape[0],
                     lambda: f"{name}: log_det must have shape ({u.shape[0]}), got {tuple(log_det.shape)}")
        torch._check(log_det.dtype == u.dtype,
                     lambda: f"{name}: log_det dtype {log_det.dtype} differs from u dtype {u.dtype}")
        torch._check(log_det.device == u.device, lambda: f"{name}: log_det on {log_det.device} but u on {u.device}")


def _check_bwd_inputs(grad_loglik, grad_log_probs, u, means, loglik, log_probs) -> None:
    name = "dlsa_prod::_gmm_loglik_bwd"
    b, k = u.shape[0], means.shape[0]
    torch._check(grad_loglik.dim() == 1 and grad_loglik.shape[0] == b,
                 lambda: f"{name}: grad_loglik shape {tuple(grad_loglik.shape)}, expected ({b})")
    torch._check(loglik.dim() == 1 and loglik.shape[0] == b,
                 lambda: f"{name}: loglik shape {tuple(loglik.shape)}, expected ({b})")
    for t in (grad_loglik, loglik):
        torch._check(t.dtype == u.dtype and t.device == u.device, lambda: f"{name}: (B) input dtype/device mismatch")
    for t in (grad_log_probs, log_probs):
        if t is not None and t.numel() > 0:
            torch._check(t.dim() == 2 and t.shape[0] == b and t.shape[1] == k,
                         lambda: f"{name}: (B, K) input has shape {tuple(t.shape)}, expected ({b}, {k})")
            torch._check(t.dtype == u.dtype and t.device == u.device,
                         lambda: f"{name}: (B, K) input dtype/device mismatch")


def register() -> None:
    @torch.library.register_fake("dlsa_prod::gmm_loglik_fwd")
    def _fwd_fake(u, means, log_det, return_log_probs):
        _check_gmm_inputs(u, means, log_det)
        b, k = u.shape[0], means.shape[0]
        return (u.new_empty(b), u.new_empty(b, dtype=torch.int64),
                u.new_empty((b, k) if return_log_probs else (0, k)))

    @torch.library.register_fake("dlsa_prod::_gmm_loglik_bwd")
    def _bwd_fake(grad_loglik, grad_log_probs, u, means, loglik, log_det, log_probs):
        _check_gmm_inputs(u, means, log_det)
        _check_bwd_inputs(grad_loglik, grad_log_probs, u, means, loglik, log_probs)
        return u.new_empty(u.shape), u.new_empty(u.shape[0])

    @torch.library.register_fake("dlsa_prod::filter_split")
    def _filter_fake(loglik, threshold):
        torch._check(loglik.dim() == 1,
                     lambda: f"dlsa_prod::filter_split: loglik must be 1-D, got shape {tuple(loglik.shape)}")
        torch._check(loglik.is_floating_point(),
                     lambda: f"dlsa_prod::filter_split: loglik must be floating point, got {loglik.dtype}")
        ctx = torch.library.get_ctx()
        return (loglik.new_empty(ctx.new_dynamic_size(), dtype=torch.int64),
                loglik.new_empty(ctx.new_dynamic_size(), dtype=torch.int64))
