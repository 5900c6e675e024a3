"""cascade.exit_train: which samples a depth's cluster-aided classifier is trained on."""

import pytest
import torch

from dlsa_prod.config import config_from_dict
from dlsa_prod.data import load_splits
from dlsa_prod.pipeline import seed_everything
from dlsa_prod.training import cascade, train_dlsa

from conftest import tiny_config_dict


@pytest.mark.parametrize("mode", ["routed", "all"])
def test_exit_classifier_training_set(tiny_files, monkeypatch, mode):
    train, test = tiny_files
    cfg = config_from_dict(tiny_config_dict(train, test, max_depth=1, cascade={"exit_train": mode}))
    splits = load_splits(cfg.data, cfg.seed)
    seen = {}
    real = cascade.train_classifier

    def recording(train_data, val_data, *args, desc="", **kw):
        seen[desc] = (train_data.y.clone(), None if train_data.prior is None else train_data.prior.clone(),
                      len(val_data.y))
        return real(train_data, val_data, *args, desc=desc, **kw)

    monkeypatch.setattr(cascade, "train_classifier", recording)
    res = train_dlsa(splits, cfg, torch.device("cpu"), seed_everything(0))
    y, prior, n_val = seen["depth 1 cluster-aided"]
    report = res.depth_reports[0]
    want = len(splits.train) if mode == "all" else report["train_exit"]
    assert len(y) == want and prior is not None and prior.shape == (want, splits.num_classes)
    assert n_val == report["val_exit"]  # epoch chosen on the val samples that exit, either way
    if mode == "all":
        torch.testing.assert_close(torch.bincount(y, minlength=splits.num_classes),
                                   torch.bincount(torch.from_numpy(splits.train.labels), minlength=splits.num_classes))
