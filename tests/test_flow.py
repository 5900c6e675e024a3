"""Flow invertibility and log-det against the autograd Jacobian, in float64."""

import pytest
import torch

from dlsa_prod.models import MADE, MAF, BatchNormFlow, FlowGMM


def _logdet_autograd(fn, x):
    """log|det J| of a per-sample map, one sample at a time."""
    out = []
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.unsqueeze(0))[0][0], x[i])
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


def _trained_like(module):
    """Non-trivial parameters (fresh init gives near-identity maps)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


@pytest.mark.parametrize("order", ["sequential", "random"])
def test_made_logdet_and_inverse(order):
    g = torch.Generator().manual_seed(0)
    made = _trained_like(MADE(5, 16, 2, torch.randperm(5, generator=g), order, generator=g)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    u, ld = made(x)
    torch.testing.assert_close(ld, _logdet_autograd(made, x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(made.inverse(u), x, rtol=1e-9, atol=1e-9)


def test_made_is_autoregressive():
    made = _trained_like(MADE(6, 24, 1, torch.arange(6))).double()
    x = torch.randn(6, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: made(v.unsqueeze(0))[0][0], x)
    # u_i depends on x_j only for j <= i: strictly upper part is zero
    assert torch.all(torch.triu(jac, diagonal=1) == 0)
    assert torch.all(torch.diagonal(jac) != 0)


def _check_logdet_and_inverse(flow, x, tol):
    """log|det J| against autograd's Jacobian, and inverse(forward(x)) == x."""
    y, ld = flow(x)
    torch.testing.assert_close(ld, _logdet_autograd(flow, x), rtol=tol, atol=tol)
    torch.testing.assert_close(flow.inverse(y), x, rtol=tol, atol=tol)


def test_batchnorm_flow_eval_logdet_and_inverse():
    bn = BatchNormFlow(4).double()
    bn.train()
    bn(torch.randn(64, 4, dtype=torch.float64) * 3 + 1)  # update running stats
    bn = _trained_like(bn).double().eval()
    _check_logdet_and_inverse(bn, torch.randn(5, 4, dtype=torch.float64), 1e-9)


def test_batchnorm_flow_training_uses_batch_stats():
    bn = BatchNormFlow(3)
    bn.train()
    x = torch.randn(256, 3) * 4 + 2
    y, _ = bn(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    assert torch.all(bn.running_mean != 0)


@pytest.mark.parametrize("order", ["sequential", "random"])
def test_maf_logdet_and_inverse(order):
    g = torch.Generator().manual_seed(1)
    maf = MAF(5, 12, n_blocks=3, n_hidden=1, input_order=order, generator=g)
    maf.train()
    maf(torch.randn(128, 5))
    maf = _trained_like(maf).double().eval()
    _check_logdet_and_inverse(maf, torch.randn(4, 5, dtype=torch.float64), 1e-8)


def test_log_scale_soft_clamp_prevents_overflow():
    made = MADE(4, 8, 1, torch.arange(4), log_scale_clamp=3.0)
    with torch.no_grad():
        for p in made.parameters():
            p.fill_(50.0)
    x = torch.randn(3, 4) * 10
    u, ld = made(x)
    assert torch.isfinite(u).all() and torch.isfinite(ld).all()
    _, a = made.shift_and_log_scale(x)
    assert a.abs().max() <= 3.0


def test_flow_gmm_loglik_matches_change_of_variables():
    torch.manual_seed(0)
    model = FlowGMM(4, num_cluster=3, center_std=0.5, hidden_size=8).double().eval()
    x = torch.randn(6, 4, dtype=torch.float64)
    out = model(x, return_log_probs=True)
    u, ld = model.flow(x)
    d = 4
    comp = -0.5 * ((u[:, None, :] - model.means[None]) ** 2).sum(-1) - 0.5 * d * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))
    expected = torch.logsumexp(comp, 1) - torch.log(torch.tensor(3.0, dtype=torch.float64)) + ld
    torch.testing.assert_close(out.loglik, expected)
    assert torch.equal(out.cluster, comp.argmax(1))
