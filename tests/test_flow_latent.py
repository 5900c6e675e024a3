"""cascade.flow_latent: the flow latent as the cluster-aided classifier's second input."""

import numpy as np
import pytest
import torch

from dlsa_prod.config import config_from_dict
from dlsa_prod.evaluation import cascade_predictions
from dlsa_prod.export.bundle import export_bundle
from dlsa_prod.models import FeatureClassifier
from dlsa_prod.pipeline import run_training
from dlsa_prod.run_dir import load_run
from dlsa_prod.training.cascade import warm_state_for_exit

from conftest import tiny_config_dict


def test_latent_warm_start_reproduces_the_base_whatever_the_latent(tiny_config):
    torch.manual_seed(0)
    base = FeatureClassifier(8, 6, tiny_config.regcls.model, uses_prior=False)
    target = FeatureClassifier(8, 6, tiny_config.cacls.model)
    target.load_state_dict(warm_state_for_exit(base, target, latent=True))
    x, prior, z = torch.randn(5, 8), torch.rand(5, 6), torch.randn(5, 8)
    torch.testing.assert_close(target(x, prior, z), base(x))
    # without latent, head_zp keeps the base's feature columns: z = x reproduces the base
    target.load_state_dict(warm_state_for_exit(base, target))
    torch.testing.assert_close(target(x, prior), base(x))


def test_latent_run_uses_the_standardised_latent_reloads_and_exports(tiny_files, tmp_path):
    train, test = tiny_files
    cfg = config_from_dict(tiny_config_dict(train, test, max_depth=1, cascade={"flow_latent": True}))
    metrics = run_training(cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    stage = run.model.stages[0]
    assert stage.uses_latent
    x = torch.from_numpy(np.load(train)["features"].astype(np.float32))
    with torch.no_grad():
        u = stage.latent(x)
        _, cluster = stage.route(x)
        prior = stage.cluster_prior[cluster]
        # standardised on the training samples (the run's train split is most of the file)
        assert u.mean(0).abs().max() < 0.5 and (u.std(0) - 1).abs().max() < 0.5
        # the stage's classifier reads the latent, not the feature twice
        torch.testing.assert_close(stage.classify(x, cluster), stage.classifier(x, prior, u))
        assert not torch.allclose(stage.classify(x, cluster), stage.classifier(x, prior))
    feats = np.load(test)
    pred, _ = cascade_predictions(run.model, feats["features"].astype(np.float32), "cpu")
    assert float((pred == feats["labels"]).mean()) == pytest.approx(metrics["test"]["dlsa"]["accuracy"])
    # exports as is (the classifier graph computes the latent itself) and passes the parity gate
    manifest = export_bundle(tmp_path / "run", tmp_path / "bundle", layouts=("staged",), features=test)
    gate = manifest["parity"]["staged"]
    assert gate["pred_agreement"] == 1.0 and gate["exit_agreement"] == 1.0
