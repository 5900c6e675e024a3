"""The shared train-and-select loop, the LR schedule, cluster statistics (which drive flow epoch
selection), non-finite handling and the history columns."""

import logging
import math

import pytest
import torch

from dlsa_prod.config import ClassifierConfig, FilterConfig, GMFlowConfig, OptimConfig
from dlsa_prod.errors import DLSAError
from dlsa_prod.training.classifier_trainer import ClassifierData, train_classifier
from dlsa_prod.training.cluster_stats import cluster_priors, cluster_quality
from dlsa_prod.training.flow_trainer import train_flow
from dlsa_prod.training.schedule import clip_value, lr_factor, set_lr
from dlsa_prod.training.select_loop import EvalResult, LoopSpec, train_and_select

from conftest import blobs


# ----------------------------------------------------------------------------- schedule
def test_lr_schedule_warmup_then_cosine():
    cfg = OptimConfig(lr=0.2, epoch=10, warmup_epochs=2, cos_lr=True)
    f = [lr_factor(e, cfg) for e in range(10)]
    assert f[:2] == pytest.approx([0.5, 1.0])
    assert f[2] == pytest.approx(1.0)  # cosine starts after warm-up at its top
    assert f[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(a >= b for a, b in zip(f[2:], f[3:]))


def test_lr_schedule_steps_and_set_lr():
    cfg = OptimConfig(lr=1.0, epoch=10, steps=[3, 6])
    assert [lr_factor(e, cfg) for e in (0, 2, 3, 5, 6, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5.0)
    assert set_lr(opt, 4, cfg) == pytest.approx(0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert lr_factor(7, OptimConfig(lr=1.0, epoch=10)) == 1.0  # neither cosine nor steps: constant


def test_clip_value():
    assert clip_value(OptimConfig(grad_clip=True)) == 1.0
    assert clip_value(OptimConfig(grad_clip=False)) is None
    assert clip_value(OptimConfig(grad_clip=2.5)) == 2.5
    assert clip_value(OptimConfig(grad_clip=0.0)) is None


# ----------------------------------------------------------------------------- cluster statistics
def test_cluster_priors_hand_computed_and_empty_cluster_uniform():
    cluster = torch.tensor([0, 0, 0, 2, 2])
    labels = torch.tensor([1, 1, 2, 0, 2])
    p = cluster_priors(cluster, labels, num_cluster=3, num_classes=3)
    torch.testing.assert_close(p, torch.tensor([[0, 2 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3], [0.5, 0, 0.5]]))


def test_cluster_quality_hand_computed():
    # cluster 0: 4 of class 1 + 1 of class 0 (purity 0.8, size 5); cluster 1: 2 + 2 (0.5, size 4);
    # cluster 2: 3 of class 2 (1.0, size 3); cluster 3 empty
    cluster = torch.tensor([0] * 5 + [1] * 4 + [2] * 3)
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 2, 2, 2, 2, 2])
    q = cluster_quality(cluster, labels, 4, 3, min_purity=0.7, min_size=3)
    assert (q.good_clusters, q.max_size, q.used_clusters) == (1, 5, 3)  # cluster 2 has size 3, not > 3
    assert q.mean_purity == pytest.approx((4 + 2 + 3) / 12)
    assert q.score(max_cluster_size=6) == 1
    assert q.score(max_cluster_size=5) == -1  # the largest cluster must stay below the cap
    assert cluster_quality(cluster, labels, 4, 3, 0.7, 2).good_clusters == 2


def test_cluster_quality_leaves_out_non_finite_samples_and_is_not_selectable():
    cluster = torch.tensor([0, 0, 0, 7])  # 7: what an op may return for a NaN row (out of range)
    labels = torch.tensor([1, 1, 1, 0])
    ll = torch.tensor([-1.0, -2.0, -3.0, float("nan")])
    q = cluster_quality(cluster, labels, 2, 2, 0.5, 1, loglik=ll)
    assert q.nonfinite == 1 and q.max_size == 3 and q.good_clusters == 1
    assert q.score(100) is None


# ----------------------------------------------------------------------------- the shared loop
def _loop(values, scores, later_wins_ties=False):
    """A one-parameter module whose epoch e 'loss' is values[e] and evaluation score scores[e]."""
    module = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    spec = LoopSpec("toy", len(values), 1, OptimConfig(lr=0.1, epoch=len(values)), ("loss",), "lower toy.lr",
                    later_wins_ties=later_wins_ties)

    def run_epoch(e):
        with torch.no_grad():
            module.weight.fill_(e + 1)  # the state records the epoch
        return torch.tensor([values[e]]), 2

    def evaluate(e):
        return EvalResult(scores[e], {"score": scores[e]}, e + 1)

    return module, train_and_select(module, opt, spec, run_epoch, evaluate)


def test_loop_selects_best_restores_its_state_and_records_history():
    module, sel = _loop([1.0, 2.0, 3.0, 4.0], [0.1, 0.5, None, 0.5])
    assert sel.best_epoch == 2 and sel.best_info == 2 and module.weight.item() == 2.0
    assert [r["loss"] for r in sel.history] == [0.5, 1.0, 1.5, 2.0]  # sums / steps
    _, later = _loop([1.0, 2.0, 3.0, 4.0], [0.1, 0.5, None, 0.5], later_wins_ties=True)
    assert later.best_epoch == 4
    assert not module.training


@pytest.fixture
def warnings_seen(caplog):
    """Warnings of the dlsa_prod loggers (the pipeline's logging setup stops their propagation)."""
    logger = logging.getLogger("dlsa_prod")
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.WARNING):
        yield caplog
    logger.removeHandler(caplog.handler)


def test_loop_stops_on_non_finite_loss_and_keeps_the_selected_epoch(warnings_seen):
    module, sel = _loop([1.0, 2.0, float("nan"), 4.0], [0.1, 0.2, 0.3, 0.4])
    assert sel.stopped_epoch == 3 and sel.best_epoch == 2 and module.weight.item() == 2.0
    assert len(sel.history) == 3 and sel.history[-1]["stopped"] == "non-finite loss"
    assert "became nan in epoch 3; lower toy.lr" in warnings_seen.text


def test_loop_non_finite_before_any_selection_is_one_clear_error():
    with pytest.raises(DLSAError, match=r"^toy: the training loss became inf in epoch 1; lower toy.lr$"):
        _loop([float("inf"), 1.0], [0.1, 0.2])


# ----------------------------------------------------------------------------- the trainers
def _flow_data():
    torch.manual_seed(0)  # the MADE layers draw their initial weights from the global generator
    fs = blobs([120, 80, 50, 30, 18, 10], seed=1)
    return torch.from_numpy(fs.features), torch.from_numpy(fs.labels)


def _flow_cfg(**optim):
    return GMFlowConfig.model_validate({"model": {"num_cluster": 12}, "data": {"batchsize": 64},
                                        "optim": {"lr": 0.05, "epoch": 3, **optim}})


def test_flow_history_keeps_purity_loss_and_cluster_purity_apart():
    x, y = _flow_data()
    res = train_flow(x, y, 6, _flow_cfg(), FilterConfig(min_size=2), torch.Generator().manual_seed(0))
    for row in res.history:
        assert {"loss", "lh", "purity", "balance", "good_clusters", "cluster_purity"} <= set(row)
        assert row["purity"] <= 0  # the loss: sum_k p_pos log q_neg
        assert 0 < row["cluster_purity"] <= 1
        total = 2.0 * row["lh"] + 0.02 * row["purity"] + 1.0 * row["balance"]  # the default lambdas
        assert row["loss"] == pytest.approx(total, rel=1e-4)
    assert res.quality.mean_purity == res.history[res.best_epoch - 1]["cluster_purity"]


def test_flow_with_huge_lr_stops_with_one_line_naming_epoch_and_setting():
    x, y = _flow_data()
    with pytest.raises(DLSAError, match=r"in epoch 1; lower gmflow\.optim\.lr \(now 500\.0\) or set gmflow\.optim\.grad_clip"):
        train_flow(x, y, 6, _flow_cfg(lr=500.0), FilterConfig(min_size=2), torch.Generator().manual_seed(0))


def test_flow_diverging_after_a_selected_epoch_keeps_it_finite(warnings_seen, monkeypatch):
    import dlsa_prod.training.select_loop as select_loop

    def lr_jump(optimizer, epoch, cfg):  # epoch 1 at the configured lr, then a diverging one
        lr = cfg.lr if epoch == 0 else 1e4
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    monkeypatch.setattr(select_loop, "set_lr", lr_jump)
    x, y = _flow_data()
    res = train_flow(x, y, 6, _flow_cfg(epoch=4), FilterConfig(min_size=2), torch.Generator().manual_seed(0))
    assert res.stopped_epoch == 2 and res.best_epoch == 1 and len(res.history) == 2
    assert "in epoch 2; lower gmflow.optim.lr (now 0.05)" in warnings_seen.text
    with torch.no_grad():
        assert torch.isfinite(res.model(x).loglik).all()


def test_classifier_warm_start_and_non_finite_hint():
    torch.manual_seed(0)
    fs = blobs([60, 30, 10], seed=2)
    data = ClassifierData(torch.from_numpy(fs.features), torch.from_numpy(fs.labels))
    cfg = ClassifierConfig.model_validate({"eval_freq": 1, "optim": {"lr": 0.05, "epoch": 3, "momentum": 0.9},
                                           "model": {"inputs": "XZ"}})
    res = train_classifier(data, data, 3, cfg, torch.Generator().manual_seed(0), uses_prior=False)
    assert res.val_accuracy >= 0.85 and len(res.history) == 3
    warm = train_classifier(data, data, 3, cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epoch": 1})}),
                            torch.Generator().manual_seed(0), uses_prior=False, init_state=res.model.state_dict())
    assert warm.val_accuracy >= res.val_accuracy - 1e-9
    bad = ClassifierData(data.x.clone(), data.y)
    bad.x[0, 0] = float("nan")
    with pytest.raises(DLSAError, match=r"became nan in epoch 1; lower regcls\.optim\.lr"):
        train_classifier(bad, data, 3, cfg, torch.Generator().manual_seed(0), uses_prior=False)


def test_no_host_read_per_training_step():
    """Scalar reads (item / _local_scalar_dense, i.e. a device sync on CUDA) must not grow with the
    number of steps: 4x more steps per epoch, the same count."""
    from torch.profiler import ProfilerActivity, profile

    x, y = _flow_data()

    def reads(fn):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return sum(e.name == "aten::_local_scalar_dense" for e in prof.events())

    counts = {}
    for bs in (64, 16):
        fcfg = GMFlowConfig.model_validate({"model": {"num_cluster": 12}, "data": {"batchsize": bs},
                                            "optim": {"lr": 0.05, "epoch": 2}})
        ccfg = ClassifierConfig.model_validate({"eval_freq": 1, "model": {"inputs": "XZ"}, "data": {"batchsize": bs},
                                                "optim": {"lr": 0.05, "epoch": 2}})
        counts[bs] = (reads(lambda: train_flow(x, y, 6, fcfg, FilterConfig(min_size=2), torch.Generator().manual_seed(0))),
                      reads(lambda: train_classifier(ClassifierData(x, y), ClassifierData(x, y), 6, ccfg,
                                                     torch.Generator().manual_seed(0), uses_prior=False)))
    assert counts[64] == counts[16]
    assert counts[16][1] <= 2  # classifier: nothing but the per-epoch validation


def test_classifier_length_in_updates_fits_the_data_size():
    """optim.updates sets the epoch count from the data size (same SGD steps on 1k and 15k samples),
    with at least 10 val checks; it cannot be combined with epoch milestones (one line naming the key)."""
    from dlsa_prod.config import config_from_dict
    from dlsa_prod.errors import ConfigError
    from dlsa_prod.training.schedule import classifier_schedule

    cfg = ClassifierConfig.model_validate({"eval_freq": 2, "data": {"batchsize": 128},
                                           "optim": {"lr": 0.1, "epoch": 20, "updates": 600}})
    assert classifier_schedule(cfg, 1000)[:2] == (75, 2)  # 8 batches per epoch
    epochs, every, optim = classifier_schedule(cfg, 15000)  # 118 batches per epoch
    assert (epochs, every, optim.epoch) == (6, 1, 6) and cfg.optim.epoch == 20
    plain = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"updates": None})})
    assert classifier_schedule(plain, 15000)[:2] == (20, 2)
    fs = blobs([40, 20], seed=3)
    data = ClassifierData(torch.from_numpy(fs.features), torch.from_numpy(fs.labels))
    small = ClassifierConfig.model_validate({"eval_freq": 1, "data": {"batchsize": 32}, "model": {"inputs": "XZ"},
                                             "optim": {"lr": 0.05, "epoch": 50, "updates": 7}})
    assert len(train_classifier(data, data, 2, small, torch.Generator().manual_seed(0), uses_prior=False).history) == 4
    with pytest.raises(ConfigError, match=r"regcls\.optim.*updates: cannot be combined with optim\.steps") as exc:
        config_from_dict({"data": {"train": "a.h5", "test": "b.h5"}, "regcls": {"optim": {"updates": 100, "steps": [5]}}})
    assert "\n" not in str(exc.value)


def test_classifier_learning_rate_chosen_on_val_from_a_list(caplog):
    """optim.lr as a list: every candidate trains exactly as a run with that single lr would (same
    start, same draws), the val-best is kept (and recorded), and a bad list is one line naming the key."""
    from dlsa_prod.config import config_from_dict
    from dlsa_prod.errors import ConfigError
    from dlsa_prod.training.lr_candidates import val_log_loss

    fs = blobs([60, 30, 10], seed=2, spread=1.5)
    data = ClassifierData(torch.from_numpy(fs.features), torch.from_numpy(fs.labels))
    val_fs = blobs([20, 20, 20], seed=2, spread=1.5)  # same centres, balanced
    val = ClassifierData(torch.from_numpy(val_fs.features), torch.from_numpy(val_fs.labels))

    def cfg(lr):
        return ClassifierConfig.model_validate({"eval_freq": 1, "optim": {"lr": lr, "epoch": 3, "momentum": 0.9},
                                                "model": {"inputs": "XZ"}, "data": {"batchsize": 16}})

    def run(lr):
        torch.manual_seed(5)
        return train_classifier(data, val, 3, cfg(lr), torch.Generator().manual_seed(0), uses_prior=False)

    rates = [1e-5, 0.05]
    singles = [run(lr) for lr in rates]
    key = [(-val_log_loss(r.model, val, 3), r.val_accuracy) for r in singles]
    assert key[1] > key[0]  # the tiny lr barely moves from the random start: a higher val log-loss
    with caplog.at_level(logging.INFO):
        chosen = run(rates)
    assert chosen.learning_rate == 0.05 and chosen.val_accuracy == singles[1].val_accuracy
    for a, b in zip(chosen.model.state_dict().values(), singles[1].model.state_dict().values()):
        assert torch.equal(a, b)  # bit-identical to the single-lr run
    assert "lr 0.05 chosen on val from [1e-05, 0.05]" in caplog.text
    # the later candidate wins only when strictly better: the same lr twice keeps the first
    assert run([0.05, 0.05]).learning_rate == 0.05 and run(0.05).learning_rate is None
    for bad, msg in (([], "non-empty"), ([0.1, True], "expected numbers"), ([0.1, -1], "> 0")):
        with pytest.raises(ConfigError, match=rf"regcls\.optim\.lr.*{msg}") as exc:
            config_from_dict({"data": {"train": "a.h5", "test": "b.h5"}, "regcls": {"optim": {"lr": bad}}})
        assert "\n" not in str(exc.value)


def test_learning_rate_candidates_ranked_by_val_log_loss_then_accuracy(monkeypatch):
    """The rule itself: lowest balanced val log-loss, ties to the higher val accuracy, then the list
    order; every candidate sees the same random draws (both generators put back), and the global
    generator is neither drawn from nor written."""
    from types import SimpleNamespace

    from dlsa_prod.training import lr_candidates

    def choose(acc, loss, init=None):
        monkeypatch.setattr(lr_candidates, "val_log_loss", lambda model, val, c: loss[model])
        draws = []

        def train_one(train, val, c, cfg, generator, desc, init_generator=None, **kw):
            draws.append((torch.rand(1, generator=generator).item(), torch.rand(1, generator=init_generator).item()))
            return SimpleNamespace(model=cfg.optim.lr, val_accuracy=acc[cfg.optim.lr])

        data = ClassifierData(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
        cfg = ClassifierConfig.model_validate({"optim": {"lr": list(acc)}})
        before = torch.get_rng_state()
        res = lr_candidates.train_over_learning_rates(train_one, data, data, 2, cfg, torch.Generator().manual_seed(1),
                                                      "c", init_generator=init)
        assert torch.equal(torch.get_rng_state(), before)
        assert len(set(draws)) == 1 and len(draws) == len(acc)
        return res.learning_rate

    assert choose({0.05: 0.8, 0.1: 0.9}, {0.05: 0.3, 0.1: 0.3}, torch.Generator().manual_seed(2)) == 0.1
    assert choose({0.05: 0.8, 0.1: 0.9, 0.2: 0.7}, {0.05: 0.5, 0.1: 0.4, 0.2: 0.3}) == 0.2  # not the val-acc best
    assert choose({0.05: 0.8, 0.1: 0.9, 0.2: 0.7}, {0.05: 0.3, 0.1: 0.3, 0.2: 0.3}) == 0.1  # loss tie: accuracy
    assert choose({0.05: 0.8, 0.1: 0.8}, {0.05: 0.3, 0.1: 0.3}) == 0.05  # full tie: the list order


def test_tune_scales_every_learning_rate_candidate():
    """tune's classifier.lr_scale multiplies each candidate of an lr list (and a single lr)."""
    from dlsa_prod.config import config_from_dict
    from dlsa_prod.tune import SPACE, candidate_overrides

    cfg = config_from_dict({"data": {"train": "a.h5", "test": "b.h5"},
                            "cacls": {"optim": {"lr": 0.2}}, "regcls": {"optim": {"lr": [0.05, 0.1]}}})
    choice = {k: v[0] for k, v in SPACE.items()} | {"classifier.lr_scale": 2.0}
    out = candidate_overrides(choice, cfg)
    assert out["regcls.optim.lr"] == pytest.approx([0.1, 0.2]) and out["cacls.optim.lr"] == pytest.approx(0.4)
