"""Serving runtime for exported bundles: ONNX Runtime only, no torch import.

    from dlsa_prod.runtime import Runtime
    rt = Runtime("bundle/")                  # staged layout, CPU
    out = rt.predict(features)               # labels, probabilities, exit_depth

``staged`` runs the flow filter of each depth on the samples still remaining and only the
classifier each sample exits at (gather, run, scatter); ``fused`` runs one graph that computes
every depth for the whole batch.  ``predict`` is safe to call from many threads at once
(sessions are shared read-only; ONNX Runtime's ``run`` is thread-safe).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DLSAError
from .export.manifest import BundleError, read_manifest

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


@dataclass
class Prediction:
    labels: np.ndarray  # (B,) int64
    probabilities: np.ndarray  # (B, C) float32, softmax of the exit classifier's logits
    exit_depth: np.ndarray  # (B,) int64, 1..D, D + 1 = regular classifier
    logits: np.ndarray  # (B, C) float32


@dataclass
class StageTimes:
    seconds: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, dt: float) -> None:
        with self.lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + dt


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def resolve_providers(names) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    out = []
    for n in names or ["cpu"]:
        p = PROVIDERS.get(n.lower(), n)
        if p not in available:
            raise DLSAError(f"execution provider {n!r} is not available in this onnxruntime "
                            f"(available: {', '.join(available)}); install onnxruntime-gpu for cuda/tensorrt")
        out.append(p)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


class Runtime:
    def __init__(self, bundle: str | Path, layout: str = "staged", providers=None, threads: int = 0):
        import onnxruntime as ort

        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle)
        if layout not in self.manifest["layouts"]:
            raise BundleError(f"{self.bundle}: layout {layout!r} not in this bundle "
                              f"(has: {', '.join(self.manifest['layouts'])})")
        self.layout = layout
        self.dim = int(self.manifest["input"]["dim"])
        self.preprocess = None
        if self.manifest["input"]["kind"] == "image":
            from .images.preprocess import Preprocess

            self.preprocess = Preprocess.from_dict(self.manifest["input"]["image"])
        self.depth = int(self.manifest["depth"])
        self.thresholds = np.asarray(self.manifest["thresholds"], dtype=np.float32)
        self.providers = resolve_providers(providers)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if layout == "staged":
            # stages run one after another; idle sessions must not spin their thread pools and
            # steal the cores from the one running (measured: 2x slower per stage with spinning)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(rel: str):
            return ort.InferenceSession(str(self.bundle / rel), sess_options=opts, providers=self.providers)

        if layout == "fused":
            self._fused = session(self.manifest["layouts"]["fused"]["file"])
        else:
            stages = self.manifest["layouts"]["staged"]["stages"]
            self._stages = {name: session(entry["file"]) for name, entry in stages.items()}
        self.stage_times = StageTimes()

    def validate(self, batch) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            batch = np.asarray(batch)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise DLSAError(f"input must have shape (batch, {self.dim}), got {batch.shape}")
        if batch.dtype != np.float32:
            if batch.dtype.kind not in "fiu":
                raise DLSAError(f"input must be numeric (float32 preferred), got dtype {batch.dtype}")
            batch = batch.astype(np.float32)
        if not np.isfinite(batch).all():
            raise DLSAError("input contains NaN or inf")
        return np.ascontiguousarray(batch)

    def predict(self, batch, profile: bool = False) -> Prediction:
        """Features (batch, dim) for a feature bundle; images for an image bundle: uint8 (N, H, W, C)
        or (N, C, H, W) (or float 0..1), preprocessed as recorded in the manifest."""
        if self.preprocess is not None:
            return self.predict_prepared(self.preprocess.to_nchw(batch), profile)
        return self.predict_prepared(self.validate(batch), profile)

    def predict_prepared(self, x: np.ndarray, profile: bool = False) -> Prediction:
        """Graph-ready input: float32 features, or normalised float32 NCHW images."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[0] == 0:
            c = int(self.manifest["classes"]["num_classes"])
            return Prediction(np.zeros(0, np.int64), np.zeros((0, c), np.float32), np.zeros(0, np.int64),
                              np.zeros((0, c), np.float32))
        logits, exit_depth = self._run_fused(x) if self.layout == "fused" else self._run_staged(x, profile)
        return Prediction(logits.argmax(1).astype(np.int64), _softmax(logits), exit_depth, logits)

    def _run_fused(self, x):
        name = self.manifest["layouts"]["fused"]["inputs"][0]
        logits, _, exit_depth, _ = self._fused.run(None, {name: x})
        return logits, exit_depth.astype(np.int64)

    def _timed(self, name, fn, profile):
        if not profile:
            return fn()
        t0 = time.perf_counter()
        out = fn()
        self.stage_times.add(name, time.perf_counter() - t0)
        return out

    def _run_staged(self, x, profile=False):
        if "backbone" in self._stages:
            bb = self._stages["backbone"]
            x = self._timed("backbone", lambda: bb.run(None, {"image": x})[0], profile)
        b = x.shape[0]
        logits = None
        exit_depth = np.full(b, self.depth + 1, dtype=np.int64)
        remaining = np.arange(b)
        xr = x
        for d in range(1, self.depth + 1):
            if remaining.size == 0:
                break
            sess = self._stages[f"filter_{d}"]
            ll, cluster = self._timed(f"filter_{d}", lambda: sess.run(None, {"x": xr}), profile)
            out = ll >= self.thresholds[d - 1]
            if out.any():
                cls = self._stages[f"classifier_{d}"]
                xo, co = np.ascontiguousarray(xr[out]), np.ascontiguousarray(cluster[out])
                lo = self._timed(f"classifier_{d}", lambda: cls.run(None, {"x": xo, "cluster": co})[0], profile)
                if logits is None:
                    logits = np.empty((b, lo.shape[1]), dtype=np.float32)
                logits[remaining[out]] = lo
                exit_depth[remaining[out]] = d
            remaining = remaining[~out]
            xr = np.ascontiguousarray(xr[~out])
        if remaining.size:
            reg = self._stages["regular"]
            lr = self._timed("regular", lambda: reg.run(None, {"x": xr})[0], profile)
            if logits is None:
                logits = np.empty((b, lr.shape[1]), dtype=np.float32)
            logits[remaining] = lr
        return logits, exit_depth
