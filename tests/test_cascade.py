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

    monkeypatch.setattr(pipeline, "train_baselines", boom)
    with pytest.raises(RuntimeError):
        run_training(cfg, tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.npz", "train.npz"]


def test_cascade_options_prior_shift_mix_warm_start(tiny_files, tmp_path):
    """The cascade options train, route per class, and are recorded; prior shift reuses the base
    classifier with a bias shift (no training of the regular classifier)."""
    train, test = tiny_files
    tree = tiny_config_dict(train, test, baselines=["BSM"],
                            cascade={"regular": "prior_shift", "mix_base": True, "warm_start": True,
                                     "prior_temperature": 2.0, "llh_proportions": [0.2, 0.5]})
    m = run_training(config_from_dict(tree), tmp_path / "run")
    reg = m["depths"][-1]
    assert reg["regular"] and reg["prior_shift"] and reg["classifier_epoch"] is None
    assert all(d["base_mix_weight"] in (0.0, 0.25, 0.5, 0.75, 1.0) for d in m["depths"][:-1])
    rows = m["test"]["dlsa"]["routing_by_class"]
    assert len(rows) == len(m["depths"]) and all(len(r) == 6 for r in rows)
    assert np.allclose(np.sum(np.array(rows, dtype=float), axis=0), 1.0)  # every class's test samples exit somewhere
    assert m["best_on_val"]["model"] in ("dlsa", "BSM") and m["best_on_val"]["best_baseline"] == "BSM"
    logged = (tmp_path / "run" / "train.log").read_text()
    assert "routing per class" in logged and "best baseline on val (lowest class-balanced log-loss): plain BSM; " \
        "DLSA - plain BSM: overall" in logged


def test_per_depth_proportion_and_tempered_priors():
    from dlsa_prod.training.cascade import depth_proportion, tempered_priors

    cfg = config_from_dict({"data": {"source": "digits"}, "cascade": {"llh_proportions": [0.2, 0.4]}})
    assert [depth_proportion(cfg, d) for d in (1, 2, 3)] == [0.2, 0.4, 0.4]
    p = torch.tensor([[0.8, 0.2, 0.0]])
    assert torch.allclose(tempered_priors(p, 1.0), p)
    flat = tempered_priors(p, 2.0)
    assert torch.allclose(flat.sum(1), torch.ones(1)) and flat[0, 0] < 0.8 and flat[0, 2] == 0


def test_mix_with_base_folds_logits():
    """Folding (1 - w) * exit + w * base into one cluster-aided classifier equals mixing the logits."""
    from dlsa_prod.config import ClassifierModelConfig
    from dlsa_prod.models import FeatureClassifier
    from dlsa_prod.training.cascade import mix_with_base, warm_state_for_exit

    torch.manual_seed(0)
    exit_clf = FeatureClassifier(5, 3, ClassifierModelConfig(inputs="XZP"))
    base = FeatureClassifier(5, 3, ClassifierModelConfig(inputs="XZ"), uses_prior=False)
    x, p = torch.randn(7, 5), torch.softmax(torch.randn(7, 3), 1)
    mixed = mix_with_base(exit_clf, base, 0.25)
    torch.testing.assert_close(mixed(x, p), 0.75 * exit_clf(x, p) + 0.25 * base(x))
    warm = FeatureClassifier(5, 3, ClassifierModelConfig(inputs="XZP"))
    warm.load_state_dict(warm_state_for_exit(base, warm))
    torch.testing.assert_close(warm(x, p), base(x))  # prior columns start at zero


def test_flow_cache_hit_reproduces_a_fresh_training(tiny_config):
    """A reused flow (and the generator states restored after it) gives exactly the fresh result;
    neither a hit nor a miss reads or writes the global generator."""
    from dlsa_prod.training.train_cache import TrainCache

    splits = load_splits(tiny_config.data, tiny_config.seed)
    x = torch.from_numpy(splits.test.features)
    cache = TrainCache()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    fresh = train_dlsa(splits, tiny_config, torch.device("cpu"), torch.Generator().manual_seed(0), cache=cache)
    assert torch.equal(torch.get_rng_state(), before)  # a miss leaves the global generator as it was
    assert cache.count("flow") == 2 and cache.hits["flow"] == 0  # one flow per depth
    torch.manual_seed(999)  # another global state: must not matter
    before = torch.get_rng_state()
    reused = train_dlsa(splits, tiny_config, torch.device("cpu"), torch.Generator().manual_seed(0), cache=cache)
    assert torch.equal(torch.get_rng_state(), before)  # nor does a hit
    assert cache.count("flow") == 2 and cache.hits["flow"] == 2
    uncached = train_dlsa(splits, tiny_config, torch.device("cpu"), torch.Generator().manual_seed(0))
    for res in (reused, uncached):
        torch.testing.assert_close(res.model(x).logits, fresh.model(x).logits, rtol=0, atol=0)
        assert torch.equal(res.model(x).exit_depth, fresh.model(x).exit_depth)
    other = tiny_config.model_copy(deep=True)
    other.filter.min_purity = 0.1  # a filter key the flow's quality report reads: a new key, not a stale flow
    train_dlsa(splits, other, torch.device("cpu"), torch.Generator().manual_seed(0), cache=cache)
    assert cache.hits["flow"] == 2


def test_dlsa_weights_come_from_the_seeded_init_stream(tiny_config):
    """The modules' initial weights are drawn from the init generator passed in (default
    module_init_generator(cfg.seed)): another init generator gives another model."""
    from dlsa_prod.training.random_streams import module_init_generator

    splits = load_splits(tiny_config.data, tiny_config.seed)
    x = torch.from_numpy(splits.test.features)
    a = train_dlsa(splits, tiny_config, torch.device("cpu"), torch.Generator().manual_seed(0),
                   init_generator=module_init_generator(tiny_config.seed)).model(x)
    b = train_dlsa(splits, tiny_config, torch.device("cpu"), torch.Generator().manual_seed(0),
                   init_generator=torch.Generator().manual_seed(tiny_config.seed + 1)).model(x)
    assert not torch.equal(a.logits, b.logits)


def test_route_prior_is_log_route_share_minus_trained_prior():
    """BSM-trained classifiers (uniform prior) get log(route share); plain-CE ones also lose their subset prior."""
    from dlsa_prod.config import ClassifierConfig
    from dlsa_prod.training.cascade import route_log_prior, route_shift

    labels = np.array([0] * 9 + [1] * 3)
    reaches = np.array([True] * 3 + [False] * 6 + [True] * 3)  # a third of class 0, all of class 1
    expected = torch.log(torch.tensor([3.5 / 10, 3.5 / 4]))
    torch.testing.assert_close(route_log_prior(labels, reaches, 2), expected)
    bsm = ClassifierConfig.model_validate({"loss": {"type": "BSM"}})
    ce = ClassifierConfig.model_validate({"loss": {"type": "CE"}})
    y_sub = torch.tensor([0, 0, 0, 1, 1, 1])
    torch.testing.assert_close(route_shift(bsm, y_sub, labels, reaches, 2), expected)
    torch.testing.assert_close(route_shift(ce, y_sub, labels, reaches, 2), expected - torch.log(torch.tensor([0.5, 0.5])))


def _head(name, logits, y, route=None, offset=None, base_logits=None):
    from dlsa_prod.training.head_calibration import PendingHead

    return PendingHead(name, None, torch.tensor(y), torch.tensor(logits), base_logits, route, offset)


def test_route_prior_strength_is_chosen_on_the_whole_cascade_val():
    """tau scales only the route part; 'val' takes the grid entry with most val samples right over
    all heads (ties: the stronger prior); a fixed strength is used as given."""
    from dlsa_prod.training.head_calibration import choose_strength

    route = torch.log(torch.tensor([0.9, 0.1]))  # class 0 mostly routed here
    # three samples of class 1 with a margin of 1.0 for class 1: the full prior (2.2 nats) flips
    # all of them, half of it (1.1) flips them too, a quarter (0.55) keeps them right
    a = _head("a", [[0.0, 1.0]] * 3 + [[0.5, 0.0]], [1, 1, 1, 0], route=route)
    b = _head("b", [[0.0, 0.2]], [0], route=route)  # needs at least 0.2 / 2.2 of the prior
    tau, mixes = choose_strength([a, b], "val")
    assert tau == 0.25 and mixes == {"a": None, "b": None}
    assert choose_strength([a, b], 1.0)[0] == 1.0
    # the offset (the trained prior to remove) stays whole whatever tau
    c = _head("c", [[0.0, 0.0]], [0], route=route, offset=torch.tensor([0.0, 5.0]))
    torch.testing.assert_close(c.shift(0.0), torch.tensor([0.0, 5.0]))
    torch.testing.assert_close(c.shift(0.5), 0.5 * route + torch.tensor([0.0, 5.0]))
    # every tau gets it right: ties prefer the stronger prior
    d = _head("d", [[1.0, 0.0]], [0], route=route)
    assert choose_strength([d], "val")[0] == 1.0


def test_mixing_weight_is_chosen_jointly_with_the_strength():
    from dlsa_prod.training.head_calibration import choose_strength

    # exit logits wrong, base logits right: only full mixing gets them (ties would take less)
    h = _head("e", [[4.0, 0.0]] * 2, [1, 1], route=torch.zeros(2),
              base_logits=torch.tensor([[0.0, 1.0]] * 2))
    tau, mixes = choose_strength([h], "val")
    assert mixes["e"] == 1.0


def test_log_loss_calibration_is_the_cascade_class_balanced_log_loss_minimum():
    """calibrate_by log_loss: the (tau, mixing weights) chosen are the grid point with the lowest
    class-balanced log-loss of the whole cascade's val logits (selection.val_scores, the selection
    rule's criterion), found by brute force over every combination; accuracy keeps its tie rule."""
    import itertools

    from dlsa_prod.selection import val_scores
    from dlsa_prod.training.head_calibration import MIX_GRID, STRENGTH_GRID, choose_strength

    g = torch.Generator().manual_seed(3)
    route = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    # unbalanced val (class 2 has one sample): the weights must be per class, not per sample
    ya, yb = [0, 0, 0, 1, 2], [1, 1, 0, 0]
    a = _head("a", torch.randn(5, 3, generator=g).tolist(), ya, route=route,
              base_logits=torch.randn(5, 3, generator=g))
    b = _head("b", torch.randn(4, 3, generator=g).tolist(), yb, route=-route)
    labels = np.array(ya + yb)
    best = None
    for tau, w in itertools.product(STRENGTH_GRID, MIX_GRID):
        la = (1 - w) * a.val_logits + w * a.base_logits + a.shift(tau)
        lb = b.val_logits + b.shift(tau)
        loss = val_scores(torch.cat([la, lb]).numpy(), labels, 3)["balanced_log_loss"]
        if best is None or loss < best[0] - 1e-12:
            best = (loss, tau, w)
    tau, mixes = choose_strength([a, b], "val", "log_loss")
    assert (tau, mixes["a"], mixes["b"]) == (best[1], best[2], None)
    # where every weight gets the samples right, accuracy keeps the least mixing; log-loss moves
    sure = _head("s", [[2.0, 0.0]] * 2, [0, 0], route=torch.zeros(2), base_logits=torch.tensor([[6.0, 0.0]] * 2))
    assert choose_strength([sure], "val")[1]["s"] == 0.0
    assert choose_strength([sure], "val", "log_loss")[1]["s"] == 1.0
    with pytest.raises(ValueError, match="calibration criterion"):
        choose_strength([sure], "val", "f1")


def test_calibrate_by_is_checked_by_the_config():
    from dlsa_prod.errors import DLSAError

    assert config_from_dict({"data": {"source": "digits"}, "cascade": {"calibrate_by": "log_loss"}}
                            ).cascade.calibrate_by == "log_loss"
    with pytest.raises((DLSAError, ValueError), match="calibrate_by"):
        config_from_dict({"data": {"source": "digits"}, "cascade": {"calibrate_by": "f1"}})


def test_strength_zero_prior_shift_regular_is_the_base_classifier(tiny_files, tmp_path):
    """route_prior_strength 0 with prior_shift: the regular classifier predicts exactly as the base."""
    train, test = tiny_files
    tree = tiny_config_dict(train, test, baselines=["BSM"], max_depth=1,
                            cascade={"regular": "prior_shift", "route_prior": True, "route_prior_strength": 0.0})
    m = run_training(config_from_dict(tree), tmp_path / "run")
    assert m["depths"][-1]["route_prior_strength"] == 0.0
    run = load_run(tmp_path / "run")
    x = torch.randn(16, run.model.regular.head_x[0].weight.shape[1])
    with torch.no_grad():
        diff = run.model.regular(x) - run.baselines["BSM"](x)
    torch.testing.assert_close(diff, torch.full_like(diff, float(diff[0, 0])))  # one constant: the same argmax


def test_prior_shift_keeps_a_base_with_hidden_layers(tiny_files, tmp_path):
    """prior_shift needs only a linear final layer with a bias (what adjust_bias shifts), not a plain
    linear head: a base with a hidden layer is shifted, not replaced by a newly trained classifier."""
    train, test = tiny_files
    tree = tiny_config_dict(train, test, baselines=["BSM"], max_depth=1, cascade={"regular": "prior_shift"})
    tree["regcls"]["model"] = {"inputs": "XZ", "hidden_layers": [8]}
    m = run_training(config_from_dict(tree), tmp_path / "run")
    assert m["depths"][-1]["prior_shift"] and m["depths"][-1]["classifier_epoch"] is None


@pytest.mark.parametrize("bad", ["maybe", 5, True, -0.5])
def test_route_prior_strength_refuses_anything_but_val_or_a_number_in_range(bad):
    from dlsa_prod.errors import DLSAError

    with pytest.raises((DLSAError, ValueError), match="route_prior_strength must be \"val\" or a number"):
        config_from_dict({"data": {"source": "digits"}, "cascade": {"route_prior_strength": bad}})


def test_cosine_head_is_left_unshifted_before_the_strength_is_chosen(caplog):
    """A head that cannot take a bias shift (cosine) drops its route prior before tau is chosen, so the
    strength line and its val accuracy describe the kept (unshifted) model, and no strength is claimed
    when no head can be shifted (issue 17: the log said 'strength 0.75 chosen ... 0.82' for a 0.80 model)."""
    import logging

    from dlsa_prod.config import ClassifierModelConfig
    from dlsa_prod.models import FeatureClassifier
    from dlsa_prod.training.classifier_trainer import ClassifierData
    from dlsa_prod.training.head_calibration import PendingHead, choose_strength

    torch.manual_seed(0)
    model = FeatureClassifier(3, 2, ClassifierModelConfig(type="cosine", inputs="XZ"), uses_prior=False)
    val = ClassifierData(torch.randn(8, 3), torch.tensor([0, 1] * 4))
    log = logging.getLogger("dlsa_prod")
    propagate, log.propagate = log.propagate, True
    try:
        with caplog.at_level(logging.INFO, logger="dlsa_prod"):
            head = PendingHead.build("regular", model, val, route=torch.log(torch.tensor([0.9, 0.1])))
            tau, _ = choose_strength([head], "val")
    finally:
        log.propagate = propagate
    assert head.route is None and head.shift(tau) is None and head.fold(None, None, tau) is model
    text = caplog.text
    assert "route prior needs a linear classifier; left unshifted" in text and "chosen on val" not in text
