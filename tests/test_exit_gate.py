"""Soft exit gates (cascade.exit_gate: soft): the gated mixture, its hard limit, the choice on val,
a whole run that reloads and scores identically, and export refusing it."""

import copy

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dlsa_prod.cli import main
from dlsa_prod.config import config_from_dict
from dlsa_prod.data import load_splits
from dlsa_prod.errors import DLSAError
from dlsa_prod.evaluation import cascade_predictions
from dlsa_prod.export.bundle import export_bundle
from dlsa_prod.models import DepthStage, DLSAModel
from dlsa_prod.routing import soft_cascade
from dlsa_prod.pipeline import run_training, seed_everything
from dlsa_prod.run_dir import load_run
from dlsa_prod.training import train_dlsa
from dlsa_prod.training.exit_gate import choose_gates

from conftest import tiny_config_dict


def test_soft_cascade_is_the_gated_recursion():
    e1, e2, reg = (torch.randn(4, 3).log_softmax(1) for _ in range(3))
    ll1, ll2 = torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0, 0.0])
    z = soft_cascade([e1, e2], [ll1, ll2], [None, None], [1.5, 1.5], [(2.0, 0.5), (1.0, -1.0)], reg)
    s1, s2 = torch.sigmoid(2.0 * (ll1 - 1.5) + 0.5), torch.sigmoid(1.0 * (ll2 - 1.5) - 1.0)
    want = s1[:, None] * e1 + (1 - s1[:, None]) * (s2[:, None] * e2 + (1 - s2[:, None]) * reg)
    torch.testing.assert_close(z, want)
    # None: the hard cut, the first depth whose log-likelihood reaches its threshold takes the sample
    hard = soft_cascade([e1, e2], [ll1, ll2], [None, None], [1.5, 1.5], [None, None], reg)
    torch.testing.assert_close(hard, torch.stack([e2[0], e2[1], e1[2], e1[3]]))


def _gated_copy(model: DLSAModel, slope: float, offset: float) -> DLSAModel:
    stages = []
    for s in model.stages:
        g = DepthStage(copy.deepcopy(s.filter), copy.deepcopy(s.classifier), model.num_classes, gated=True)
        g.load_state_dict({**s.state_dict(), "gate_slope": torch.tensor(slope), "gate_offset": torch.tensor(offset)})
        stages.append(g)
    return DLSAModel(stages, copy.deepcopy(model.regular), model.num_classes).eval()


@pytest.fixture(scope="module")
def hard_cascade(tmp_path_factory):
    from conftest import blobs
    from dlsa_prod.data import write_features

    d = tmp_path_factory.mktemp("gate")
    train, test = blobs([120, 80, 50, 30, 18, 10], seed=1), blobs([20] * 6, seed=1)
    rng = np.random.default_rng(7)
    test.features = test.features + 0.3 * rng.normal(size=test.features.shape).astype(np.float32)
    files = write_features(d / "train.npz", train), write_features(d / "test.npz", test)
    cfg = config_from_dict(tiny_config_dict(*files))
    splits = load_splits(cfg.data, cfg.seed)
    return files, splits, train_dlsa(splits, cfg, torch.device("cpu"), seed_everything(0)).model


def test_steep_gate_is_the_hard_cascade_and_exit_depths_stay_hard(hard_cascade):
    _, splits, model = hard_cascade
    x = torch.from_numpy(splits.test.features)
    hard = model(x)
    steep = _gated_copy(model, 1e4, 0.0)(x)
    np.testing.assert_array_equal(steep.pred.numpy(), hard.pred.numpy())
    np.testing.assert_array_equal(steep.exit_depth.numpy(), hard.exit_depth.numpy())
    torch.testing.assert_close(torch.nan_to_num(steep.loglik, -1.0), torch.nan_to_num(hard.loglik, -1.0))
    # slope 0, offset 0: every depth mixes half and half
    flat = _gated_copy(model, 0.0, 0.0)(x)
    np.testing.assert_array_equal(flat.exit_depth.numpy(), hard.exit_depth.numpy())
    with torch.no_grad():
        e = [s.classify(x, s.route(x)[1]).log_softmax(1) for s in model.stages]
        want = 0.5 * e[0] + 0.5 * (0.5 * e[1] + 0.5 * model.regular(x).log_softmax(1))
    torch.testing.assert_close(flat.logits, want)


class _Stage(torch.nn.Module):
    """A stage whose log-likelihood is x[:, 0] and whose classifier returns fixed logits."""

    def __init__(self, logits, threshold):
        super().__init__()
        self.logits = logits
        self.register_buffer("threshold", torch.tensor(threshold))

    def route(self, x):
        return x[:, 0], torch.zeros(len(x), dtype=torch.int64)

    def classify(self, x, cluster):
        return self.logits


class _Model:
    def __init__(self, exit_logits, reg_logits, threshold):
        self.stages = [_Stage(exit_logits, threshold)]
        self.regular = lambda x: reg_logits


def test_gate_chosen_on_val_follows_the_better_classifier():
    n = 40
    y = torch.arange(n) % 2
    right, wrong = 5.0 * torch.nn.functional.one_hot(y, 2).float(), 5.0 * torch.nn.functional.one_hot(1 - y, 2).float()
    x = torch.linspace(-1, 1, n)[:, None]  # half of the samples reach the threshold 0
    # the exit classifier right everywhere, the regular one wrong: the gate opens for every val sample
    (slope, offset), = choose_gates(_Model(right, wrong, 0.0), x, y)
    s = torch.sigmoid(slope * x[:, 0] + offset)
    assert (s > 0.5).all()
    # the reverse: the gate closes for every val sample
    (slope, offset), = choose_gates(_Model(wrong, right, 0.0), x, y)
    assert (torch.sigmoid(slope * x[:, 0] + offset) < 0.5).all()


def test_soft_run_reloads_scores_identically_and_export_refuses(tmp_path, hard_cascade):
    (train, test), _, _ = hard_cascade
    cfg = config_from_dict(tiny_config_dict(train, test, cascade={"exit_gate": "soft"}))
    metrics = run_training(cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert all(s.gated for s in run.model.stages)
    depth_reports = metrics["depths"]
    assert [set(r["exit_gate"]) for r in depth_reports[:-1]] == [{"slope", "offset"}] * run.model.depth
    feats = np.load(test)
    pred, _ = cascade_predictions(run.model, feats["features"].astype(np.float32), "cpu")
    assert float((pred == feats["labels"]).mean()) == pytest.approx(metrics["test"]["dlsa"]["accuracy"])
    with pytest.raises(DLSAError, match="cascade.exit_gate: soft runs cannot be exported"):
        export_bundle(tmp_path / "run", tmp_path / "bundle", features=test)
    res = CliRunner().invoke(main, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "b2")])
    assert res.exit_code == 2 and "cascade.exit_gate" in res.output and not (tmp_path / "b2").exists()
    assert len(res.output.strip().splitlines()) == 1
    # a baseline of the same run still exports (no routing)
    export_bundle(tmp_path / "run", tmp_path / "bundle_ce", features=test, model="CE")


def test_exit_gate_rejects_unknown_values(hard_cascade):
    (train, test), _, _ = hard_cascade
    with pytest.raises(DLSAError, match="exit_gate"):
        config_from_dict(tiny_config_dict(train, test, cascade={"exit_gate": "fuzzy"}))
