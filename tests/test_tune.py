import json

import numpy as np
import pytest

from dlsa_prod.config import config_from_dict
from dlsa_prod.data import FeatureSet
from dlsa_prod.errors import RunDirError
from dlsa_prod.tune import apply_overrides, draw_candidates, run_tune, small_split_warning, split_val

from conftest import tiny_config_dict


def test_split_val_halves_each_class_disjointly():
    fs = FeatureSet(np.arange(25, dtype=np.float32)[:, None], np.repeat(np.arange(5), 5), "val.h5")
    a, b = split_val(fs, 5, seed=0)
    assert np.bincount(a.labels).tolist() == [3] * 5 and np.bincount(b.labels).tolist() == [2] * 5
    assert not set(a.features[:, 0]) & set(b.features[:, 0]) and len(a) + len(b) == 25
    w = small_split_warning(b, 5, "between configurations")
    assert "val.h5 (selection half)" in w and "< 10 per class" in w
    assert small_split_warning(FeatureSet(np.zeros((20, 1), np.float32), np.repeat([0, 1], 10)), 2, "x") is None


def test_candidates_are_seeded_distinct_and_apply(tiny_files):
    train, test = tiny_files
    cfg = config_from_dict(tiny_config_dict(train, test))
    cands = draw_candidates(cfg, 6, seed=0)
    assert cands[0] == {} and len({json.dumps(c, sort_keys=True) for c in cands}) == 6
    assert cands == draw_candidates(cfg, 6, seed=0) and cands != draw_candidates(cfg, 6, seed=1)
    short = apply_overrides(cfg, cands[1], 1 / 3)
    assert short.cacls.optim.epoch == max(1, round(cands[1]["cacls.optim.epoch"] / 3)) and short.gmflow.optim.epoch == 1
    assert short.cacls.eval_freq <= short.cacls.optim.epoch
    assert short.cacls.loss.type == short.regcls.loss.type == cands[1]["cacls.loss.type"]
    # the learning rate and the training length are searched too (x0.5, x1, x2 of the config's)
    many = draw_candidates(cfg, 40, seed=0)[1:]
    assert {c["regcls.optim.lr"] / cfg.regcls.optim.lr for c in many} == {0.5, 1.0, 2.0}
    assert {c["cacls.optim.epoch"] for c in many} == {3, 6, 12}
    upd = config_from_dict(tiny_config_dict(train, test), overrides=["regcls.optim.updates=100"])
    assert {c["regcls.optim.updates"] for c in draw_candidates(upd, 40, seed=0)[1:]} == {50, 100, 200}


def test_tune_writes_choice_and_resumes(tiny_files, tmp_path, capsys):
    train, test = tiny_files
    tree = tiny_config_dict(train, test, max_depth=1, baselines=["BSM", "LA"])
    tree["gmflow"]["optim"]["epoch"] = 2
    tree["data"]["val_per_class"] = 4
    cfg = config_from_dict(tree)
    out = tmp_path / "tune"
    res = run_tune(cfg, out, candidates=3)
    assert "too small to decide" in capsys.readouterr().err  # 2 per class in the selection half
    assert "selection half" in res["small_val_warning"]
    saved = json.loads((out / "tune_result.json").read_text())
    assert saved["chosen"] == res["chosen"] and saved["test"]["dlsa"]["accuracy"] is not None
    meta = json.loads((out / "run" / "meta.json").read_text())
    assert meta["best_on_val"] == saved["best_on_val"] and saved["best_on_val"]["model"] in ("dlsa", "BSM", "LA")
    assert saved["dlsa_beats_best_baseline_on_val"] == (saved["best_on_val"]["model"] == "dlsa")
    assert (out / "chosen_config.yaml").is_file()
    state = json.loads((out / "tune_state.json").read_text())
    n = len(state["scores"])
    assert n == 3 + 2  # rung 0: all three; rung 1: the best two
    again = run_tune(cfg, out, candidates=3)  # resumes: no candidate is trained again
    err = capsys.readouterr().err
    assert "resuming (5 evaluations done)" in err and "tune rung 0" in err and again["chosen"] == res["chosen"]
    assert "depth 1 flow" not in err.split("tune rung 1")[0]  # no candidate trained before the final run
    assert again["selection_scores"] == res["selection_scores"]


def test_tune_refuses_foreign_directory(tiny_files, tmp_path):
    train, test = tiny_files
    (tmp_path / "mine").mkdir()
    with pytest.raises(RunDirError, match="not a dlsa-prod tune directory"):
        run_tune(config_from_dict(tiny_config_dict(train, test)), tmp_path / "mine", candidates=2)


def test_tune_selection_never_sees_test_data(tiny_files, tmp_path):
    """Scrambling the test labels changes the reported test metrics but no selection score or choice."""
    from dlsa_prod.data import read_features, write_features

    train, test = tiny_files
    fs = read_features(test)
    fs.labels = np.random.default_rng(3).permutation(fs.labels)
    scrambled = write_features(tmp_path / "test_scrambled.npz", fs)
    results = []
    for i, t in enumerate((test, scrambled)):
        tree = tiny_config_dict(train, t, max_depth=1, baselines=["BSM"])
        tree["gmflow"]["optim"]["epoch"] = 2
        results.append(run_tune(config_from_dict(tree), tmp_path / f"tune{i}", candidates=2))
    a, b = results
    assert a["selection_scores"] == b["selection_scores"] and a["chosen"] == b["chosen"]
    assert a["selection_accuracy"] == b["selection_accuracy"] and a["best_on_val"] == b["best_on_val"]
    assert a["test"]["dlsa"]["accuracy"] != b["test"]["dlsa"]["accuracy"]  # the test split did change


def test_tune_refuses_zero_candidates(tiny_files, tmp_path):
    from dlsa_prod.errors import ConfigError

    train, test = tiny_files
    with pytest.raises(ConfigError, match="candidates"):
        run_tune(config_from_dict(tiny_config_dict(train, test)), tmp_path / "t", candidates=0)
    assert not (tmp_path / "t").exists()


def test_candidate_base_follows_the_candidates_classifier_settings(tiny_files):
    """Each candidate's base classifier is trained with its own regcls settings (type, epochs of the rung),
    not reused from an earlier candidate with other settings."""
    import torch

    from dlsa_prod.data import load_splits
    from dlsa_prod.training.options import TrainOptions
    from dlsa_prod.training.train_cache import TrainCache
    from dlsa_prod.tune import base_for

    train, test = tiny_files
    cfg = config_from_dict(tiny_config_dict(train, test, max_depth=1, baselines=["BSM"],
                                            cascade={"warm_start": True, "base": "BSM"}))
    splits = load_splits(cfg.data, cfg.seed)
    opts, cache = TrainOptions(), TrainCache()  # one tune's cache: other settings must not hit it
    full = base_for(cfg, splits, torch.device("cpu"), opts, cache)
    short = base_for(apply_overrides(cfg, {}, 1 / 3), splits, torch.device("cpu"), opts, cache)  # a rung-0 candidate
    cosine = base_for(apply_overrides(cfg, {"regcls.model.type": "cosine"}), splits, torch.device("cpu"), opts, cache)
    assert cache.count("baseline") == 3 and cache.hits["baseline"] == 0
    again = base_for(cfg, splits, torch.device("cpu"), opts, cache)  # the same settings: reused, equal
    assert cache.hits["baseline"] == 1
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in full.state_dict().items())
    assert any(not torch.equal(v, short.state_dict()[k]) for k, v in full.state_dict().items())
    assert set(cosine.state_dict()) != set(full.state_dict()) or any(
        not torch.equal(v, cosine.state_dict()[k]) for k, v in full.state_dict().items())
    assert base_for(apply_overrides(cfg, {"cascade.warm_start": False}), splits, torch.device("cpu"), opts, cache) is None


def test_tune_state_unreadable_starts_afresh(tmp_path, capsys):
    from dlsa_prod.logs import setup_logging
    from dlsa_prod.tune import STATE, TuneState

    setup_logging()
    (tmp_path / STATE).write_bytes(b"{bad \xff")
    state = TuneState(tmp_path, {"config": "x"})
    assert state.data == {"fingerprint": {"config": "x"}, "scores": {}}
    assert "unreadable" in capsys.readouterr().err
    state.put(0, "k", 0.5)
    assert TuneState(tmp_path, {"config": "x"}).get(0, "k") == 0.5


def test_data_digest_changes_with_the_data():
    from dlsa_prod.data import Splits
    from dlsa_prod.tune import data_digest

    fs = FeatureSet(np.zeros((4, 2), np.float32), np.array([0, 0, 1, 1]))
    other = FeatureSet(np.ones((4, 2), np.float32), np.array([0, 0, 1, 1]))
    assert data_digest(Splits(fs, fs, fs, 2)) == data_digest(Splits(fs, fs, other, 2))  # test data: not part of it
    assert data_digest(Splits(fs, fs, fs, 2)) != data_digest(Splits(other, fs, fs, 2))


def test_failed_tune_leaves_no_directory_it_created(tiny_files, tmp_path):
    from dlsa_prod.errors import DLSAError

    train, test = tiny_files
    cfg = config_from_dict(tiny_config_dict(train, test))
    cfg.data.train = tmp_path / "missing.npz"
    with pytest.raises(DLSAError, match="missing.npz"):
        run_tune(cfg, tmp_path / "t", candidates=2)
    assert not (tmp_path / "t").exists()


def test_final_choice_follows_the_one_standard_error_rule():
    from dlsa_prod.tune import pick_final

    # SE of 0.85 on 100 samples is 3.57 points: a 3-point lead is noise, a 4-point lead is not
    assert pick_final({0: 0.85, 3: 0.88}, 100)[0] == 0
    assert "within one standard error" in pick_final({0: 0.85, 3: 0.88}, 100)[1]
    assert pick_final({0: 0.85, 3: 0.89}, 100) == (3, None)
    assert pick_final({0: 0.85, 3: 0.88}, 10_000) == (3, None)  # a large selection split resolves it
    assert pick_final({0: 0.90, 3: 0.88}, 100) == (0, None)
    assert pick_final({2: 0.80, 3: 0.88}, 100) == (3, None)  # without the config as given: the best


def test_the_config_as_given_always_reaches_the_final_rung(tiny_files, tmp_path, monkeypatch):
    """Even when it scores worst at the short rung, the config as given is trained in full and,
    within one standard error of the best, kept."""
    import dlsa_prod.tune as tune

    train, test = tiny_files
    tree = tiny_config_dict(train, test, max_depth=1, baselines=["BSM"])
    tree["gmflow"]["optim"]["epoch"] = 2
    cfg = config_from_dict(tree)
    seen = []
    as_given = {apply_overrides(cfg, {}, f).model_dump_json(): r for r, f in enumerate(tune.RUNG_FRACTIONS)}

    def fake_score(ccfg, splits, select, device, options, cache):
        given = ccfg.model_dump_json() in as_given
        rung = 0 if ccfg.cacls.optim.epoch < cfg.cacls.optim.epoch else 1
        seen.append((rung, given))
        return (0.50 if rung == 0 else 0.80) if given else (0.90 if rung == 0 else 0.81)

    monkeypatch.setattr(tune, "evaluate_candidate", fake_score)
    res = run_tune(cfg, tmp_path / "tune", candidates=6)
    assert (1, True) in seen  # trained with full epochs although it was last at rung 0
    assert res["chosen_index"] == 0  # 0.81 vs 0.80 is within one standard error


def test_final_comparison_keeps_the_baselines_of_the_config_as_given(tiny_files, tmp_path):
    """A cosine candidate changes DLSA only: the baselines (LA included) are the ones `train` runs with
    the config as given, the run directory reloads them, and a cosine config names its dropped LA."""
    import torch

    from dlsa_prod.pipeline import load_data, save_models, score_models, seed_everything, train_models
    from dlsa_prod.run_dir import load_run
    from dlsa_prod.training.baselines import has_bias_head

    train, test = tiny_files
    tree = tiny_config_dict(train, test, max_depth=1, baselines=["BSM", "LA"])
    tree["gmflow"]["optim"]["epoch"] = 2
    cfg = config_from_dict(tree)
    cosine = apply_overrides(cfg, {"regcls.model.type": "cosine", "cacls.model.type": "cosine"})
    splits, _ = load_data(cfg, tmp_path, "cpu", seed_everything(0))
    as_given = train_models(splits, cfg, "cpu", seed_everything(0))
    tuned = train_models(splits, cfg, "cpu", seed_everything(0), cosine)
    assert list(tuned.baselines) == list(as_given.baselines) == ["BSM", "LA"] and tuned.dropped == {}
    for name, b in tuned.baselines.items():
        assert has_bias_head(b.model)
        for p, q in zip(b.model.parameters(), as_given.baselines[name].model.parameters()):
            assert torch.equal(p, q)
    assert tuned.dlsa.model.regular.head_x[-1].__class__.__name__ != "Linear"  # DLSA did take the candidate
    metrics = score_models(tuned, splits, cosine, "cpu")
    save_models(tmp_path, cosine, splits, tuned, None, metrics)
    assert set(load_run(tmp_path).baselines) == {"BSM", "LA"}

    alone = train_models(splits, cosine, "cpu", seed_everything(0))  # `train` with a cosine config
    assert list(alone.baselines) == ["BSM"] and "linear final layer" in alone.dropped["LA"]
    from dlsa_prod.pipeline import comparison_report

    report = comparison_report(score_models(alone, splits, cosine, "cpu"))
    assert "plain LA (not run)" in report and "baseline LA not run: post-hoc logit adjustment" in report
