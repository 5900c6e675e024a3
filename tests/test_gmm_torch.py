"""Pure-torch GEMM GMM log-likelihood against a float64 broadcast reference; its IEEE-fp32
guard; the process-wide precision block (dlsa_prod/ops/precision.py) under threads."""

import math
import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dlsa_prod.ops import gmm_loglik, gmm_loglik_broadcast, gmm_loglik_torch
from dlsa_prod.ops.precision import ieee_fp32


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


def test_gradient_matches_reference():
    u, means, log_det = _inputs(5, 4, 6, seed=9)
    u64 = u.double().requires_grad_()
    gmm_loglik_torch(u64, means.double(), log_det.double()).loglik.sum().backward()
    ref = u.double().requires_grad_()
    gmm_loglik_broadcast(ref, means.double(), log_det.double()).loglik.sum().backward()
    torch.testing.assert_close(u64.grad, ref.grad)


class _MatmulPrecision(TorchDispatchMode):
    """Records torch.backends.cuda.matmul.fp32_precision each time aten.mm runs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.mm.default:
            self.seen.append(torch.backends.cuda.matmul.fp32_precision)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def tf32_allowed():
    knob = torch.backends.cuda.matmul
    saved = knob.fp32_precision
    knob.fp32_precision = "tf32"
    yield knob
    knob.fp32_precision = saved


def test_gemm_runs_in_ieee_fp32_under_a_tf32_setting(tf32_allowed):
    """With TF32 allowed globally, the GEMM form's product still runs with the knob at "ieee"
    (checked at the product itself: on CPU the numbers could not show it), and the caller's
    setting is back after the op."""
    u, means, _ = _inputs(32, 16, 64, seed=5)
    base = gmm_loglik_torch(u, means).loglik
    with _MatmulPrecision() as mode:
        again = gmm_loglik(u, means, backend="torch").loglik
    assert mode.seen == ["ieee"]
    assert tf32_allowed.fp32_precision == "tf32"
    torch.testing.assert_close(again, base, rtol=0, atol=0)


def test_ieee_block_is_reference_counted_across_threads(tf32_allowed):
    """Overlapping blocks in two threads, the first one in leaving first: it must not restore
    TF32 under the block still open; the last one out restores the caller's setting."""
    inside, release = threading.Event(), threading.Event()

    def first():
        with ieee_fp32():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(10)
    with ieee_fp32():
        release.set()
        t.join(10)  # the first block has closed; this one is still open
        assert tf32_allowed.fp32_precision == "ieee"
    assert tf32_allowed.fp32_precision == "tf32"


def test_constant_term():
    u = torch.zeros(1, 4)
    means = torch.zeros(1, 4)
    out = gmm_loglik_torch(u, means)
    assert out.loglik.item() == pytest.approx(-2 * math.log(2 * math.pi), rel=1e-6)


@pytest.mark.parametrize("fn", [gmm_loglik_torch, gmm_loglik_broadcast])
def test_non_finite_rows(fn):
    """The documented rule (gmm_torch.py, shared with the native kernels): NaN for a NaN or +inf
    term, -inf when every term is -inf, cluster 0 for both; finite rows untouched."""
    u, means, log_det = _inputs(6, 4, 8, seed=11)
    u[0, 2] = math.nan
    u[1] = 1e30  # |u|^2 overflows in float32: every term -inf
    log_det[2] = math.inf
    log_det[3] = -math.inf
    out = fn(u, means, log_det)
    ll = out.loglik.tolist()
    assert math.isnan(ll[0]) and ll[1] == -math.inf and math.isnan(ll[2]) and ll[3] == -math.inf
    assert out.cluster[:4].tolist() == [0, 0, 0, 0]
    ref = fn(u[4:], means, log_det[4:])
    assert torch.equal(out.loglik[4:], ref.loglik) and torch.equal(out.cluster[4:], ref.cluster)
