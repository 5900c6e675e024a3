"""Native TensorRT engines against the strict fake ``tensorrt`` (tests/fakes/tensorrt): builder
contract, engine runner (fused / staged routing, chunking), engine parity gate, metadata checks,
failure atomicity and the CLI's option checks."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from dlsa_prod.backends import device_memory
from dlsa_prod.backends.device_memory import HostMemory
from dlsa_prod.backends.tensorrt_build import batch_profile, input_profile, parse_batches
from dlsa_prod.bundle_spec import BundleError, GraphSpec, TensorSpec, read_spec
from dlsa_prod.cli import main
from dlsa_prod.errors import DLSAError
from dlsa_prod.export.bundle import TrtOptions, export_bundle
from dlsa_prod.runtime import Runtime

from fakes.deploy_run import fake_tensorrt




def _engine_header(path):
    data = path.read_bytes()
    n = int.from_bytes(data[8:16], "little")
    return json.loads(data[16:16 + n])


def test_fake_refuses_a_shared_config_and_incomplete_profiles(shared, trt):
    """The old builder's bug: one config for every graph, profile 0 covering only ``x``."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 20)
    config.set_timing_cache(config.create_timing_cache(b""), False)
    nets = []
    for name in ("filter_1", "classifier_1"):
        net = builder.create_network(0)
        assert trt.OnnxParser(net, logger).parse((shared["bundle"] / "staged" / f"{name}.onnx").read_bytes())
        nets.append(net)
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 8), (4, 8), (8, 8))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(nets[0], config) is not None
    # like TensorRT, a failed build returns None and logs why (the fake keeps the log in ERRORS)
    assert builder.build_serialized_network(nets[1], config) is None
    assert "one config per network" in trt.ERRORS[-1]
    fresh = builder.create_builder_config()
    fresh.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 20)
    fresh.set_timing_cache(fresh.create_timing_cache(b""), False)
    assert fresh.add_optimization_profile(builder.create_optimization_profile()) == -1  # no shapes: not valid
    assert fresh.add_optimization_profile(profile) == 0
    assert builder.build_serialized_network(nets[1], fresh) is None
    assert "does not cover dynamic input cluster" in trt.ERRORS[-1]
    with pytest.raises(ValueError, match="min <= opt <= max"):
        builder.create_optimization_profile().set_shape("x", (4, 8), (1, 8), (8, 8))
    with pytest.raises(AttributeError, match="removed in TensorRT 10"):
        builder.build_engine  # noqa: B018
    ctx = trt.Runtime(logger).deserialize_cuda_engine(
        (shared["bundle"] / "tensorrt" / "staged.regular.engine").read_bytes()).create_execution_context()
    with pytest.raises(AttributeError, match="removed in TensorRT 10"):
        ctx.execute_v2  # noqa: B018
    assert ctx.set_input_shape("x", (64, 8)) is False  # beyond the profile max (32)


def test_engines_one_per_graph_with_full_profiles_and_tf32_cleared(shared):
    spec = read_spec(shared["bundle"])
    e = spec.engines
    assert e.precision == "fp32" and e.compute_capability == "host" and e.tensorrt_version == "10.99.0+fake"
    assert set(e.engines) == {"fused/fused"} | {f"staged/{n}" for n in spec.graphs("staged")}
    assert e.engines["staged/classifier_1"].profile == {
        "x": {"min": [1, 8], "opt": [16, 8], "max": [32, 8]}, "cluster": {"min": [1], "opt": [16], "max": [32]}}
    for es in e.engines.values():
        header = _engine_header(spec.path / es.file)
        assert header["flags"] == [] and header["workspace"] == 2 << 30 and len(header["profiles"]) == 1
    for layout in ("fused", "staged"):
        r = e.parity[layout]
        assert r["pred_agreement"] == 1.0 and r["exit_agreement"] == 1.0 and r["max_logit_rel_err"] <= 1e-4
    assert not list(shared["run"].glob(".bundle.exporting-*"))


def test_profiles_cover_image_inputs_and_batches():
    g = GraphSpec("backbone", "staged/backbone.onnx", (TensorSpec("image", "float32", ("batch", 3, 8, 8)),),
                  (TensorSpec("x", "float32", ("batch", 16)),))

    class T:
        name, shape = "image", (-1, 3, 8, 8)

    assert input_profile(T, g, {"min": 1, "opt": 64, "max": 256}) == {
        "min": [1, 3, 8, 8], "opt": [64, 3, 8, 8], "max": [256, 3, 8, 8]}
    T.shape = (-1, 3, 9, 8)
    with pytest.raises(DLSAError, match="differs from the spec"):
        input_profile(T, g, {"min": 1, "opt": 64, "max": 256})
    assert batch_profile([1, 64, 256]) == {"min": 1, "opt": 64, "max": 256}
    assert batch_profile([8]) == {"min": 1, "opt": 8, "max": 8}
    assert parse_batches("online") == [1, 2, 4, 8]
    for bad in ("0,4", "abc"):
        with pytest.raises(DLSAError, match="--trt-batches"):
            parse_batches(bad)


@pytest.mark.parametrize("layout", ["fused", "staged"])
def test_engine_runner_matches_onnxruntime(shared, trt, layout):
    x = np.concatenate([shared["test"].features] * 2)[:70]  # above the profile max (32): chunked
    rt = Runtime(shared["bundle"], layout=layout, backend="tensorrt", memory=HostMemory())
    ref = Runtime(shared["bundle"], layout=layout).predict(x)
    out = rt.predict(x)
    assert rt.describe() == f"tensorrt fp32 on host memory (test seam) {layout}"
    np.testing.assert_array_equal(out.exit_depth, ref.exit_depth)
    np.testing.assert_allclose(out.logits, ref.logits, rtol=1e-6, atol=1e-6)
    if layout == "staged":
        runners = rt.executor.runners
        n1 = int((out.exit_depth == 1).sum())
        assert runners["filter_2"].context.executions >= 1 and n1 < len(x)


def test_engine_metadata_mismatch_asks_for_rebuild(shared, trt, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(shared["bundle"], b)

    class OtherGPU(HostMemory):
        def compute_capability(self):
            return "9.0"

    with pytest.raises(BundleError, match=r"compute capability host; this machine has .* 9.0: rebuild them"):
        Runtime(b, backend="tensorrt", memory=OtherGPU())
    with pytest.raises(BundleError, match=r"engines are fp32, fp16 was asked for; rebuild .* --precision fp16"):
        Runtime(b, backend="tensorrt", memory=HostMemory(), precision="fp16")
    m = json.loads((b / "manifest.json").read_text())
    m["artifacts"]["tensorrt"]["tensorrt_version"] = "10.1.0"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="built with TensorRT 10.1.0.*rebuild them with `dlsa-prod export --trt`"):
        Runtime(b, backend="tensorrt", memory=HostMemory())
    m["artifacts"]["tensorrt"]["tensorrt_version"] = trt.__version__
    m["artifacts"]["tensorrt"]["engines"]["staged/regular"]["profile"]["x"]["max"] = [64, 8]
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="engine profile of x is .* rebuild"):
        Runtime(b, layout="staged", backend="tensorrt", memory=HostMemory())


def test_failed_trt_build_leaves_the_previous_bundle(shared, trt, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    shutil.copytree(shared["bundle"], out)
    before = (out / "manifest.json").read_bytes()
    monkeypatch.setattr(trt.Builder, "build_serialized_network", lambda self, net, cfg: None)
    with pytest.raises(DLSAError, match="TensorRT failed to build an engine for single.onnx"):
        export_bundle(shared["run"], out, model="CE", force=True, trt=TrtOptions(memory=HostMemory()))
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_cli_trt_option_checks_come_before_any_work(shared, tmp_path, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "x"
    res = runner.invoke(main, ["export", str(shared["run"]), "--trt", "--layout", "fused", "--out", str(out)])
    assert res.exit_code == 2 and "--trt builds engines for the staged graphs" in res.output
    res = runner.invoke(main, ["export", str(shared["run"]), "--precision", "fp16", "--out", str(out)])
    assert res.exit_code == 2 and "pass --trt too" in res.output
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        res = runner.invoke(main, ["export", str(shared["run"]), "--trt", "--out", str(out)])
        assert res.exit_code == 2 and "TensorRT is not installed" in res.output
    with fake_tensorrt():
        import torch

        if not torch.cuda.is_available():
            res = runner.invoke(main, ["export", str(shared["run"]), "--trt", "--out", str(out)])
            assert res.exit_code == 2 and "need an NVIDIA GPU" in res.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_export_best_baseline_with_fp16_engines(shared, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(shared["run"], run, ignore=shutil.ignore_patterns("bundle"))
    meta = json.loads((run / "meta.json").read_text())
    meta.pop("best_on_val", None)  # a run from before best_on_val was recorded
    (run / "meta.json").write_text(json.dumps(meta))
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(run), "--best"])
    assert res.exit_code == 2 and "has no best_on_val entry" in res.output and res.output.count("\n") == 1
    (run / "meta.json").write_text(json.dumps({**meta, "best_on_val": "CE"}))
    monkeypatch.setattr(device_memory, "default_memory", HostMemory)
    with fake_tensorrt():
        res = runner.invoke(main, ["export", str(run), "--best", "--trt", "--precision", "fp16", "--trt-batches",
                                   "online", "--triton", str(tmp_path / "triton")])
    assert res.exit_code == 0, res.output
    assert "best on validation (meta.json): baseline CE; exporting it as a single-classifier bundle (no routing)" \
        in res.output
    spec = read_spec(run / "bundle")
    assert spec.layouts == ["single"] and spec.depth == 0 and spec.source["model"] == "CE"
    assert spec.batch_profile == {"min": 1, "opt": 4, "max": 8}
    header = _engine_header(spec.path / spec.engines.engines["single/single"].file)
    assert "FP16" in header["flags"] and "TF32" not in header["flags"]
    rep = spec.engines.parity["single"]
    assert {"pred_agreement", "exit_agreement", "accuracy_change"} <= set(rep) and rep["exit_agreement"] == 1.0
    x = shared["test"].features
    out = Runtime(spec.path).predict(x)
    import torch

    from dlsa_prod.run_dir import load_run

    with torch.no_grad():
        ref = load_run(run).baselines["CE"](torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(out.labels, ref.argmax(1))
    assert (out.exit_depth == 1).all()
    assert (tmp_path / "triton" / "dlsa" / "config.pbtxt").is_file()
