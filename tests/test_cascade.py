"""Training-time split vs DLSAModel inference routing; determinism; run dir round trip."""

import json

import numpy as np
import pytest
import torch

from dlsa_prod.config import config_from_dict
from dlsa_prod.data import load_splits
from dlsa_prod.evaluation import cascade_predictions
from dlsa_prod.pipeline import run_training, seed_everything
from dlsa_prod.run_dir import load_run
from dlsa_prod.training import llh_threshold, train_dlsa

from conftest import tiny_config_dict


def test_threshold_is_train_quantile():
    ll = torch.arange(100, dtype=torch.float32)
    thr = llh_threshold(ll, 0.3, None)
    assert (ll >= thr).sum() == 30
    assert llh_threshold(ll, None, 5.0) == 5.0


def test_inference_routing_matches_training_split(tiny_config):
    splits = load_splits(tiny_config.data, tiny_config.seed)
    res = train_dlsa(splits, tiny_config, torch.device("cpu"), seed_everything(0))
    assert res.model.depth == 2
    _, exits_tr = cascade_predictions(res.model, splits.train.features, "cpu")
    np.testing.assert_array_equal(exits_tr, res.train_exit_depth)
    _, exits_va = cascade_predictions(res.model, splits.val.features, "cpu")
    np.testing.assert_array_equal(exits_va, res.val_exit_depth)
    # every depth is used and ~30% of the remaining training samples exit at each depth
    shares = np.bincount(res.train_exit_depth, minlength=4)[1:]
    assert shares[0] == pytest.approx(0.3 * len(splits.train), abs=2)
    assert shares[1] == pytest.approx(0.3 * (len(splits.train) - shares[0]), abs=2)
    # batch composition does not change a sample's route (eval-mode batch norm)
    out_all = res.model(torch.from_numpy(splits.test.features))
    out_one = [res.model(torch.from_numpy(splits.test.features[i:i + 1])) for i in range(5)]
    for i, o in enumerate(out_one):
        assert o.exit_depth.item() == out_all.exit_depth[i].item()
        torch.testing.assert_close(o.logits[0], out_all.logits[i], rtol=1e-5, atol=1e-5)


def test_same_seed_same_metrics_and_reload(tiny_files, tmp_path):
    train, test = tiny_files
    metrics = []
    for name in ("a", "b"):
        cfg = config_from_dict(tiny_config_dict(train, test))
        metrics.append(run_training(cfg, tmp_path / name))
    strip = lambda m: {k: v for k, v in m.items() if k != "seconds"}
    assert json.dumps(strip(metrics[0]), sort_keys=True) == json.dumps(strip(metrics[1]), sort_keys=True)
    run = load_run(tmp_path / "a")
    pred, exits = cascade_predictions(run.model, np.load(test)["features"].astype(np.float32), "cpu")
    acc = float((pred == np.load(test)["labels"]).mean())
    assert acc == pytest.approx(metrics[0]["test"]["dlsa"]["accuracy"])
    other = run_training(config_from_dict(tiny_config_dict(train, test, seed=1)), tmp_path / "c")
    assert strip(other) != strip(metrics[0])


def test_failed_run_leaves_nothing(tiny_files, tmp_path, monkeypatch):
    train, test = tiny_files
    cfg = config_from_dict(tiny_config_dict(train, test))
    import dlsa_prod.pipeline as pipeline

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(pipeline, "train_baseline", boom)
    with pytest.raises(RuntimeError):
        run_training(cfg, tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.npz", "train.npz"]
