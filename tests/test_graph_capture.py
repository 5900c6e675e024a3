"""CUDA-graph capture and replay, run in CI through the capture stub (tests/fakes/cuda_graph_stub.py):
the TensorRT runner (fake TensorRT) and the torch backend capture at load, in thread-local mode, in one
memory pool per executor, and replay to the same results; the stub and the fake refuse what a real
capture refuses.  Also: aligned engine buffers and every TensorRT bool return checked."""

import numpy as np
import pytest
import torch

from dlsa_prod.backends.device_memory import ALIGNMENT, HostMemory
from dlsa_prod.backends.tensorrt_build import attach_timing_cache
from dlsa_prod.errors import DLSAError
from dlsa_prod.runtime import Runtime

from conftest import run_in_threads
from fakes.cuda_graph_stub import CaptureStub, CUDAGraph, Stream




# ----------------------------------------------------------------------------- the stub's own rules
def test_stub_replays_the_captured_ops_on_the_captured_tensors():
    stub = CaptureStub()
    x = torch.randn(4, 3)
    g = CUDAGraph()
    with stub.graph(g, pool=stub.graph_pool_handle(), capture_error_mode="thread_local"):
        y = (x * 2).sum(1)
    x.copy_(torch.ones(4, 3))
    g.replay()
    assert torch.equal(y, torch.full((4,), 6.0))
    with pytest.raises(RuntimeError, match="default stream is not permitted"):
        with stub.graph(CUDAGraph(), stream=Stream(default=True)):
            pass
    with pytest.raises(RuntimeError, match="host synchronisation"):
        with stub.graph(CUDAGraph()):
            int(x.sum())


# ----------------------------------------------------------------------------- TensorRT runner
def test_trt_runner_captures_at_load_and_replays(shared, trt):
    stub = CaptureStub()
    rt = Runtime(shared["bundle"], layout="fused", backend="tensorrt", memory=HostMemory(capture=stub),
                 cuda_graphs=True)
    ref = Runtime(shared["bundle"], layout="fused")
    runner = rt.executor.runners["fused"]
    assert sorted(runner.graphs) == [1, 16, 32] and rt.executor.captured == [1, 16, 32]
    assert {g.mode for g in stub.captures} == {"thread_local"} and len({id(g.pool) for g in stub.captures}) == 1
    assert "CUDA graphs for batch 1/16/32" in rt.describe()
    x = np.concatenate([shared["test"].features] * 3)
    for n in (1, 16, 32, 7):  # 7: no graph for that size, a normal enqueue
        before = sum(g.replays for g in stub.captures)
        out, want = rt.predict(x[:n]), ref.predict(x[:n])
        np.testing.assert_array_equal(out.exit_depth, want.exit_depth)
        np.testing.assert_allclose(out.logits, want.logits, rtol=1e-6, atol=1e-6)
        assert sum(g.replays for g in stub.captures) == before + (n != 7)
    assert len(stub.captures) == 3  # nothing captured at a request


def test_capture_without_a_prior_enqueue_is_refused(shared, trt, monkeypatch):
    from dlsa_prod.backends.tensorrt_runner import EngineRunner

    monkeypatch.setattr(EngineRunner, "_enqueue", lambda self, ctx: None)  # skip the enqueue before capture
    with pytest.raises(DLSAError, match="could not be captured into a CUDA graph"):
        Runtime(shared["bundle"], layout="fused", backend="tensorrt", memory=HostMemory(capture=CaptureStub()),
                cuda_graphs=True, warmup=False)
    assert "before one enqueue with these shapes" in trt.ERRORS[-1]


def test_replay_after_an_address_change_is_refused(shared, trt):
    rt = Runtime(shared["bundle"], layout="fused", backend="tensorrt", memory=HostMemory(capture=CaptureStub()),
                 cuda_graphs=True)
    runner = rt.executor.runners["fused"]
    ctx, static_in, outs, g = runner.graphs[1]
    other = runner.memory.empty_dtype(static_in["x"].shape, "float32")
    assert ctx.set_tensor_address("x", other.ctypes.data)
    with pytest.raises(RuntimeError, match="shapes or addresses changed"):
        g.replay()


# ----------------------------------------------------------------------------- alignment, return values
def test_unaligned_inputs_and_chunks_go_through_aligned_buffers(shared, trt):
    mem = HostMemory()
    a = mem.empty_dtype((5, 8), "float32")
    assert a.ctypes.data % ALIGNMENT == 0
    rt = Runtime(shared["bundle"], layout="staged", backend="tensorrt", memory=mem)
    ref = Runtime(shared["bundle"], layout="staged")
    x = np.concatenate([shared["test"].features] * 2)[:70]  # 70 > profile max 32: chunks at offsets 32, 64
    view = mem.empty_dtype((71, 8), "float32")[1:]  # rows start 32 bytes past an aligned base
    view[:] = x
    runner = rt.executor.runners["filter_1"]
    assert mem.ptr(view[1:9]) % ALIGNMENT == 64
    outs = runner({"x": view[1:9]})  # 8 rows at a 64-byte offset: copied into the static buffer first
    np.testing.assert_allclose(outs[0], ref.executor.calls["filter_1"]({"x": x[1:9]})[0], rtol=1e-6)
    np.testing.assert_array_equal(rt.predict(x).exit_depth, ref.predict(x).exit_depth)
    ctx = runner.context
    assert ctx.set_tensor_address("x", a.ctypes.data + 4) is False  # what TensorRT returns for it
    with pytest.raises(DLSAError, match="refused the address of x .*256-byte aligned"):
        runner._set_address(ctx, "x", view[1:9])


def test_builder_return_values_are_checked(shared, trt, monkeypatch):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    trt.DEVICE = "gpu-a"
    other = config.create_timing_cache(b"")
    trt.DEVICE = "gpu-b"
    assert config.set_timing_cache(other, False) is False  # another device's cache
    cache = attach_timing_cache(trt, config, bytes(other.serialize()), "x.onnx")  # falls back to a fresh cache
    assert cache.device == "gpu-b" and config.get_timing_cache() is cache
    monkeypatch.setattr(trt.IBuilderConfig, "set_timing_cache", lambda self, c, ignore: False)
    with pytest.raises(DLSAError, match="refused a fresh timing cache for x.onnx"):
        attach_timing_cache(trt, config, b"", "x.onnx")
    trt.DEVICE = "fake-gpu"


def test_fp32_build_fails_loudly_when_tf32_cannot_be_cleared(shared, trt, monkeypatch, tmp_path):
    from dlsa_prod.export.bundle import TrtOptions, export_bundle

    monkeypatch.setattr(trt.IBuilderConfig, "clear_flag", lambda self, flag: None)
    with pytest.raises(DLSAError, match="kept the TF32 builder flag set"):
        export_bundle(shared["run"], tmp_path / "b", trt=TrtOptions(batches=[1, 16, 32], memory=HostMemory()))
    assert not (tmp_path / "b").exists()


def test_engine_dtype_mismatch_and_other_gpu_ask_for_a_rebuild(shared, trt, tmp_path):
    import shutil

    from dlsa_prod.bundle_spec import BundleError

    class H200(HostMemory):
        def device_name(self):
            return "NVIDIA H200"

    with pytest.raises(BundleError, match="built on host memory .test seam.; this machine has NVIDIA H200"):
        Runtime(shared["bundle"], backend="tensorrt", memory=H200())
    b = tmp_path / "b"
    shutil.copytree(shared["bundle"], b)
    real = trt.ICudaEngine.get_tensor_dtype
    trt.ICudaEngine.get_tensor_dtype = lambda self, name: trt.DataType.HALF if name == "logits" else real(self, name)
    try:
        with pytest.raises(BundleError, match="engine tensor logits is float16, graph classifier_1 has float32"):
            Runtime(b, layout="staged", backend="tensorrt", memory=HostMemory())
    finally:
        trt.ICudaEngine.get_tensor_dtype = real


# ----------------------------------------------------------------------------- torch backend
@pytest.mark.parametrize("layout", ["fused", "staged"])
def test_torch_backend_captures_at_load_and_is_thread_safe(shared, layout):
    stub = CaptureStub()
    rt = Runtime(shared["bundle"], layout=layout, backend="torch", device="cpu", graph_capture_with=stub,
                 max_bucket=8)
    eager = Runtime(shared["bundle"], layout=layout, backend="torch", device="cpu", max_bucket=8)
    n_captured = len(stub.captures)
    stages = 1 if layout == "fused" else 2 * rt.depth + 1
    assert n_captured == stages * 4  # buckets 1, 2, 4, 8 for every stage, all at load
    assert {g.mode for g in stub.captures} == {"thread_local"} and len(stub.pools) == 1
    assert {id(g.pool) for g in stub.captures} == {id(stub.pools[0])}
    x = shared["test"].features
    rng = np.random.default_rng(0)
    batches = [x[rng.integers(0, len(x), size=int(rng.integers(1, 9)))] for _ in range(50)]
    single = [rt.predict(b) for b in batches]
    for b, got in zip(batches, single):
        want = eager.predict(b)
        np.testing.assert_array_equal(got.exit_depth, want.exit_depth)
        np.testing.assert_allclose(got.logits, want.logits, rtol=1e-6, atol=1e-6)
    mismatches, errors = [], []

    def worker(k):
        try:
            for i in range(500):
                j = (k * 7 + i) % len(batches)
                out = rt.predict(batches[j])
                if not (np.array_equal(out.logits, single[j].logits)
                        and np.array_equal(out.exit_depth, single[j].exit_depth)):
                    mismatches.append((k, i))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    run_in_threads(worker, 8)
    assert not errors and not mismatches
    assert len(stub.captures) == n_captured and sum(g.replays for g in stub.captures) >= 8 * 500
