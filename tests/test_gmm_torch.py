"""Pure-torch GEMM GMM log-likelihood against a float64 broadcast reference."""

import math

import pytest
import torch

from dlsa_prod.ops import gmm_loglik, gmm_loglik_broadcast, gmm_loglik_torch


def _inputs(b, k, d, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, generator=g)
    means = torch.randn(k, d, generator=g) * 0.5
    log_det = torch.randn(b, generator=g)
    return u, means, log_det


@pytest.mark.parametrize("b,k,d", [(1, 1, 3), (7, 5, 16), (64, 50, 128), (33, 200, 64)])
def test_gemm_matches_float64_broadcast(b, k, d):
    u, means, log_det = _inputs(b, k, d, seed=b * 1000 + k)
    ref = gmm_loglik_broadcast(u.double(), means.double(), log_det.double(), return_log_probs=True)
    out = gmm_loglik_torch(u, means, log_det, return_log_probs=True)
    torch.testing.assert_close(out.loglik.double(), ref.loglik, rtol=2e-6, atol=1e-4)
    torch.testing.assert_close(out.log_probs.double(), ref.log_probs, rtol=2e-6, atol=1e-4)
    # argmax agrees wherever the top-2 gap is above fp32 noise
    top2 = ref.log_probs.topk(min(2, k), dim=1).values
    clear = (top2[:, 0] - top2[:, -1] > 1e-3) | (k == 1)
    assert torch.equal(out.cluster[clear], ref.cluster[clear])


def test_mask_excludes_centres_and_counts_active_k():
    u, means, _ = _inputs(10, 6, 8, seed=3)
    mask = torch.tensor([True, False, True, False, False, True])
    out = gmm_loglik_torch(u, means, cluster_mask=mask, return_log_probs=True)
    sub = gmm_loglik_broadcast(u.double(), means[mask].double())
    torch.testing.assert_close(out.loglik.double(), sub.loglik, rtol=1e-5, atol=1e-4)
    assert mask[out.cluster].all()
    assert torch.isinf(out.log_probs[:, ~mask]).all()


def test_gradient_matches_reference():
    u, means, log_det = _inputs(5, 4, 6, seed=9)
    u64 = u.double().requires_grad_()
    gmm_loglik_torch(u64, means.double(), log_det.double()).loglik.sum().backward()
    ref = u.double().requires_grad_()
    gmm_loglik_broadcast(ref, means.double(), log_det.double()).loglik.sum().backward()
    torch.testing.assert_close(u64.grad, ref.grad)


def test_tf32_setting_does_not_change_result():
    u, means, _ = _inputs(32, 16, 64, seed=5)
    base = gmm_loglik_torch(u, means).loglik
    knob = torch.backends.cuda.matmul
    saved = knob.fp32_precision
    try:
        knob.fp32_precision = "tf32"
        again = gmm_loglik(u, means, backend="torch").loglik
        assert knob.fp32_precision == "tf32"  # restored after the op
    finally:
        knob.fp32_precision = saved
    torch.testing.assert_close(again, base, rtol=0, atol=0)


def test_constant_term():
    u = torch.zeros(1, 4)
    means = torch.zeros(1, 4)
    out = gmm_loglik_torch(u, means)
    assert out.loglik.item() == pytest.approx(-2 * math.log(2 * math.pi), rel=1e-6)
