"""Bundles: export + parity gate, runtime (fused / staged, threads, validation), bad bundles,
TensorRT preparation, Triton repository, CLI."""

import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from dlsa_prod.cli import main
from dlsa_prod.config import config_from_dict
from dlsa_prod.errors import DLSAError
from dlsa_prod.export.bundle import export_bundle
from dlsa_prod.export.manifest import BundleError, read_manifest
from dlsa_prod.export.parity import ParityError, borderline
from dlsa_prod.export.tensorrt_build import (BatchProfile, batch_profile, cache_key, check_engine_compatible,
                                             import_tensorrt)
from dlsa_prod.export.triton import write_triton_repository
from dlsa_prod.pipeline import run_training
from dlsa_prod.run_dir import load_run
from dlsa_prod.runtime import Runtime

from conftest import blobs, tiny_config_dict


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from dlsa_prod.data import write_features

    d = tmp_path_factory.mktemp("export")
    train = write_features(d / "train.npz", blobs([120, 80, 50, 30, 18, 10], seed=1))
    test_fs = blobs([20] * 6, seed=1)
    test_fs.features += 0.3 * np.random.default_rng(7).normal(size=test_fs.features.shape).astype(np.float32)
    test = write_features(d / "test.npz", test_fs)
    run_training(config_from_dict(tiny_config_dict(train, test)), d / "run")
    export_bundle(d / "run", d / "run" / "bundle")
    return {"dir": d, "run": d / "run", "bundle": d / "run" / "bundle", "test": test_fs}


def test_bundle_contents_and_parity(trained):
    m = read_manifest(trained["bundle"])
    assert m["depth"] == 2 and m["input"]["dim"] == 8 and m["classes"]["num_classes"] == 6
    assert set(m["layouts"]) == {"fused", "staged"}
    assert set(m["layouts"]["staged"]["stages"]) == {"filter_1", "classifier_1", "filter_2", "classifier_2", "regular"}
    for layout in ("fused", "staged"):
        r = m["parity"][layout]
        assert r["pred_agreement"] == 1.0 and r["exit_agreement"] == 1.0 and r["max_logit_rel_err"] <= 1e-4
    assert m["parity"]["inputs"]["random"] == 64
    assert all(len(h) == 64 for h in m["files"].values())
    for f in (trained["bundle"] / "staged").glob("*.onnx"):
        assert all(n.domain in ("", "ai.onnx") for n in onnx.load(str(f)).graph.node)


@pytest.mark.parametrize("layout", ["fused", "staged"])
def test_runtime_matches_pytorch(trained, layout):
    model = load_run(trained["run"]).model
    x = trained["test"].features
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    out = Runtime(trained["bundle"], layout=layout).predict(x)
    np.testing.assert_array_equal(out.labels, ref.pred.numpy())
    np.testing.assert_array_equal(out.exit_depth, ref.exit_depth.numpy())
    np.testing.assert_allclose(out.logits, ref.logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.probabilities.sum(1), 1.0, rtol=1e-5)
    assert set(np.unique(out.exit_depth)) <= {1, 2, 3}


def test_staged_runs_each_sample_only_as_deep_as_it_goes(trained):
    rt = Runtime(trained["bundle"], layout="staged")
    seen = {}

    class Recorder:
        def __init__(self, name, sess):
            self.name, self.sess = name, sess

        def run(self, outputs, feeds):
            seen[self.name] = seen.get(self.name, 0) + feeds["x"].shape[0]
            return self.sess.run(outputs, feeds)

    rt._stages = {k: Recorder(k, s) for k, s in rt._stages.items()}
    x = trained["test"].features
    out = rt.predict(x)
    n1 = int((out.exit_depth == 1).sum())
    assert seen["filter_1"] == len(x)
    assert seen["filter_2"] == len(x) - n1  # samples exiting at depth 1 never run depth 2
    assert seen["classifier_1"] == n1 and seen["regular"] == int((out.exit_depth == 3).sum())


def test_runtime_is_thread_safe(trained):
    rt = Runtime(trained["bundle"], layout="staged")
    x = trained["test"].features
    batches = [x[i:i + 7 + i % 5] for i in range(0, 100, 4)]
    expected = [rt.predict(b) for b in batches]
    errors, results = [], {}

    def worker(tid):
        try:
            for rep in range(5):
                for i, b in enumerate(batches):
                    p = rt.predict(b)
                    results[(tid, rep, i)] = (p.labels, p.exit_depth, p.logits)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (tid, rep, i), (labels, exits, logits) in results.items():
        np.testing.assert_array_equal(labels, expected[i].labels)
        np.testing.assert_array_equal(exits, expected[i].exit_depth)
        np.testing.assert_array_equal(logits, expected[i].logits)


def test_runtime_input_validation(trained):
    rt = Runtime(trained["bundle"], layout="fused")
    with pytest.raises(DLSAError, match=r"shape \(batch, 8\)"):
        rt.predict(np.zeros((3, 5), np.float32))
    with pytest.raises(DLSAError, match="NaN or inf"):
        rt.predict(np.full((2, 8), np.nan, np.float32))
    with pytest.raises(DLSAError, match="numeric"):
        rt.predict(np.array([["a"] * 8]))
    assert rt.predict(np.zeros((0, 8), np.float32)).labels.shape == (0,)
    np.testing.assert_array_equal(rt.predict(trained["test"].features[:5].astype(np.float64)).labels,
                                  rt.predict(trained["test"].features[:5]).labels)


def test_runtime_does_not_import_torch(trained):
    code = ("import sys, numpy as np; from dlsa_prod.runtime import Runtime; "
            f"rt = Runtime({str(trained['bundle'])!r}); rt.predict(np.zeros((2, 8), np.float32)); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_bundles(trained, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(trained["bundle"], b)
    (b / "staged" / "regular.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="regular.onnx: sha256 mismatch"):
        Runtime(b)
    (b / "staged" / "regular.onnx").unlink()
    with pytest.raises(BundleError, match="regular.onnx: missing from the bundle"):
        Runtime(b)
    shutil.rmtree(b)
    shutil.copytree(trained["bundle"], b)
    m = json.loads((b / "manifest.json").read_text())
    m["format_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format version 99 is newer"):
        Runtime(b)
    m["format_version"] = 1
    m["input"]["dim"] = "eight"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="manifest field input.dim"):
        Runtime(b)
    (b / "manifest.json").unlink()
    with pytest.raises(BundleError, match="not a dlsa_prod bundle"):
        Runtime(b)
    with pytest.raises(BundleError, match="layout 'fused' not in this bundle"):
        shutil.rmtree(b)
        shutil.copytree(trained["bundle"], b)
        m = json.loads((b / "manifest.json").read_text())
        del m["layouts"]["fused"]
        (b / "manifest.json").write_text(json.dumps(m))
        Runtime(b, layout="fused")


def test_corrupted_graph_fails_the_gate_and_leaves_no_bundle(trained, tmp_path):
    def corrupt(tmp):
        path = tmp / "fused.onnx"
        graph = onnx.load(str(path))
        for init in graph.graph.initializer:
            arr = onnx.numpy_helper.to_array(init)
            if arr.ndim == 2 and arr.shape[0] == 6:  # a classifier weight (6 classes)
                init.CopyFrom(onnx.numpy_helper.from_array(arr * 1.5, init.name))
                break
        onnx.save(graph, str(path))

    out = tmp_path / "bundle"
    with pytest.raises(ParityError, match="parity gate failed for the fused graph"):
        export_bundle(trained["run"], out, layouts=("fused",), _after_export=corrupt)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_borderline_samples_are_excluded():
    ll = np.array([[0.0, np.nan], [5.0, 1.0], [3.0, 2.0000001]], np.float32)
    assert borderline(ll, np.array([0.0, 2.0], np.float32)).tolist() == [True, False, True]


def test_tensorrt_preparation_without_tensorrt(trained):
    assert batch_profile([1, 64, 256]) == BatchProfile(1, 64, 256)
    assert batch_profile([8]) == BatchProfile(1, 8, 8)
    with pytest.raises(DLSAError):
        batch_profile([0, 4])
    f = trained["bundle"] / "staged" / "regular.onnx"
    k = cache_key(f, "10.1", "9.0", BatchProfile(1, 64, 256))
    assert k != cache_key(f, "10.2", "9.0", BatchProfile(1, 64, 256))
    assert k != cache_key(f, "10.1", "8.0", BatchProfile(1, 64, 256))
    entry = {"tensorrt_version": "10.1", "compute_capability": "9.0"}
    check_engine_compatible(entry, "10.1", "9.0")
    with pytest.raises(DLSAError, match="rebuild them"):
        check_engine_compatible(entry, "10.3", "9.0")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(DLSAError, match="TensorRT is not installed"):
            import_tensorrt()
        res = CliRunner().invoke(main, ["export", str(trained["run"]), "--trt", "--out", str(trained["dir"] / "x")])
        assert res.exit_code == 2 and "TensorRT is not installed" in res.output
        assert not (trained["dir"] / "x").exists()


def test_triton_repository(trained, tmp_path):
    model_dir = write_triton_repository(trained["bundle"], tmp_path / "repo")
    cfg = (model_dir / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in cfg and "dims: [ 8 ]" in cfg and "dims: [ 6 ]" in cfg
    assert (model_dir / "1" / "model.onnx").read_bytes() == (trained["bundle"] / "fused.onnx").read_bytes()


def test_cli_export_and_bench(trained, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli_bundle"
    res = runner.invoke(main, ["export", str(trained["run"]), "--out", str(out), "--layout", "staged",
                               "--triton", str(tmp_path / "triton")])
    assert res.exit_code == 2 and "serves the fused graph" in res.output  # triton needs the fused layout
    res = runner.invoke(main, ["export", str(trained["run"]), "--out", str(out), "--layout", "staged", "--force"])
    assert res.exit_code == 0, res.output
    assert "staged pred 1.0000 exit 1.0000" in res.output
    res = runner.invoke(main, ["bench", str(trained["bundle"]), "--batch", "1,16", "--warmup", "0.05",
                               "--duration", "0.1", "--run", str(trained["run"]), "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "b.json").read_text())
    assert {r["method"] for r in rows} == {"pytorch eager", "onnxruntime fused", "onnxruntime staged"}
    assert all(r["p50_ms"] > 0 for r in rows)
    staged = [r for r in rows if r["method"] == "onnxruntime staged"]
    assert all(abs(sum(r["stage_share"].values()) - 1) < 1e-6 for r in staged)
