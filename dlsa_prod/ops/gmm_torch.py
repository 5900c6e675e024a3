"""Pure-torch GMM log-likelihood in GEMM form, and the float64 broadcast reference.

For latents u (B, D) and fixed centres mu (K, D) with identity covariance and uniform weights:

    log p_k(u) = -D/2 log(2 pi) - 0.5 |u|^2 + u . mu_k - 0.5 |mu_k|^2 (+ log|det J|)
    log p(u)   = logsumexp_k log p_k(u) - log K,   cluster = first argmax_k log p_k(u)

Non-finite rows, the same rule as the native kernels (csrc/include/dlsa_prod/ops.h):
  * loglik is NaN when any log p_k of the row is NaN or +inf (or the sum overflows);
  * loglik is -inf when every log p_k of the row is -inf (e.g. |u|^2 overflows);
  * whenever loglik is not finite, cluster is 0, so cluster is always in [0, K).

The GEMM form never builds the (B, K, D) difference tensor that the research code does.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from .precision import ieee_fp32


class GMMOutput(NamedTuple):
    loglik: torch.Tensor  # (B,)
    cluster: torch.Tensor  # (B,) int64
    log_probs: Optional[torch.Tensor]  # (B, K) or None


def logsumexp_shifted(logp: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """logsumexp with an explicit max shift: ReduceMax, Sub, Exp, ReduceSum, Log, Add once exported.

    ``torch.logsumexp`` exports as ONNX ReduceLogSumExp, which onnx-tensorrt imports as
    Log(ReduceSum(Exp(x))) with no shift (onnxOpImporters.cpp, ReduceLogSumExp): exp of a GMM
    log-density of -1e2..-1e3 underflows and every row becomes -inf.  A row whose terms are all
    -inf keeps -inf (its max is replaced by 0, so no -inf - -inf = NaN); a NaN or +inf term gives NaN.
    """
    m = torch.amax(logp, dim=dim, keepdim=True)
    m = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    return torch.log(torch.exp(logp - m).sum(dim=dim)) + m.squeeze(dim)


def _finish(logp: torch.Tensor, return_log_probs: bool) -> GMMOutput:
    loglik = logsumexp_shifted(logp, dim=1) - math.log(logp.shape[1])
    cluster = torch.argmax(logp, dim=1)
    finite = torch.isfinite(loglik)
    # +inf (a +inf term or an overflow) is not a likelihood: NaN, as the kernels give
    loglik = torch.where(torch.isposinf(loglik), torch.full_like(loglik, math.nan), loglik)
    cluster = torch.where(finite, cluster, torch.zeros_like(cluster))
    return GMMOutput(loglik, cluster, logp if return_log_probs else None)


def gmm_log_probs_gemm(u: torch.Tensor, means: torch.Tensor, log_det: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, K) per-component log-densities via one matrix product (IEEE fp32, no TF32)."""
    d = u.shape[1]
    with ieee_fp32():
        dot = u @ means.t()
    logp = dot - 0.5 * (u * u).sum(1, keepdim=True) - 0.5 * (means * means).sum(1)
    logp = logp - 0.5 * d * math.log(2 * math.pi)
    if log_det is not None:
        logp = logp + log_det.unsqueeze(1)
    return logp


def gmm_loglik_torch(u, means, log_det=None, return_log_probs=False) -> GMMOutput:
    return _finish(gmm_log_probs_gemm(u, means, log_det), return_log_probs)


def gmm_loglik_broadcast(u, means, log_det=None, return_log_probs=False) -> GMMOutput:
    """The research code's formulation: materialises (B, K, D). Reference and benchmark baseline only."""
    d = u.shape[1]
    logp = -0.5 * (u.unsqueeze(1) - means.unsqueeze(0)).square().sum(-1) - 0.5 * d * math.log(2 * math.pi)
    if log_det is not None:
        logp = logp + log_det.unsqueeze(1)
    return _finish(logp, return_log_probs)
