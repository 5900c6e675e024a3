"""Backend registry, ONNX Runtime providers (explicit options, no silent fallback), Triton config,
the torch backend (CPU path and the bucketed graph-capture code path), bench option checks and
export's output-directory safety."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dlsa_prod.backends import get_backend
from dlsa_prod.backends.ort import ProviderError
from dlsa_prod.backends.torch_backend import Bucketed, buckets_for, eager_capture
from dlsa_prod.backends.triton import model_config, write_repository
from dlsa_prod.bench import format_ratio
from dlsa_prod.bundle_spec import read_spec
from dlsa_prod.cli import main
from dlsa_prod.errors import DLSAError
from dlsa_prod.run_dir import load_run
from dlsa_prod.runtime import Runtime

from fakes.deploy_run import count_rows_per_graph



def test_registry_names_every_backend():
    from dlsa_prod.backends import BACKENDS, loadable

    assert get_backend("tensorrt").builder == "dlsa_prod.backends.tensorrt_build:build"
    assert loadable() == ["onnxruntime", "tensorrt", "torch"]  # the CLI's --backend choices
    assert get_backend("onnxruntime").is_available() and get_backend("torch").is_available()
    assert get_backend("triton").is_available()  # writing a repository needs nothing installed
    assert all(b.build is not None and b.load is not None for b in BACKENDS.values())
    with pytest.raises(DLSAError, match="needs no build step"):
        get_backend("onnxruntime").build(None, None, {})
    with pytest.raises(DLSAError, match="unknown backend 'tflite'"):
        get_backend("tflite")


def test_triton_backend_is_not_loaded_in_process(shared):
    with pytest.raises(DLSAError, match="served by its own server"):
        Runtime(shared["bundle"], layout="fused", backend="triton")


# ----------------------------------------------------------------------------- ONNX Runtime providers
@pytest.fixture
def fake_ort(monkeypatch):
    """InferenceSession that records its providers and reports ``state['active']`` as started."""
    import onnxruntime as ort

    real = ort.InferenceSession
    state = {"active": None, "calls": []}

    class Session:
        def __init__(self, path, sess_options=None, providers=None, provider_options=None):
            state["calls"].append((Path(path).name, list(providers), list(provider_options)))
            self._s = real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

        def get_providers(self):
            return state["active"]

        def run(self, outs, feeds):
            return self._s.run(outs, feeds)

    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    return state


def test_cuda_provider_runs_without_tf32_and_never_falls_back_silently(shared, fake_ort, monkeypatch):
    import dlsa_prod.backends.ort as ort_backend

    warnings = []
    monkeypatch.setattr(ort_backend.log, "warning", lambda msg, *a: warnings.append(msg % a))
    fake_ort["active"] = ["CPUExecutionProvider"]  # what ONNX Runtime reports after a failed CUDA start
    with pytest.raises(ProviderError, match="onnxruntime did not start CUDAExecutionProvider.*allow_fallback=True"):
        Runtime(shared["bundle"], layout="fused", providers=["cuda"])
    rt = Runtime(shared["bundle"], layout="fused", providers=["cuda"], allow_fallback=True)
    assert rt.describe().startswith("onnxruntime CPUExecutionProvider [registered providers CPUExecutionProvider")
    assert rt.describe().endswith("] fused")
    assert "running on CPUExecutionProvider (allow_fallback=True)" in warnings[0]
    fake_ort["active"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    rt = Runtime(shared["bundle"], layout="fused", providers=["cuda"])
    assert rt.describe().startswith("onnxruntime CUDAExecutionProvider [registered providers CUDAExecutionProvider")
    _, providers, options = fake_ort["calls"][-1]
    assert providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert options[0]["use_tf32"] == "0"
    assert rt.predict(shared["test"].features[:4]).labels.shape == (4,)


def test_tensorrt_provider_options_come_from_the_spec(shared, fake_ort, monkeypatch, tmp_path):
    monkeypatch.setenv("DLSA_PROD_CACHE", str(tmp_path / "cache"))
    fake_ort["active"] = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    Runtime(shared["bundle"], layout="staged", providers=["tensorrt"])
    calls = {}  # the first session per graph (the precision gate then opens CPU sessions as its reference)
    for name, providers, options in fake_ort["calls"]:
        calls.setdefault(name, (providers, options))
    providers, options = calls["classifier_1.onnx"]
    assert providers == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = options[0]
    key = read_spec(shared["bundle"]).content_hash()
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_timing_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "cache" / "ort-tensorrt" / key / "engines")
    assert (tmp_path / "cache" / "ort-tensorrt" / key / "engines").is_dir()
    assert trt["trt_profile_min_shapes"] == "x:1x8,cluster:1"
    assert trt["trt_profile_opt_shapes"] == "x:16x8,cluster:16"
    assert trt["trt_profile_max_shapes"] == "x:32x8,cluster:32"
    assert trt["trt_fp16_enable"] == "False" and options[1]["use_tf32"] == "0"
    Runtime(shared["bundle"], layout="fused", providers=["tensorrt"], fp16=True)
    last_trt = [c for c in fake_ort["calls"] if c[1][0] == "TensorrtExecutionProvider"][-1]
    assert last_trt[2][0]["trt_fp16_enable"] == "True"


def test_unavailable_provider_is_one_line(shared):
    with pytest.raises(ProviderError, match="CUDAExecutionProvider is not available in this onnxruntime"):
        Runtime(shared["bundle"], providers=["cuda"])
    with pytest.raises(ProviderError, match="unknown execution provider 'npu'"):
        Runtime(shared["bundle"], providers=["npu"])


# ----------------------------------------------------------------------------- Triton
def _parse_pbtxt(text):
    """Protobuf text format -> nested dicts of lists (the subset Triton configs use)."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', text)
    pos = 0

    def value():
        nonlocal pos
        t = tokens[pos]
        pos += 1
        if t == "{":
            return message("}")
        if t == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        return t.strip('"') if t.startswith('"') else (int(t) if re.fullmatch(r"-?\d+", t) else t)

    def message(end):
        nonlocal pos
        out = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            v = value()
            out[key] = out.get(key, []) + (v if isinstance(v, list) else [v])  # repeated fields accumulate
            if pos < len(tokens) and tokens[pos] == ",":
                pos += 1
        pos += 1
        return out

    return message(None)


def _model_config_pb2():
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    s = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("check", ["protobuf", "field rules"])
def test_triton_config_matches_the_graph(shared, tmp_path, check):
    spec = read_spec(shared["bundle"])
    model_dir = write_repository(spec, tmp_path / "repo", tensorrt=True)
    text = (model_dir / "config.pbtxt").read_text()
    graph = spec.graphs("fused")["fused"]
    pb2 = _model_config_pb2() if check == "protobuf" else None
    if check == "protobuf" and pb2 is None:
        pytest.skip("tritonclient (Triton's model_config_pb2) is not installed")
    if pb2 is not None:  # Triton's own ModelConfig protobuf (tritonclient installed)
        from google.protobuf import text_format

        cfg = text_format.Parse(text, pb2.ModelConfig())
        inputs = [(i.name, pb2.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input]
        outputs = [(o.name, pb2.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output]
        assert cfg.max_batch_size == 32 and cfg.HasField("dynamic_batching")
        assert [pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group] == ["KIND_GPU"]
        assert cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    else:  # the documented field rules
        cfg = _parse_pbtxt(text)
        known = {"name", "platform", "max_batch_size", "input", "output", "dynamic_batching", "instance_group",
                 "optimization"}
        assert set(cfg) <= known and cfg["max_batch_size"] == [32] and cfg["platform"] == ["onnxruntime_onnx"]
        inputs = [(i["name"][0], i["data_type"][0], i["dims"]) for i in cfg["input"]]
        outputs = [(o["name"][0], o["data_type"][0], o["dims"]) for o in cfg["output"]]
        assert all(t.startswith("TYPE_") for _, t, _ in inputs + outputs)
        assert [g["kind"][0] for g in cfg["instance_group"]] == ["KIND_GPU"]
    types = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}
    assert inputs == [(t.name, types[t.dtype], list(t.item_shape)) for t in graph.inputs]
    assert outputs == [(t.name, types[t.dtype], list(t.item_shape) or [1]) for t in graph.outputs]
    assert (model_dir / "1" / "model.onnx").read_bytes() == (spec.path / graph.file).read_bytes()
    with pytest.raises(DLSAError, match="needs KIND_GPU"):
        model_config(spec, kind="KIND_CPU", tensorrt=True)


def test_triton_repository_replaces_only_its_own_model_directory(shared, tmp_path):
    repo = tmp_path / "repo"
    theirs = repo / "dlsa"  # a user's own Triton model of the same name
    (theirs / "2").mkdir(parents=True)
    (theirs / "config.pbtxt").write_text('name: "dlsa"')
    (theirs / "2" / "model.plan").write_text("their engine")
    for force in (False, True):
        with pytest.raises(DLSAError, match="dlsa: (output directory exists|not written by dlsa-prod)"):
            write_repository(shared["bundle"], repo, force=force)
    assert (theirs / "2" / "model.plan").read_text() == "their engine"
    ours = write_repository(shared["bundle"], repo, name="ours")
    with pytest.raises(DLSAError, match="use --force"):
        write_repository(shared["bundle"], repo, name="ours")
    assert write_repository(shared["bundle"], repo, name="ours", force=True, kind="KIND_CPU") == ours
    assert "KIND_CPU" in (ours / "config.pbtxt").read_text()
    assert sorted(p.name for p in repo.iterdir()) == ["dlsa", "ours"]  # no staging leftovers
    # the CLI refuses before any export work: no bundle appears
    res = CliRunner().invoke(main, ["export", str(shared["run"]), "--out", str(tmp_path / "b"), "--layout", "fused",
                                    "--triton", str(repo), "--force"])
    assert res.exit_code == 2 and "not written by dlsa-prod" in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "b").exists() and (theirs / "2" / "model.plan").is_file()


def test_triton_config_for_an_image_graph():
    from dlsa_prod.bundle_spec import BundleSpec

    m = {"layouts": {"fused": {"graphs": {"fused": {"file": "fused.onnx", "inputs": [
        {"name": "image", "dtype": "float32", "shape": ["batch", 3, 32, 32]}], "outputs": [
        {"name": "logits", "dtype": "float32", "shape": ["batch", 10]},
        {"name": "pred", "dtype": "int64", "shape": ["batch"]}]}}}},
        "serving": {"batch_profile": {"min": 1, "opt": 64, "max": 256}}}
    text = model_config(BundleSpec(Path("."), m))
    assert '{ name: "image", data_type: TYPE_FP32, dims: [ 3, 32, 32 ] }' in text
    assert '{ name: "pred", data_type: TYPE_INT64, dims: [ 1 ], reshape: { shape: [ ] } }' in text
    assert "max_batch_size: 256" in text and "kind: KIND_GPU" in text


# ----------------------------------------------------------------------------- torch backend
@pytest.mark.parametrize("layout", ["fused", "staged"])
def test_torch_backend_matches_eager(shared, layout):
    x = np.concatenate([shared["test"].features] * 2)[:70]  # above the bucket max (32): chunked
    model = load_run(shared["run"]).model
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    rt = Runtime(shared["bundle"], layout=layout, backend="torch")
    out = rt.predict(x)
    assert rt.describe() == f"torch cpu (eager, batch buckets) {layout}"
    np.testing.assert_array_equal(out.exit_depth, ref.exit_depth.numpy())
    np.testing.assert_allclose(out.logits, ref.logits.numpy(), rtol=1e-5, atol=1e-5)


def test_bucketed_capture_pads_and_reuses_buckets():
    assert buckets_for(32) == [1, 2, 4, 8, 16, 32] and buckets_for(48) == [1, 2, 4, 8, 16, 32, 48]
    captured = []

    def capture(fn, static):
        captured.append(tuple(s.shape[0] for s in static))
        return eager_capture(fn, static)

    def fn(x, c):  # a two-input stage, like classifier_<d> (x, cluster)
        return x * 2 + c[:, None], x.sum(1)

    b = Bucketed(fn, [((3,), torch.float32), ((), torch.int64)], buckets_for(8), torch.device("cpu"), capture)
    # every bucket is captured when the executor loads, never at a request (a capture during serving
    # would break CUDA work of other threads)
    assert captured == [(1, 1), (2, 2), (4, 4), (8, 8)]
    for n in (1, 3, 5, 3, 8, 2):
        x, c = torch.randn(n, 3), torch.randint(0, 4, (n,))
        y, s = b(x, c)
        assert y.shape == (n, 3) and torch.equal(y, x * 2 + c[:, None]) and torch.allclose(s, x.sum(1))
    assert captured == [(1, 1), (2, 2), (4, 4), (8, 8)]  # one capture per bucket, reused afterwards


def test_torch_backend_routes_staged_per_stage(shared):
    rt = Runtime(shared["bundle"], layout="staged", backend="torch")
    seen = count_rows_per_graph(rt)
    out = rt.predict(shared["test"].features)
    n1 = int((out.exit_depth == 1).sum())
    assert seen["filter_2"] == len(out.labels) - n1 and seen["classifier_1"] == n1


def test_torch_backend_refuses_a_bundle_without_weights(shared, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(shared["bundle"], b)
    m = json.loads((b / "manifest.json").read_text())
    m["artifacts"].pop("torch")
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DLSAError, match="carries no torch weights"):
        Runtime(b, backend="torch")


# ----------------------------------------------------------------------------- bench options
@pytest.mark.parametrize("args, match", [
    (["--batch", "abc"], "--batch: 'abc' is not a positive integer"),
    (["--batch", "-4"], "--batch: -4 is not a positive integer"),
    (["--batch", "1,0"], "--batch: 0 is not a positive integer"),
    (["--duration", "-1"], "--duration: must be > 0 seconds"),
    (["--duration", "0"], "--duration: must be > 0 seconds"),
    (["--duration", "abc"], "--duration: 'abc' is not a number"),
    (["--warmup", "-1"], "--warmup: must be >= 0"),
    (["--threads", "-2"], "--threads: -2 is not a non-negative integer"),
])
def test_bench_rejects_bad_options_in_one_line(shared, args, match):
    res = CliRunner().invoke(main, ["bench", str(shared["bundle"]), *args])
    assert res.exit_code == 2 and match in res.output and res.output.count("\n") == 1, res.output


def test_speedup_ratio_never_prints_zero():
    assert format_ratio(0.001234) == "0.00123x" and format_ratio(1.5) == "1.5x"


# ----------------------------------------------------------------------------- export output safety
def test_export_never_replaces_its_run_the_cwd_or_foreign_directories(shared, tmp_path, monkeypatch):
    runner = CliRunner()
    run = shared["run"]
    before = sorted(p.name for p in run.iterdir())
    res = runner.invoke(main, ["export", str(run), "--out", str(run), "--force"])
    assert res.exit_code == 2 and "an input of this command" in res.output and res.output.count("\n") == 1
    res = runner.invoke(main, ["export", str(run), "--out", str(run.parent), "--force"])
    assert res.exit_code == 2 and "an input of this command" in res.output
    assert sorted(p.name for p in run.iterdir()) == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    res = runner.invoke(main, ["export", str(run), "--out", str(foreign), "--force"])
    assert res.exit_code == 2 and "not written by dlsa-prod" in res.output
    assert (foreign / "thesis.tex").read_text() == "x"
    monkeypatch.chdir(foreign)
    res = runner.invoke(main, ["export", str(run), "--out", ".", "--force"])
    assert res.exit_code == 2 and "current directory" in res.output
    res = runner.invoke(main, ["export", str(run), "--out", str(shared["bundle"])])
    assert res.exit_code == 2 and "use --force" in res.output


def test_export_refuses_weights_changed_since_training(shared, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(shared["run"], run, ignore=shutil.ignore_patterns("bundle"))
    data = bytearray((run / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # one flipped bit pattern in the tensor data, header intact
    (run / "model.safetensors").write_bytes(bytes(data))
    res = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "model.safetensors: sha256 differs" in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_bench_batch_sizes_share_the_trt_profile_names():
    from dlsa_prod.bench import parse_batches

    assert parse_batches("online") == [1, 2, 4, 8] and parse_batches(" 1, 64") == [1, 64]
    with pytest.raises(DLSAError, match=r"--batch: 0 is not a positive integer \(e.g. --batch 1,64,256\)"):
        parse_batches("4,0")


def test_format_version_2_bundles_still_load(shared, tmp_path):
    """Version 3 moved each backend's build output under "artifacts"; a version-2 bundle (top-level
    "torch" and "engines", graphs without the classes hash) reads as before."""
    import shutil

    import onnx

    from dlsa_prod.bundle_spec import MANIFEST, METADATA_PREFIX, hash_files

    b = tmp_path / "v2"
    shutil.copytree(shared["bundle"], b)
    m = json.loads((b / MANIFEST).read_text())
    assert m["format_version"] == 3 and set(m["artifacts"]) == {"torch", "tensorrt"}
    arts = m.pop("artifacts")
    m.update(format_version=2, torch=arts["torch"], engines=arts["tensorrt"])
    for f in b.rglob("*.onnx"):
        model = onnx.load(str(f))
        props = {p.key: p.value for p in model.metadata_props if p.key != f"{METADATA_PREFIX}classes_sha256"}
        props[f"{METADATA_PREFIX}format_version"] = "2"
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(f))
    m["files"] = hash_files(b, exclude=("samples.npy", "samples_labels.npy"))
    (b / MANIFEST).write_text(json.dumps(m))
    spec = read_spec(b)
    assert spec.artifact("torch")["weights"] and spec.engines.precision == "fp32"
    x = shared["test"].features
    for backend in ("onnxruntime", "torch"):
        got = Runtime(b, layout="staged", backend=backend).predict(x)
        want = Runtime(shared["bundle"], layout="staged", backend=backend).predict(x)
        np.testing.assert_array_equal(got.exit_depth, want.exit_depth)
        np.testing.assert_allclose(got.logits, want.logits, rtol=1e-6)
