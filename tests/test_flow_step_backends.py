"""A flow training step gives the same losses and gradients with every GMM form."""

import math

import pytest
import torch

from dlsa_prod.config import GMFlowConfig
from dlsa_prod.models import FlowGMM
from dlsa_prod.ops import native
from dlsa_prod.training.flow_trainer import flow_step_losses
from dlsa_prod.training.losses import BalanceLoss, class_weights

BACKENDS = ["torch"] + (["native"] if native.available("cpu") else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_flow_step_matches_broadcast(backend):
    torch.manual_seed(0)
    cfg = GMFlowConfig()
    model0 = FlowGMM(192, 60, 0.05)
    g = torch.Generator().manual_seed(3)
    x_pos, x_neg = torch.randn(96, 192, generator=g) * 2, torch.randn(96, 192, generator=g) * 2
    y = torch.randint(20, (96,), generator=g)
    w = class_weights(torch.randint(3, 300, (20,), generator=g), 2.0)
    results = {}
    for b in ("broadcast", backend):
        model = FlowGMM(192, 60, 0.05, gmm_backend=b)
        model.load_state_dict(model0.state_dict())  # same weights, masks and centres
        losses = flow_step_losses(model, x_pos, y, x_neg, w, BalanceLoss(60, 0.7), cfg)
        losses.total.backward()
        results[b] = (losses, [p.grad.clone() for p in model.parameters()])
    ref, out = results["broadcast"], results[backend]
    for k in ("total", "likelihood", "purity", "balance"):
        a, r = float(getattr(out[0], k).detach()), float(getattr(ref[0], k).detach())
        # the balance loss is a KL near 0 formed as sum p log p + log K: its fp32 rounding is
        # relative to log K, not to its own (tiny) value
        scale = max(abs(r), math.log(60)) if k == "balance" else abs(r)
        assert abs(a - r) <= 1e-4 * scale, (k, a, r)
    for ga, gr in zip(out[1], ref[1]):
        torch.testing.assert_close(ga, gr, rtol=1e-3, atol=1e-5)


def test_gmm_backend_is_a_config_field_fixed_at_construction():
    cfg = GMFlowConfig.model_validate({"model": {"gmm_backend": "torch", "num_cluster": 7}})
    model = FlowGMM.from_config(12, cfg.model)
    assert model.gmm_backend == "torch"
    with pytest.raises(AttributeError):
        model.gmm_backend = "native"  # read-only: the config is the one place that sets it
    with pytest.raises(ValueError, match="gmm_backend must be one of"):
        FlowGMM(12, 7, 0.05, gmm_backend="fast")
