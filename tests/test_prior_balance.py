"""cascade.prior_balance: cluster priors of a class-balanced set."""

import torch

from dlsa_prod.config import config_from_dict
from dlsa_prod.data import load_splits
from dlsa_prod.pipeline import seed_everything
from dlsa_prod.training import train_dlsa
from dlsa_prod.training.cascade import balanced_priors

from conftest import tiny_config_dict


def test_balanced_priors_divide_by_class_counts():
    # cluster 0 holds 90 of class 0's 900 samples and 10 of class 1's 100: 0.9 / 0.1 on the
    # long-tailed set, 0.5 / 0.5 on a balanced one
    p = torch.tensor([[0.9, 0.1], [1.0, 0.0]])
    torch.testing.assert_close(balanced_priors(p, torch.tensor([900, 100])), torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    # a class absent from training does not divide by zero
    assert torch.isfinite(balanced_priors(p, torch.tensor([900, 0]))).all()


def test_deployed_priors_are_the_balanced_histogram(tiny_files):
    train, test = tiny_files
    models = {}
    for flag in (False, True):
        cfg = config_from_dict(tiny_config_dict(train, test, max_depth=1, cascade={"prior_balance": flag}))
        splits = load_splits(cfg.data, cfg.seed)
        models[flag] = train_dlsa(splits, cfg, torch.device("cpu"), seed_everything(0)).model
    counts = torch.bincount(torch.from_numpy(splits.train.labels), minlength=splits.num_classes)
    plain, bal = models[False].stages[0].cluster_prior, models[True].stages[0].cluster_prior
    assert not torch.allclose(plain, bal)
    torch.testing.assert_close(bal, balanced_priors(plain, counts))
