import numpy as np
import pytest
import torch

from dlsa_prod.config import config_from_dict
from dlsa_prod.data import load_splits
from dlsa_prod.training.baselines import (TAU_GRID, adjust_bias, derived_seed, implied_log_prior, train_baselines)

from conftest import tiny_config_dict


@pytest.fixture
def setup(tiny_files):
    train, test = tiny_files
    cfg = config_from_dict(tiny_config_dict(train, test, baselines=["CE", "BSM", "LA", "cRT"]))
    return cfg, load_splits(cfg.data, cfg.seed)


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_baselines_independent_of_each_other_and_of_dlsa_rng(setup):
    """A baseline's weights depend only on (seed, name): not on which others run, nor on the global RNG."""
    cfg, splits = setup
    all_four = train_baselines(splits, cfg, torch.device("cpu"), ["CE", "BSM", "LA", "cRT"])
    torch.manual_seed(12345)  # DLSA (or anything else) drawing from the global RNG must not matter
    before = torch.get_rng_state()
    only_bsm = train_baselines(splits, cfg, torch.device("cpu"), ["BSM"])  # no cache: trained afresh
    assert torch.equal(torch.get_rng_state(), before)  # and the global generator is left alone
    for k, v in _state(all_four["BSM"].model).items():
        torch.testing.assert_close(v, only_bsm["BSM"].model.state_dict()[k], rtol=0, atol=0)
    other_seed = train_baselines(splits, cfg, torch.device("cpu"), ["BSM"], seed=1)
    assert any(not torch.equal(v, other_seed["BSM"].model.state_dict()[k]) for k, v in _state(only_bsm["BSM"].model).items())
    assert derived_seed(0, "CE") != derived_seed(0, "BSM") != derived_seed(1, "BSM")


def test_la_tau_chosen_on_val_and_baked_into_bias(setup):
    cfg, splits = setup
    out = train_baselines(splits, cfg, torch.device("cpu"), ["LA"])
    la, ce = out["LA"], train_baselines(splits, cfg, torch.device("cpu"), ["CE"])["CE"]
    tau = la.info["tau"]
    losses = la.info["val_log_loss_per_tau"]
    assert tau in TAU_GRID and losses[TAU_GRID.index(tau)] == min(losses)  # the lowest balanced val log-loss
    assert la.val_accuracy == la.info["val_acc_per_tau"][TAU_GRID.index(tau)]
    counts = torch.from_numpy(splits.train_counts()).double()
    log_prior = torch.log(counts / counts.sum()).float()
    # the recorded loss is the class-balanced log-loss of the adjusted logits, recomputed here by hand
    with torch.no_grad():
        nll = -torch.log_softmax(la.model(torch.from_numpy(splits.val.features)).double(), 1)
    y = torch.from_numpy(splits.val.labels)
    nll = nll[torch.arange(len(y)), y]
    by_hand = torch.stack([nll[y == c].mean() for c in y.unique()]).mean()
    assert float(by_hand) == pytest.approx(losses[TAU_GRID.index(tau)], rel=1e-4)
    x = torch.from_numpy(splits.test.features)
    torch.testing.assert_close(la.model(x), ce.model(x) - tau * log_prior, rtol=1e-5, atol=1e-5)


def test_crt_is_class_balanced_ce_from_reinitialised_head(setup):
    cfg, splits = setup
    out = train_baselines(splits, cfg, torch.device("cpu"), ["cRT"])
    assert set(out) == {"cRT"} and out["cRT"].epoch is not None
    ce = train_baselines(splits, cfg, torch.device("cpu"), ["CE"])["CE"]
    assert not torch.equal(out["cRT"].model.head_x[-1].weight, ce.model.head_x[-1].weight)


def test_la_skipped_on_cosine_head(setup):
    cfg, splits = setup
    cfg.regcls.model.type = "cosine"  # no bias to bake tau into: LA is left out (with a warning), the rest train
    out = train_baselines(splits, cfg, torch.device("cpu"), ["LA", "BSM"])
    assert "LA" not in out and "BSM" in out


def test_bias_shift_and_implied_prior():
    from dlsa_prod.config import ClassifierModelConfig
    from dlsa_prod.models import FeatureClassifier

    clf = FeatureClassifier(4, 3, ClassifierModelConfig(inputs="XZ"), uses_prior=False)
    x = torch.randn(5, 4)
    shift = torch.tensor([1.0, -2.0, 0.5])
    torch.testing.assert_close(adjust_bias(clf, shift)(x), clf(x) + shift)
    counts = np.array([90, 9, 1])
    assert torch.allclose(implied_log_prior("CE", counts).exp(), torch.tensor([0.9, 0.09, 0.01]))
    assert torch.allclose(implied_log_prior("BSM", counts).exp(), torch.full((3,), 1 / 3))


def test_cache_reuses_identical_baseline_and_returns_copies(setup):
    from dlsa_prod.training.options import TrainOptions
    from dlsa_prod.training.train_cache import TrainCache

    cfg, splits = setup
    cache = TrainCache()
    a = train_baselines(splits, cfg, torch.device("cpu"), ["BSM"], cache=cache)["BSM"]
    n = cache.count("baseline")
    b = train_baselines(splits, cfg, torch.device("cpu"), ["BSM"], cache=cache)["BSM"]
    assert cache.count("baseline") == n and cache.hits["baseline"] == 1 and a.model is not b.model
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    # another precision: trained again, not reused
    c = train_baselines(splits, cfg, torch.device("cpu"), ["BSM"], options=TrainOptions(precision="bf16"),
                        cache=cache)["BSM"]
    assert cache.count("baseline") == n + 1
    assert any(not torch.equal(v, c.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    cfg.regcls.optim.lr = 0.01  # other settings: trained again
    train_baselines(splits, cfg, torch.device("cpu"), ["BSM"], cache=cache)
    assert cache.count("baseline") == n + 2
    cfg.regcls.eval_freq += 1  # any regcls key, not an allow-list of them
    train_baselines(splits, cfg, torch.device("cpu"), ["BSM"], cache=cache)
    assert cache.count("baseline") == n + 3 and cache.hits["baseline"] == 1
    fresh = TrainCache()  # caches are the caller's: another one starts empty
    train_baselines(splits, cfg, torch.device("cpu"), ["BSM"], cache=fresh)
    assert fresh.count("baseline") == 1 and fresh.hits["baseline"] == 0


def test_each_baseline_trains_on_its_own_seeded_generator(setup, monkeypatch):
    """Every baseline's classifier draws from a generator seeded from (seed, name) alone: never the
    DLSA generator, never one shared between baselines."""
    from dlsa_prod.training import baselines as bl

    cfg, splits = setup
    seen = {}
    real = bl.train_classifier

    def spy(train, val, c, ccfg, generator, *a, desc="", **k):
        seen[desc] = generator.initial_seed()
        return real(train, val, c, ccfg, generator, *a, desc=desc, **k)

    monkeypatch.setattr(bl, "train_classifier", spy)
    train_baselines(splits, cfg, torch.device("cpu"), ["CE", "BSM", "cRT"], seed=7)
    assert seen == {f"baseline {n}": derived_seed(7, n) for n in ("CE", "BSM", "cRT")}
    assert len(set(seen.values())) == 3


def test_learning_rate_list_each_baseline_keeps_its_val_choice(setup):
    """regcls.optim.lr as a list: every baseline records the lr it kept, and equals the single-lr run
    with that lr (the candidates share the baseline's own random streams)."""
    cfg, splits = setup
    listed = cfg.model_copy(deep=True)
    listed.regcls.optim.lr = [0.001, cfg.regcls.optim.lr]
    out = train_baselines(splits, listed, torch.device("cpu"), ["BSM", "cRT"])
    for name, b in out.items():
        lr = b.info["lr"]
        assert lr in listed.regcls.optim.lr
        single = cfg.model_copy(deep=True)
        single.regcls.optim.lr = lr
        ref = train_baselines(splits, single, torch.device("cpu"), [name])[name]
        assert "lr" not in ref.info and ref.epoch == b.epoch
        assert all(torch.equal(v, ref.model.state_dict()[k]) for k, v in b.model.state_dict().items())
