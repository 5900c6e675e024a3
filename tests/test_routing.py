"""The routing rule in one place (dlsa_prod/routing.py): the staged and masked forms agree with each
other and with a per-sample reading of the rule, on numpy and torch alike; NaN never exits."""

import numpy as np
import pytest
import torch

from dlsa_prod.array_ops import NUMPY, TorchOps
from dlsa_prod.routing import exits, masked_route, regular_exit, staged_route


def _rule(loglik: np.ndarray, thresholds) -> np.ndarray:
    """The rule read sample by sample: the first depth whose loglik >= threshold, else D + 1."""
    out = []
    for row in loglik:
        d = next((i + 1 for i, (ll, t) in enumerate(zip(row, thresholds)) if ll >= t), len(thresholds) + 1)
        out.append(d)
    return np.array(out)


def test_exits_never_takes_nan():
    ll = np.array([1.0, np.nan, -np.inf, 2.0])
    np.testing.assert_array_equal(exits(ll, 1.0), [True, False, False, True])
    assert torch.equal(exits(torch.from_numpy(ll), 1.0), torch.tensor([True, False, False, True]))
    assert regular_exit(3) == 4


def test_staged_and_masked_routes_agree_with_the_rule():
    rng = np.random.default_rng(0)
    n, depth, c = 200, 3, 5
    loglik = rng.normal(size=(n, depth)).astype(np.float32)
    loglik[rng.random((n, depth)) < 0.05] = np.nan
    thresholds = [0.5, 0.0, -0.3]
    stage_logits = [rng.normal(size=(n, c)).astype(np.float32) for _ in range(depth)]
    regular_logits = rng.normal(size=(n, c)).astype(np.float32)
    want = _rule(loglik, thresholds)
    x = np.arange(n, dtype=np.int64)  # the "features" are row ids, so each stage can look its rows up
    calls = []

    def route(d, xr):
        calls.append((d, len(xr)))
        return loglik[xr, d - 1], np.zeros(len(xr), np.int64)

    logits, exit_depth = staged_route(route, lambda d, xe, ce: stage_logits[d - 1][xe], lambda xr: regular_logits[xr],
                                      x, thresholds, depth, NUMPY)
    np.testing.assert_array_equal(exit_depth, want)
    expected = np.where(want[:, None] == depth + 1, regular_logits, 0)
    for d in range(depth):
        expected = np.where(want[:, None] == d + 1, stage_logits[d], expected)
    np.testing.assert_array_equal(logits, expected)
    assert calls[0] == (1, n) and calls[1][1] == int((want > 1).sum())  # each depth sees only what reached it
    masks = [exits(loglik[:, d], thresholds[d]) for d in range(depth)]
    m_logits, m_exit = masked_route(masks, stage_logits, regular_logits, np.full(n, depth + 1), NUMPY)
    np.testing.assert_array_equal(m_exit, want)
    np.testing.assert_array_equal(m_logits, expected)
    ops = TorchOps(torch.device("cpu"))
    t_logits, t_exit = masked_route([torch.from_numpy(m) for m in masks], [torch.from_numpy(s) for s in stage_logits],
                                    torch.from_numpy(regular_logits), torch.full((n,), depth + 1), ops)
    np.testing.assert_array_equal(t_exit.numpy(), want)
    np.testing.assert_array_equal(t_logits.numpy(), expected)


def test_the_model_routes_an_empty_batch(tiny_config):
    from dlsa_prod.models import DLSAModel

    model = DLSAModel.from_config(tiny_config, 8, 6, 2).eval()
    with torch.no_grad():
        out = model(torch.zeros(0, 8))
    assert out.logits.shape == (0, 6) and out.exit_depth.shape == (0,) and out.loglik.shape == (0, 2)


def _per_cluster_exits(loglik, threshold, cluster=None):
    """A rule that reads the cluster: one threshold per cluster (a vector), else the shipped rule."""
    if getattr(threshold, "ndim", 0) == 1:
        threshold = threshold[cluster]
    return loglik >= threshold


def _install_rule(monkeypatch, rule):
    """Swap routing.exits wherever a module holds it (what editing routing.exits does)."""
    import sys

    import dlsa_prod.routing as routing

    shipped = routing.exits
    for mod in [m for name, m in list(sys.modules.items()) if name.startswith("dlsa_prod") and m is not None]:
        for attr, value in list(vars(mod).items()):
            if value is shipped:
                monkeypatch.setattr(mod, attr, rule)


@pytest.mark.parametrize("crossfit", [0, 2])
def test_a_per_cluster_rule_needs_only_exits_and_the_thresholds(tiny_config, tmp_path, monkeypatch, crossfit):
    """A per-cluster threshold as an experiment: a new routing.exits and thresholds computed per
    cluster (the two places docs/architecture.md names) are all it takes.  Training splits, the
    PyTorch model, the fused graph, cross-fitting, the run directory (save and load) and its metadata
    follow; the samples of the clusters whose threshold is +inf never exit."""
    import dlsa_prod.training.cascade as cascade
    from dlsa_prod.data import load_splits
    from dlsa_prod.models.graphs import FusedGraph
    from dlsa_prod.pipeline import run_training
    from dlsa_prod.run_dir import load_run

    k = tiny_config.gmflow.model.num_cluster
    closed = torch.arange(k) % 2 == 1  # odd clusters never exit
    scalar = cascade.llh_threshold
    monkeypatch.setattr(cascade, "llh_threshold", lambda ll, prop, fixed: torch.where(
        closed, torch.tensor(float("inf")), torch.tensor(scalar(ll, prop, fixed), dtype=torch.float32)))
    _install_rule(monkeypatch, _per_cluster_exits)
    tiny_config.cascade.crossfit_folds = crossfit
    metrics = run_training(tiny_config, tmp_path / "run")
    assert all(isinstance(r["threshold"], list) and len(r["threshold"]) == k
               for r in metrics["depths"] if not r.get("regular"))
    run = load_run(tmp_path / "run")
    x = torch.from_numpy(load_splits(tiny_config.data, tiny_config.seed).test.features)
    with torch.no_grad():
        out = run.model(x)
        fused = FusedGraph(run.model)(x)
        _, cl1 = run.model.stages[0].route(x)
    assert run.model.stages[0].threshold.shape == (k,)
    assert 0 < int((out.exit_depth == 1).sum()) and not bool((out.exit_depth[closed[cl1]] == 1).any())
    assert torch.equal(fused[2], out.exit_depth)
    torch.testing.assert_close(fused[0], out.logits)
    assert metrics["test"]["dlsa"]["accuracy"] == pytest.approx(float((out.pred.numpy() == load_splits(
        tiny_config.data, tiny_config.seed).test.labels).mean()))
