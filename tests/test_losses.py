"""Each loss on hand-computed cases."""

import math

import pytest
import torch

from dlsa_prod.training.losses import (BalanceLoss, balanced_softmax_loss, class_weights, likelihood_loss,
                                       purity_loss)


def test_class_weights_hand_computed():
    w = class_weights([100, 25, 0, 50], q=2.0)
    raw = torch.tensor([1.0, 16.0, 0.0, 4.0])
    torch.testing.assert_close(w, raw / raw.sum())


def test_likelihood_loss_hand_computed():
    w = torch.tensor([0.2, 0.8])
    loss = likelihood_loss(torch.tensor([-1.0, -2.0, 3.0]), torch.tensor([0, 1, 1]), w)
    expected = -(0.2 * -1.0 + 0.8 * -2.0 + 0.8 * 3.0) / 3
    assert loss.item() == pytest.approx(expected)


def test_purity_loss_hand_computed():
    lp_pos = torch.log(torch.tensor([[0.5, 0.5, 1e-30]]))
    lp_neg = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    loss = purity_loss(lp_pos, lp_neg)
    expected = 0.5 * math.log(0.25) + 0.5 * math.log(0.25)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_purity_loss_pushes_negative_away_and_freezes_positive():
    lp_pos = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    lp_neg = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    purity_loss(lp_pos, lp_neg).backward()
    assert lp_pos.grad is None or torch.all(lp_pos.grad == 0)
    # gradient descent lowers the negative's log-prob on the positive's main cluster
    assert lp_neg.grad[0, 0] > 0


def test_purity_loss_handles_masked_components():
    lp_pos = torch.tensor([[0.0, float("-inf"), 1.0]])
    lp_neg = torch.tensor([[0.5, float("-inf"), 0.0]])
    assert torch.isfinite(purity_loss(lp_pos, lp_neg))


def test_balance_loss_ema_with_bias_correction():
    bal = BalanceLoss(num_cluster=2, momentum=0.7)
    lp1 = torch.log(torch.tensor([[0.9, 0.1], [0.9, 0.1]]))
    l1 = bal(lp1)
    p = torch.tensor([0.9, 0.1]) + 1e-7  # first step: bias correction recovers the batch mean
    assert l1.item() == pytest.approx(float((p * p.log()).sum() + math.log(2)), rel=1e-5)
    lp2 = torch.log(torch.tensor([[0.5, 0.5]]))
    l2 = bal(lp2)
    ema = 0.7 * 0.3 * p + 0.3 * (torch.tensor([0.5, 0.5]) + 1e-7)
    q = ema / (1 - 0.7 ** 2)
    assert l2.item() == pytest.approx(float((q * q.log()).sum() + math.log(2)), rel=1e-5)


def test_balance_loss_is_zero_for_uniform_posterior():
    bal = BalanceLoss(num_cluster=4, momentum=0.7)
    assert abs(bal(torch.zeros(3, 4)).item()) < 1e-5


def test_balanced_softmax_adds_log_prior():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    prior = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    loss = balanced_softmax_loss(logits, torch.tensor([2]), prior)
    z = logits + prior
    assert loss.item() == pytest.approx(float(-(z[0, 2] - torch.logsumexp(z[0], 0))), rel=1e-6)
