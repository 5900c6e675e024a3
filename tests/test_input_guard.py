"""The input guard: the training set's low quantiles of depth-1 log p(x) stored in the run and the
bundle, Runtime.predict's per-row in_distribution flag on every backend and layout, one-line warnings
in eval, bench and the HTTP example, older bundles without the quantiles, and float images outside
the preprocessing's range."""

import json
import logging
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from dlsa_prod.bundle_spec import read_spec
from dlsa_prod.cli import main
from dlsa_prod.data import write_features
from dlsa_prod.errors import DLSAError
from dlsa_prod.evaluation import cascade_predictions
from dlsa_prod.images.preprocess import Preprocess
from dlsa_prod.input_guard import UNAVAILABLE, WARN_SHARE, InputGuard
from dlsa_prod.run_dir import load_run
from dlsa_prod.runtime import Runtime

from fakes.deploy_run import fake_tensorrt, tiny_run, trt_bundle


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return {**tiny_run(tmp_path_factory), "bundle": trt_bundle(tmp_path_factory)}


def test_guard_quantiles_flags_and_warning_share():
    ll = np.arange(1000, dtype=np.float64)  # 0..999
    g = InputGuard.from_loglik(np.concatenate([ll, [np.nan]]))  # non-finite training values are left out
    assert g.rows == 1000
    assert g.q001 == pytest.approx(np.quantile(ll, 0.001)) and g.q01 == pytest.approx(np.quantile(ll, 0.01))
    assert InputGuard.from_dict(g.to_dict()) == g and InputGuard.from_dict(None) is None
    assert g.in_distribution([g.q001, g.q001 - 1e-3, np.nan]).tolist() == [True, False, False]
    n = 100
    at_share = np.r_[np.full(int(WARN_SHARE * n), -1.0), np.full(n - int(WARN_SHARE * n), 500.0)]
    assert g.warning(at_share) is None  # exactly the share: no warning
    line = g.warning(np.r_[at_share[:-1], -1.0], "batch.npz")
    assert line.startswith("warning: batch.npz: 6 of 100 rows (6.0%)") and "\n" not in line
    assert g.warning(np.array([])) is None


def test_run_and_bundle_store_the_training_quantiles(shared):
    run = load_run(shared["run"])
    guard = InputGuard.from_dict(run.meta["input_guard"])
    from dlsa_prod.run_data import load_run_splits

    train = load_run_splits(run).train
    _p, _e, ll = cascade_predictions(run.model, train.features, "cpu", with_loglik=True)
    assert guard == InputGuard.from_loglik(ll[:, 0]) and guard.rows == len(train)
    assert guard.q001 <= guard.q01
    assert read_spec(shared["bundle"]).input_guard == guard


@pytest.mark.parametrize("backend,layout", [("onnxruntime", "staged"), ("onnxruntime", "fused"),
                                            ("torch", "staged"), ("torch", "fused"), ("tensorrt", "staged")])
def test_predict_returns_loglik_and_in_distribution(shared, backend, layout):
    run = load_run(shared["run"])
    x = shared["test"].features
    _p, _e, ll = cascade_predictions(run.model, x, "cpu", with_loglik=True)
    with fake_tensorrt():
        opts = {"memory": __import__("dlsa_prod.backends.device_memory", fromlist=["x"]).HostMemory()} \
            if backend == "tensorrt" else {}
        rt = Runtime(shared["bundle"], layout=layout, backend=backend, **opts)
        pred = rt.predict(x)
        shifted = rt.predict(x * 16)
    np.testing.assert_allclose(pred.loglik, ll[:, 0], rtol=1e-4, atol=1e-3)
    guard = rt.guard
    assert pred.in_distribution.tolist() == (ll[:, 0] >= guard.q001).tolist()
    assert rt.guard_warning(pred) is None  # the test split looks like the training data
    assert not shifted.in_distribution.any()
    assert "120 of 120 rows (100.0%)" in rt.guard_warning(shifted, "x16")


def test_single_layout_and_older_bundles_report_the_guard_unavailable(shared, tmp_path, monkeypatch):
    from dlsa_prod.export import bundle as export_mod

    header = export_mod._header
    monkeypatch.setattr(export_mod, "_header", lambda *a: {**header(*a), "input_guard": None})
    out = export_mod.export_bundle(shared["run"], tmp_path / "old", layouts=("fused",))
    assert out["input_guard"] is None
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    del manifest["input_guard"]  # a manifest written before the guard existed has no such key
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    rt = Runtime(tmp_path / "old")
    pred = rt.predict(shared["test"].features)
    assert pred.in_distribution is None and pred.loglik is not None
    assert rt.guard_status() == UNAVAILABLE and rt.guard_warning(pred) is None


def test_removing_the_guard_from_a_manifest_is_refused(shared, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(shared["bundle"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["input_guard"] = None
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DLSAError, match="input_guard is missing from the manifest"):
        Runtime(copy)
    manifest["input_guard"] = {"depth": 1, "loglik_quantiles": {"0.001": -1e9, "0.01": -1e8}, "train_rows": 5}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DLSAError, match="input_guard is"):
        Runtime(copy)


def test_eval_warns_in_one_line_on_shifted_features(shared, tmp_path):
    fs = shared["test"]
    scaled = write_features(tmp_path / "x16.npz", type(fs)(fs.features * 16, fs.labels, "x16"))
    r = CliRunner().invoke(main, ["eval", str(shared["run"]), "--features", str(scaled)])
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "below the training set's 0.1% quantile" in warnings[0]
    r = CliRunner().invoke(main, ["eval", str(shared["run"])])
    assert r.exit_code == 0 and "warning:" not in r.output


def test_bench_names_the_guard_and_warns_on_shifted_samples(shared, tmp_path):
    r = CliRunner().invoke(main, ["bench", str(shared["bundle"]), "--batch", "1", "--warmup", "0",
                                  "--duration", "0.01", "--layout", "fused"])
    assert r.exit_code == 0, r.output
    assert "input guard: depth-1 log-likelihood below" in r.output and "warning:" not in r.output
    from dlsa_prod.bench import run_bench

    spec = read_spec(shared["bundle"])
    monkey = spec.load_samples
    spec.load_samples = lambda: monkey() * 16
    _rows, info = run_bench(spec, [1], ["fused"], warmup=0, duration=0.01, threads=1)
    assert info["input_guard"].startswith("warning: ") and "samples.npy" in info["input_guard"]


def test_http_example_returns_the_flag_and_logs_a_warning(shared):
    from test_serving_example import _load_example

    example = _load_example()
    rt = Runtime(shared["bundle"])
    x = shared["test"].features[:4]
    out = example.respond_predictions(rt, x)
    assert out["in_distribution"] == [True] * 4
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("dlsa_prod.serving")  # "dlsa_prod" may not propagate (setup_logging)
    logger.addHandler(handler)
    try:
        out = example.respond_predictions(rt, x * 16)
    finally:
        logger.removeHandler(handler)
    assert out["in_distribution"] == [False] * 4
    assert len(records) == 1 and records[0].getMessage().startswith("warning: POST /predict: 4 of 4 rows")


def test_float_images_outside_the_preprocessing_range_are_refused():
    p = Preprocess((2, 2), 1, (0.0,), (1.0,))
    ok = np.full((1, 2, 2, 1), 0.5)
    assert p.to_nchw(ok).max() == pytest.approx(0.5)
    with pytest.raises(DLSAError, match=r"float images must hold values in \[0, 1\].*got 0\.5\.\.255"):
        p.to_nchw(np.r_[ok, np.full((1, 2, 2, 1), 255.0)])
    with pytest.raises(DLSAError, match=r"got -0\.1\.\.0\.5"):
        p.to_nchw(np.r_[ok, np.full((1, 2, 2, 1), -0.1)])
    p255 = Preprocess.from_dict({**p.to_dict(), "float_max": 255})  # the bundle's preprocessing says 0..255
    assert p255.to_nchw(np.full((1, 2, 2, 1), 255.0)).max() == pytest.approx(1.0)
    assert "float_max" not in p.to_dict() and p255.to_dict()["float_max"] == 255
