"""Graphs every backend computes the same: the exported logsumexp has an explicit max shift, every
graph imports under onnx-tensorrt's support matrix, and the fake TensorRT computes what the real
importer computes (ReduceLogSumExp without a shift, TF32 and fp16 GEMM inputs) so that the old graphs
fail the engine parity gate and reduced-precision engines meet the precision gate."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dlsa_prod.backends.device_memory import HostMemory
from dlsa_prod.backends.precision_gate import PrecisionLossError, judge
from dlsa_prod.backends.tensorrt_support import node_input_types, support_matrix, unsupported
from dlsa_prod.bundle_spec import read_spec
from dlsa_prod.data import write_features
from dlsa_prod.export.bundle import TrtOptions, export_bundle
from dlsa_prod.export.parity import ParityError
from dlsa_prod.ops import gmm_torch
from dlsa_prod.ops.gmm_torch import logsumexp_shifted

from fakes.deploy_run import fake_tensorrt



class _LSE(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _export(fn, path):
    x = torch.randn(3, 5)
    torch.onnx.export(_LSE(fn).eval(), (x,), str(path), input_names=["x"], output_names=["y"], dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    return path


ROWS = np.array([[-1000.0, -1001.0, -1200.0, -3000.0, -999.5],  # GMM log-densities: exp underflows
                 [-np.inf] * 5,  # every term -inf: the package's rule is -inf, never NaN
                 [1.0, 2.0, 3.0, 4.0, 5.0]], np.float32)


def test_matrix_names_its_source_and_version():
    m = support_matrix()
    assert "onnx/onnx-tensorrt docs/operators.md" in m["source"] and "96e781103cfc" in m["source"]
    assert m["tensorrt"].startswith("10.")
    assert m["operators"]["ReduceMax"]["supported"] and "FP32" in m["operators"]["ReduceMax"]["types"]
    assert not m["operators"]["AffineGrid"]["supported"]


def test_every_exported_graph_imports_and_has_no_reducelogsumexp(shared):
    spec = read_spec(shared["bundle"])
    graphs = [g for lay in spec.layouts for g in spec.graphs(lay).values()]
    assert len(graphs) == 2 + 2 * spec.depth  # fused + depth x (filter, classifier) + regular
    for g in graphs:
        model = onnx.load(str(spec.path / g.file))
        ops = node_input_types(model)
        op_types = {op for op, _ in ops}
        assert "ReduceLogSumExp" not in op_types, g.file
        if g.name.startswith("filter") or g.name == "fused":
            assert {"ReduceMax", "Exp", "ReduceSum", "Log"} <= op_types, (g.file, op_types)
        assert unsupported(spec.path / g.file) == [], g.file
        io = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
        assert set(io.values()) <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}, (g.file, io)


def test_the_check_finds_what_tensorrt_cannot_import(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, [2, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, [2, 2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["r"]),
                                    onnx.helper.make_node("BitShift", ["r", "r"], ["y"], direction="LEFT")],
                                   "g", [x], [y])
    path = tmp_path / "bad.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(path))
    problems = unsupported(path)
    assert any(p.startswith("BitShift: not supported") for p in problems)
    assert any(p.startswith("Relu: input type DOUBLE not supported") for p in problems)


def test_shifted_logsumexp_on_onnxruntime_and_under_tensorrts_import(tmp_path):
    shifted = _export(lambda x: logsumexp_shifted(x, 1), tmp_path / "shifted.onnx")
    plain = _export(lambda x: torch.logsumexp(x, 1), tmp_path / "plain.onnx")
    assert "ReduceLogSumExp" in {n.op_type for n in onnx.load(str(plain)).graph.node}
    want = torch.logsumexp(torch.from_numpy(ROWS.astype(np.float64)), 1).numpy()
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": ROWS})[0]  # noqa: E731
    got = run(shifted)
    np.testing.assert_allclose(got[[0, 2]], want[[0, 2]], rtol=1e-6)
    assert got[1] == -np.inf  # not NaN
    with fake_tensorrt() as trt:
        imported = trt._import_like_onnx_tensorrt(onnx.load(str(plain)))
        assert "ReduceLogSumExp" not in {n.op_type for n in imported.graph.node}
        as_trt = ort.InferenceSession(imported.SerializeToString(), providers=["CPUExecutionProvider"])
        got_trt = as_trt.run(None, {"x": ROWS})[0]
        assert got_trt[0] == -np.inf  # what TensorRT computes for a GMM log-density row: no sample exits
        np.testing.assert_allclose(got_trt[2], want[2], rtol=1e-5)
        shifted_trt = trt._import_like_onnx_tensorrt(onnx.load(str(shifted))).SerializeToString()
        np.testing.assert_allclose(ort.InferenceSession(shifted_trt, providers=["CPUExecutionProvider"])
                                   .run(None, {"x": ROWS})[0], got, rtol=0)


def test_fake_rounds_gemm_inputs_like_tf32_and_fp16(tmp_path):
    a = onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [None, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 4])
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["a", "w"], ["y"])], "g", [a], [y], [w])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    x = np.array([[1 + 2 ** -11, 1 + 2 ** -9, 1000.123456, -3.14159265]], np.float32)
    with fake_tensorrt() as trt:
        def run(precision):
            m = trt._round_gemm_inputs(onnx.load_from_string(model.SerializeToString()), precision)
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
                None, {"a": x})[0][0]

        tf32 = run("tf32")
        # 10-bit mantissa, round to nearest: 1 + 2^-11 -> 1, 1 + 2^-9 kept, 1000.123456 -> 1000.0
        np.testing.assert_array_equal(tf32, np.array([1.0, 1 + 2 ** -9, 1000.0, -3.140625], np.float32))
        np.testing.assert_array_equal(run("fp16"), x.astype(np.float16).astype(np.float32)[0])


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """A depth-1 run on 128-d features: GMM log-densities of -1e2 and below, as on real features."""
    from conftest import blobs, tiny_config_dict

    from dlsa_prod.config import config_from_dict
    from dlsa_prod.pipeline import run_training

    d = tmp_path_factory.mktemp("wide")
    train = write_features(d / "train.npz", blobs([90, 50, 25, 12], dim=128, seed=3))
    test = write_features(d / "test.npz", blobs([10] * 4, dim=128, seed=3))
    tree = tiny_config_dict(train, test, max_depth=1, baselines=[])
    tree["gmflow"]["optim"]["epoch"] = 2
    tree["cacls"]["optim"]["epoch"] = tree["regcls"]["optim"]["epoch"] = 2
    run_training(config_from_dict(tree), d / "run")
    return d / "run"


def test_old_graphs_fail_the_engine_parity_gate_under_the_new_fake(wide_run, tmp_path, monkeypatch):
    """A bundle exported the old way (torch.logsumexp -> ReduceLogSumExp) routes differently on TensorRT,
    whose import drops the max shift; the shifted graphs pass the same gate."""
    with fake_tensorrt():
        export_bundle(wide_run, tmp_path / "new", trt=TrtOptions(batches=[1, 16, 32], memory=HostMemory()))
        spec = read_spec(tmp_path / "new")
        assert spec.engines.parity["staged"]["exit_agreement"] == 1.0
        monkeypatch.setattr(gmm_torch, "logsumexp_shifted", lambda x, dim=1: torch.logsumexp(x, dim))
        with pytest.raises(ParityError, match="parity gate failed for the .* graph on tensorrt"):
            export_bundle(wide_run, tmp_path / "old", trt=TrtOptions(batches=[1, 16, 32], memory=HostMemory()))
    assert not (tmp_path / "old").exists()


def test_precision_gate_rule():
    ok = judge({"exit_agreement": 0.996, "pred_agreement": 0.99, "accuracy_change": -0.004}, "x", False)
    assert ok["gate"]["passed"] and not ok["gate"]["accepted_loss"]
    with pytest.raises(PrecisionLossError, match=r"exit agreement with fp32 99.40% \(< 99.5%\).*accept-precision-loss"):
        judge({"exit_agreement": 0.994, "pred_agreement": 1.0}, "x", False)
    with pytest.raises(PrecisionLossError, match=r"val accuracy -0.60 points"):
        judge({"exit_agreement": 1.0, "pred_agreement": 1.0, "accuracy_change": -0.006}, "x", False)
    r = judge({"exit_agreement": 0.9, "pred_agreement": 1.0}, "x", True)
    assert not r["gate"]["passed"] and r["gate"]["accepted_loss"]


def test_reduced_precision_engines_are_refused_unless_accepted(shared, tmp_path, monkeypatch):
    """tf32 engines whose routing moves are refused (no bundle written) and written with the flag,
    the gate's figures in the manifest."""
    from dlsa_prod.backends import precision_gate

    monkeypatch.setattr(precision_gate, "MIN_EXIT_AGREEMENT", 1.01)  # any tf32 engine now "moves" routing
    with fake_tensorrt():
        with pytest.raises(PrecisionLossError, match="tensorrt tf32 .* engines: exit agreement"):
            export_bundle(shared["run"], tmp_path / "b", trt=TrtOptions(batches=[1, 16, 32], precision="tf32",
                                                                        memory=HostMemory()))
        assert not (tmp_path / "b").exists()
        export_bundle(shared["run"], tmp_path / "b", trt=TrtOptions(batches=[1, 16, 32], precision="tf32",
                                                                    memory=HostMemory(), accept_precision_loss=True))
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    for layout in ("fused", "staged"):
        gate = m["artifacts"]["tensorrt"]["parity"][layout]["gate"]
        assert gate == {"min_exit_agreement": 1.01, "max_accuracy_drop_points": 0.5, "passed": False,
                        "accepted_loss": True}
        assert "accuracy_change" in m["artifacts"]["tensorrt"]["parity"][layout]  # val labels known (features)
    assert m["artifacts"]["tensorrt"]["device_name"] == "host memory (test seam)"


def test_cli_accept_precision_loss_needs_trt(shared, tmp_path):
    from click.testing import CliRunner

    from dlsa_prod.cli import main

    res = CliRunner().invoke(main, ["export", str(shared["run"]), "--out", str(tmp_path / "x"),
                                    "--accept-precision-loss"])
    assert res.exit_code == 2 and "pass --trt too" in res.output and res.output.count("\n") == 1


def test_ort_tensorrt_provider_session_is_gated(shared, monkeypatch, tmp_path):
    """ONNX Runtime's TensorRT provider (TF32 on, no switch): measured against CPU at load, refused
    unless accepted.  The provider is simulated: sessions report it active and flip some exits."""
    import onnxruntime

    from dlsa_prod.runtime import Runtime

    monkeypatch.setenv("DLSA_PROD_CACHE", str(tmp_path / "cache"))
    real = onnxruntime.InferenceSession

    class TrtSession:
        def __init__(self, path, sess_options=None, providers=None, provider_options=None):
            self.trt = providers[0] == "TensorrtExecutionProvider"
            self.graph = str(path)
            self._s = real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

        def get_providers(self):
            return ["TensorrtExecutionProvider"] if self.trt else ["CPUExecutionProvider"]

        def run(self, outs, feeds):
            res = self._s.run(outs, feeds)
            if self.trt and "filter_1" in self.graph:
                res[0] = res[0] + 50.0 * (np.arange(len(res[0])) % 10 == 0)  # 10% of rows flip to exiting
            return res

    monkeypatch.setattr(onnxruntime, "InferenceSession", TrtSession)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    b = tmp_path / "b"
    shutil.copytree(shared["bundle"], b)
    with pytest.raises(PrecisionLossError, match="ONNX Runtime's TensorRT provider .staged.: exit agreement"):
        Runtime(b, layout="staged", providers=["tensorrt"])
    rt = Runtime(b, layout="staged", providers=["tensorrt"], accept_precision_loss=True)
    rep = rt.executor.precision_report
    assert rep["gate"]["accepted_loss"] and rep["exit_agreement"] < 0.995 and "accuracy_change" in rep
