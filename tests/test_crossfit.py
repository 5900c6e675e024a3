"""Cross-fitted routing (cascade.crossfit_folds): folds, leave-one-out priors, and that every
training sample is routed exactly as the deployed flow routes an unseen sample."""

import numpy as np
import pytest
import torch

from dlsa_prod.config import config_from_dict
from dlsa_prod.data import load_splits
from dlsa_prod.evaluation import cascade_predictions
from dlsa_prod.pipeline import seed_everything
from dlsa_prod.training import llh_threshold, train_dlsa
from dlsa_prod.training.flow_trainer import train_flow
from dlsa_prod.training.cluster_stats import cluster_priors, score_flow
from dlsa_prod.training.crossfit import cross_fit, held_out_route_rates, leave_one_out_priors, stratified_folds

from conftest import tiny_config_dict


def test_stratified_folds_spread_every_class_evenly_and_are_seeded():
    y = torch.tensor([0] * 40 + [1] * 7 + [2] * 3 + [3] * 1)
    a = stratified_folds(y, 3, torch.Generator().manual_seed(0))
    b = stratified_folds(y, 3, torch.Generator().manual_seed(0))
    c = stratified_folds(y, 3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.tolist()) == {0, 1, 2}
    for cls in range(4):
        per_fold = torch.bincount(a[y == cls], minlength=3)
        assert int(per_fold.max() - per_fold.min()) <= 1, (cls, per_fold)
    assert int(torch.bincount(a).max() - torch.bincount(a).min()) <= 2


def test_leave_one_out_priors_match_a_brute_force_count():
    g = torch.Generator().manual_seed(3)
    cl = torch.randint(0, 5, (60,), generator=g)
    y = torch.randint(0, 4, (60,), generator=g)
    cl[59] = 4
    cl[cl == 4] = 3
    cl[59] = 4  # cluster 4 holds one sample: uniform prior
    got = leave_one_out_priors(cl, y, 5, 4)
    for i in range(60):
        others = [(int(y[j])) for j in range(60) if j != i and cl[j] == cl[i]]
        want = (torch.bincount(torch.tensor(others, dtype=torch.int64), minlength=4).double() / len(others)
                if others else torch.full((4,), 0.25, dtype=torch.float64))
        torch.testing.assert_close(got[i].double(), want, rtol=0, atol=1e-6)


@pytest.fixture
def crossfit_config(tiny_files, tmp_path):
    train, test = tiny_files
    cfg = config_from_dict(tiny_config_dict(train, test, cascade={"crossfit_folds": 2}))
    cfg.output.dir = tmp_path / "run"
    return cfg


def _fold_flow_setup(cfg):
    """(splits, x, y, generator, fold_flow, calls): fold_flow trains the config's flow and records
    (fold index, training samples) of every call in calls."""
    splits = load_splits(cfg.data, cfg.seed)
    x, y = torch.from_numpy(splits.train.features), torch.from_numpy(splits.train.labels)
    g = seed_everything(0)
    calls = []

    def fold_flow(xf, yf, f):
        calls.append((f, len(yf)))
        return train_flow(xf, yf, splits.num_classes, cfg.gmflow, cfg.filter, g, desc=f"fold {f}")

    return splits, x, y, g, fold_flow, calls


def test_each_training_sample_is_routed_as_an_unseen_sample(crossfit_config):
    splits, x, y, g, fold_flow, calls = _fold_flow_setup(crossfit_config)
    cf = cross_fit(x, y, 2, splits.num_classes, g, fold_flow, lambda ll, _cl: llh_threshold(ll, 0.3, None))
    trained = [n for _, n in calls]
    assert len(trained) == 2 and sum(trained) == len(y)  # each flow left exactly one fold out
    held = cf.fold == 0
    ll, cl = score_flow(cf.flow.model, x[held])
    # the deployed flow routes its held-out fold with its threshold exactly as the cross-fit did
    assert torch.equal(ll >= cf.threshold, cf.exits[held])
    for f in (0, 1):  # every fold exits its llh_proportion of held-out samples
        assert float(cf.exits[cf.fold == f].float().mean()) == pytest.approx(0.3, abs=0.02)
    torch.testing.assert_close(cf.priors, cluster_priors(cl, y[held], cf.flow.model.num_cluster, splits.num_classes))
    torch.testing.assert_close(cf.sample_priors[held],
                               leave_one_out_priors(cl, y[held], cf.flow.model.num_cluster, splits.num_classes))


def test_crossfit_cascade_deploys_the_fold_flow_and_routes_val_with_it(crossfit_config):
    cfg = crossfit_config
    splits = load_splits(cfg.data, cfg.seed)
    res = train_dlsa(splits, cfg, torch.device("cpu"), seed_everything(0))
    _, exits_va = cascade_predictions(res.model, splits.val.features, "cpu")
    np.testing.assert_array_equal(exits_va, res.val_exit_depth)
    shares = np.bincount(res.train_exit_depth, minlength=res.model.depth + 2)[1:]
    assert shares[0] == pytest.approx(0.3 * len(splits.train), abs=3)
    # the flows never routed their own training samples: the training routes are not the
    # deployed model's routes of the training set (it trained on half of it)
    _, exits_tr = cascade_predictions(res.model, splits.train.features, "cpu")
    assert (exits_tr != res.train_exit_depth).any()


def test_crossfit_folds_config_rejects_one_fold(tiny_files):
    from dlsa_prod.errors import DLSAError

    train, test = tiny_files
    with pytest.raises((DLSAError, ValueError), match="crossfit_folds"):
        config_from_dict(tiny_config_dict(train, test, cascade={"crossfit_folds": 1}))


def test_crossfit_run_with_val_chosen_route_prior_strength(tiny_files, tmp_path):
    """A whole run: cross-fitted routing, route priors at a strength chosen on val, exported-form
    model reloaded and scored identically."""
    from dlsa_prod.pipeline import run_training
    from dlsa_prod.run_dir import load_run
    from dlsa_prod.training.head_calibration import STRENGTH_GRID

    train, test = tiny_files
    tree = tiny_config_dict(train, test, baselines=["BSM"],
                            cascade={"crossfit_folds": 2, "route_prior": True, "route_prior_strength": "val"})
    m = run_training(config_from_dict(tree), tmp_path / "run")
    assert m["depths"][-1]["route_prior_strength"] in STRENGTH_GRID
    run = load_run(tmp_path / "run")
    data = np.load(test)
    pred, _ = cascade_predictions(run.model, data["features"].astype(np.float32), "cpu")
    assert float((pred == data["labels"]).mean()) == pytest.approx(m["test"]["dlsa"]["accuracy"])


def test_deployed_routing_trains_one_flow_and_routes_every_sample_with_it(crossfit_config):
    splits, x, y, g, fold_flow, calls = _fold_flow_setup(crossfit_config)
    cf = cross_fit(x, y, 2, splits.num_classes, g, fold_flow, lambda ll, _cl: llh_threshold(ll, 0.3, None),
                   routing="deployed")
    trained = [f for f, _ in calls]
    assert trained == [0]
    ll, cl = score_flow(cf.flow.model, x)
    assert torch.equal(ll >= cf.threshold, cf.exits)  # one flow, one threshold for every sample
    rest = ~cf.held_out
    torch.testing.assert_close(cf.sample_priors[rest], cf.priors[cl[rest]])  # counted on fold 0 only
    with pytest.raises(ValueError, match="routing"):
        cross_fit(x, y, 2, splits.num_classes, g, fold_flow, lambda ll, _cl: llh_threshold(ll, 0.3, None),
                  routing="sideways")


def test_held_out_route_rates_count_the_deployed_flows_held_out_fold_only():
    from dlsa_prod.training.crossfit import CrossFit, held_out_route_rates

    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])
    fold = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    exits = torch.tensor([True, False, False, True, True, True, True, True])
    cf = CrossFit(None, 0.0, None, exits, None, fold, [0.0])
    ex, co = held_out_route_rates(cf, y, 3)
    # fold 0: class 0 has 1 of 3 exiting, class 1 2 of 2, class 2 none at all
    torch.testing.assert_close(ex.exp(), torch.tensor([1.5 / 4, 2.5 / 3, 0.5 / 1]))
    torch.testing.assert_close(co.exp(), torch.tensor([2.5 / 4, 0.5 / 3, 0.5 / 1]))


def test_route_shares_at_depth_two_are_products_of_held_out_rates(crossfit_config, monkeypatch):
    """Depth 2's exit share and the regular classifier's share multiply the held-out rates of every
    depth before them, each counted on that depth's own held-out fold."""
    from dlsa_prod.training import cascade
    from dlsa_prod.training import head_calibration as hc

    cfg = crossfit_config
    cfg.cascade.route_prior = True
    fits, heads = [], {}
    real_fit, real_build = cascade.cross_fit, hc.PendingHead.build.__func__

    def fit_spy(x, y, *args, **kw):
        cf = real_fit(x, y, *args, **kw)
        fits.append((cf, y))
        return cf

    def build_spy(cls, name, model, val, base=None, route=None, offset=None):
        heads[name] = route
        return real_build(cls, name, model, val, base, route, offset)

    monkeypatch.setattr(cascade, "cross_fit", fit_spy)
    monkeypatch.setattr(hc.PendingHead, "build", classmethod(build_spy))
    splits = load_splits(cfg.data, cfg.seed)
    train_dlsa(splits, cfg, torch.device("cpu"), seed_everything(0))
    assert len(fits) == 2
    c = splits.num_classes
    (e1, c1), (e2, c2) = [held_out_route_rates(cf, y, c) for cf, y in fits]
    torch.testing.assert_close(heads["depth 1 cluster-aided"].cpu(), e1)
    torch.testing.assert_close(heads["depth 2 cluster-aided"].cpu(), c1 + e2)
    torch.testing.assert_close(heads["regular classifier"].cpu(), c1 + c2)


def test_an_empty_fold_is_refused_naming_the_key():
    from dlsa_prod.errors import DLSAError

    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(DLSAError, match="crossfit_folds"):
        cross_fit(x, y, 5, 3, torch.Generator().manual_seed(0), None, None)
