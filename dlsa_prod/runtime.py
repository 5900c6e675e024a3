"""Serving runtime for exported bundles (no torch import unless ``backend="torch"``/"tensorrt").

    from dlsa_prod.runtime import Runtime
    rt = Runtime("bundle/")                          # ONNX Runtime on CPU, staged layout (if present)
    rt = Runtime("bundle/", providers=["cuda"])      # ONNX Runtime CUDA provider (TF32 off)
    rt = Runtime("bundle/", backend="tensorrt")      # native TensorRT engines (export --trt)
    rt = Runtime("bundle/", backend="torch")         # the PyTorch cascade, CUDA graphs on GPU
    out = rt.predict(features)                       # Prediction: labels, probabilities, exit_depth, logits,
                                                     # loglik, in_distribution (input guard)

``staged`` runs the flow filter of each depth on the samples still remaining and only the
classifier each sample exits at; ``fused`` runs one graph computing every depth for the whole
batch; ``single`` is a plain classifier bundle.  ``predict`` is safe to call from many threads at
once, and works through large inputs in chunks of ``chunk_rows`` rows so memory stays bounded.
"""

from __future__ import annotations

import difflib
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import BACKENDS, load_executor
from .backends.layouts import Timer
from .bundle_spec import BundleSpec, read_spec
from .errors import DLSAError
from .value_range import check_values

DEFAULT_CHUNK_ROWS = 16384


@dataclass
class Prediction:
    labels: np.ndarray  # (B,) int64
    probabilities: np.ndarray  # (B, C) float32, softmax of the exit classifier's logits
    exit_depth: np.ndarray  # (B,) int64, 1..D, D + 1 = regular classifier
    logits: np.ndarray  # (B, C) float32
    # input guard (dlsa_prod.input_guard); None when the bundle has no flow or no training quantiles
    loglik: np.ndarray | None = None  # (B,) float32, depth 1's log p(x)
    in_distribution: np.ndarray | None = None  # (B,) bool, loglik >= the training set's 0.1% quantile


def softmax_into(z: np.ndarray, out: np.ndarray) -> None:
    np.subtract(z, z.max(axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)


# keyword options each backend's loader reads, beyond Runtime's own arguments
BACKEND_OPTIONS = {name: b.options for name, b in BACKENDS.items()}
RUNTIME_ARGUMENTS = ("layout", "providers", "threads", "backend", "allow_fallback", "chunk_rows")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_arguments(backend: str, providers, threads, chunk_rows, options: dict) -> None:
    """Refuse (DLSAError, one line) keyword arguments the chosen backend does not read (a typo such as
    ``provider=`` would otherwise run on the default device), and ``threads`` / ``chunk_rows`` that are
    not integers in range."""
    if not _is_int(threads) or threads < 0:
        raise DLSAError(f"Runtime: threads must be a non-negative integer (0 = all CPUs), got {threads!r}")
    if not _is_int(chunk_rows) or chunk_rows < 1:
        raise DLSAError(f"Runtime: chunk_rows must be a positive integer, got {chunk_rows!r}")
    known = BACKEND_OPTIONS.get(backend)
    if known is None:
        return  # an unknown or out-of-process backend: load_executor names it
    if providers is not None and backend != "onnxruntime":
        raise DLSAError(f"Runtime: providers= applies to backend 'onnxruntime' only, not {backend!r}")
    for name in options:
        if name not in known:
            accepted = (*RUNTIME_ARGUMENTS, *known)
            owners = [b for b, opts in BACKEND_OPTIONS.items() if name in opts]
            close = difflib.get_close_matches(name, accepted, 1)
            hint = (f" (an option of backend {owners[0]!r})" if owners else
                    f" (did you mean {close[0]!r}?)" if close else "")
            raise DLSAError(f"Runtime: unknown argument {name!r} for backend {backend!r}{hint}; "
                            f"accepted: {', '.join(accepted)}")


class Runtime:
    def __init__(self, bundle: str | Path | BundleSpec, layout: str | None = None, providers=None, threads: int = 0,
                 backend: str = "onnxruntime", allow_fallback: bool = False, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 **options):
        check_arguments(backend, providers, threads, chunk_rows, options)
        self.spec = bundle if isinstance(bundle, BundleSpec) else read_spec(bundle)
        self.bundle = self.spec.path
        self.layout = layout or ("staged" if "staged" in self.spec.layouts else self.spec.layouts[0])
        self.spec.graphs(self.layout)  # one-line error for a layout the bundle lacks
        self.chunk_rows = int(chunk_rows)
        self.backend = backend
        self.dim, self.depth = self.spec.dim, self.spec.depth
        self.num_classes = self.spec.num_classes
        self.thresholds = np.asarray(self.spec.thresholds, dtype=np.float32)
        self.guard = self.spec.input_guard  # None: guard unavailable (older bundle, or a baseline)
        self.preprocess = None
        if self.spec.kind == "image":
            from .images.preprocess import Preprocess

            self.preprocess = Preprocess.from_dict(self.spec.preprocess)
        opts = {"providers": providers, "threads": threads, "allow_fallback": allow_fallback, **options}
        self.executor = load_executor(backend, self.spec, self.layout, opts)
        self.stage_times = Timer()

    @property
    def manifest(self) -> dict:
        return self.spec.manifest

    def describe(self) -> str:
        """What actually runs: backend, provider/device (for ONNX Runtime, where its nodes were placed), layout."""
        return f"{self.executor.describe()} {self.layout}"

    def warmup(self) -> None:
        """Prepare everything a request needs (the torch backend captures its CUDA graphs when it loads;
        this is a no-op for backends with nothing left to prepare)."""
        warm = getattr(self.executor, "warmup", None)
        if warm is not None:
            warm()

    def guard_status(self) -> str:
        """One line: the input guard's reference quantiles, or why it is unavailable."""
        from .input_guard import UNAVAILABLE

        if self.guard is None:
            return UNAVAILABLE
        return (f"input guard: depth-1 log-likelihood below {self.guard.q001:.2f} (training 0.1% quantile; 1%: "
                f"{self.guard.q01:.2f}) flags a row as out of distribution")

    def guard_warning(self, pred: Prediction, where: str = "input") -> str | None:
        """One line when more than input_guard.WARN_SHARE of PRED's rows fall below the training 0.1% quantile."""
        if self.guard is None or pred.loglik is None:
            return None
        return self.guard.warning(pred.loglik, where)

    def validate(self, batch) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            batch = np.asarray(batch)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise DLSAError(f"input must have shape (batch, {self.dim}), got {batch.shape}")
        if batch.dtype.kind not in "fiu":
            raise DLSAError(f"input must be numeric (float32 preferred), got dtype {batch.dtype}")
        return batch

    def predict(self, batch, profile: bool = False) -> Prediction:
        """Features (batch, dim) for a feature bundle; images for an image bundle: uint8 (N, H, W, C)
        or (N, C, H, W) (or float 0..1), preprocessed as recorded in the manifest."""
        if self.preprocess is not None:
            batch = np.asarray(batch)
            if batch.ndim == 3:  # one image without the batch axis
                batch = batch[None]
            return self._chunked(batch, batch.shape[0], lambda chunk, _: self.preprocess.to_nchw(chunk), profile)
        batch = self.validate(batch)
        return self._chunked(batch, batch.shape[0], self._prepare_features, profile)

    def _prepare_features(self, chunk: np.ndarray, first_row: int) -> np.ndarray:
        check_values(chunk, first_row=first_row)
        return np.ascontiguousarray(chunk, dtype=np.float32)

    def predict_prepared(self, x: np.ndarray, profile: bool = False) -> Prediction:
        """Graph-ready input: float32 features, or normalised float32 NCHW images."""
        x = np.asarray(x)
        return self._chunked(x, x.shape[0], lambda chunk, _: np.ascontiguousarray(chunk, dtype=np.float32), profile)

    def _chunked(self, batch, n: int, prepare, profile: bool) -> Prediction:
        """Run ``prepare(rows, first_row)`` and the executor chunk by chunk into preallocated outputs."""
        c = self.num_classes
        out = Prediction(np.empty(n, np.int64), np.empty((n, c), np.float32), np.empty(n, np.int64),
                         np.empty((n, c), np.float32), np.empty(n, np.float32) if self.depth else None)
        step = self.chunk_rows
        if self.executor.max_rows:
            step = min(step, self.executor.max_rows)
        for s in range(0, n, step):
            x = prepare(batch[s:s + step], s)
            logits, exit_depth, *loglik_1 = self.executor.run(x, self.stage_times if profile else None)
            e = s + x.shape[0]
            if out.loglik is not None:
                if loglik_1 and loglik_1[0] is not None:
                    out.loglik[s:e] = loglik_1[0]
                else:  # an executor that does not report depth 1's log-likelihood
                    out.loglik = None
            out.logits[s:e] = logits
            out.exit_depth[s:e] = exit_depth
            out.labels[s:e] = logits.argmax(1)
            softmax_into(out.logits[s:e], out.probabilities[s:e])
        if out.loglik is not None and self.guard is not None:
            out.in_distribution = self.guard.in_distribution(out.loglik)
        return out
