"""Shared, cached-on-disk tiny run and bundles for the deployment tests (trained and exported once
per test session, whichever module asks first: exports are the slow part)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

FAKES = Path(__file__).resolve().parent


@contextlib.contextmanager
def fake_tensorrt():
    """Make ``import tensorrt`` give the strict fake, and undo it afterwards."""
    saved = sys.modules.pop("tensorrt", None)
    sys.path.insert(0, str(FAKES))
    try:
        import tensorrt

        yield tensorrt
    finally:
        sys.path.remove(str(FAKES))
        sys.modules.pop("tensorrt", None)
        if saved is not None:
            sys.modules["tensorrt"] = saved


def count_rows_per_graph(rt) -> dict:
    """Wrap a staged runtime's graph calls; the returned dict fills with the rows each graph is fed."""
    seen = {}

    def recorder(name, call):
        def run(feeds):
            seen[name] = seen.get(name, 0) + feeds["x"].shape[0]
            return call(feeds)
        return run

    rt.executor.calls = {k: recorder(k, c) for k, c in rt.executor.calls.items()}
    return seen


def shared_dir(factory) -> Path:
    d = factory.getbasetemp() / "deploy_shared"
    d.mkdir(exist_ok=True)
    return d


def tiny_run(factory) -> dict:
    """A trained 6-class, dim-8, depth-2 run (with BSM and CE baselines) and its test features."""
    from conftest import blobs, tiny_config_dict

    from dlsa_prod.config import config_from_dict
    from dlsa_prod.data import write_features
    from dlsa_prod.pipeline import run_training

    d = shared_dir(factory)
    test_fs = blobs([20] * 6, seed=1)
    test_fs.features += 0.3 * np.random.default_rng(7).normal(size=test_fs.features.shape).astype(np.float32)
    if not (d / "run" / "meta.json").is_file():
        train = write_features(d / "train.npz", blobs([120, 80, 50, 30, 18, 10], seed=1))
        test = write_features(d / "test.npz", test_fs)
        run_training(config_from_dict(tiny_config_dict(train, test)), d / "run")
    return {"dir": d, "run": d / "run", "test": test_fs}


def trt_bundle(factory) -> Path:
    """RUN/bundle: fused + staged graphs, torch weights and fake-TensorRT engines (profile 1/16/32)."""
    from dlsa_prod.backends.device_memory import HostMemory
    from dlsa_prod.export.bundle import TrtOptions, export_bundle

    run = tiny_run(factory)["run"]
    out = run / "bundle"
    if not (out / "manifest.json").is_file():
        with fake_tensorrt():
            export_bundle(run, out, trt=TrtOptions(batches=[1, 16, 32], memory=HostMemory()))
    return out
