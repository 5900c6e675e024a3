"""The PyTorch backend: ``Runtime(bundle, backend="torch")`` (torch is imported only here).

Export copies the run's weights and config into the bundle (``torch/``, hashed like every other
file); this backend rebuilds the cascade from them on CUDA or CPU.

* ``fused`` (and ``single``): the masked all-depths form (every depth for the whole batch, each
  sample's exit picked with masks: no host synchronisation inside), padded to a batch bucket
  (powers of two up to the serving profile's max) and, on CUDA, replayed as one CUDA graph per
  bucket; on CPU the same bucketed code runs eagerly.
* ``staged``: per-sample routing (``layouts.run_staged``, the same code the other backends use):
  each depth's filter runs on the samples still remaining and each classifier on the samples
  exiting there, every stage padded to a batch bucket and, on CUDA, replayed as one CUDA graph per
  stage and bucket; the one host round trip per depth is the count of exiting samples.

CUDA graphs are captured when the executor loads (``warmup()`` re-checks that every bucket is
ready), never at a request: torch.cuda.graph's default "global" capture mode makes CUDA work of any
other thread fail while a capture runs, so a first request for a new bucket would break requests
being served on other threads.  Captures use ``capture_error_mode="thread_local"`` and one memory
pool per executor (``graph_pool_handle``), shared by every bucket and stage.

fp32 throughout, TF32 off (``ops.precision.ieee_fp32``).  Parity-gated at export like the graphs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..bundle_spec import FUSED, REGULAR, SINGLE, BundleError, BundleSpec, classifier_name, filter_name
from ..errors import DLSAError
from ..ops.precision import ieee_fp32
from ..array_ops import TorchOps
from .layouts import run_staged

TORCH_DIR = "torch"


def add_weights(staging: Path, run, model_name: str) -> dict:
    """Copy the run's config, meta and the exported model's weights into STAGING/torch; return the
    manifest's ``torch`` entry."""
    from ..run_dir import weights_file

    weights = weights_file(model_name)
    d = staging / TORCH_DIR
    d.mkdir()
    for f in ("config.yaml", "meta.json", weights):
        shutil.copyfile(Path(run.path) / f, d / f)
    return {"dir": TORCH_DIR, "weights": weights}


def build(staging: Path, spec, options: dict) -> dict:
    """The registry's build step (options: run, model): the manifest's ``torch`` entry."""
    return add_weights(staging, options["run"], options["model"])


def buckets_for(max_rows: int) -> list[int]:
    out, b = [], 1
    while b < max_rows:
        out.append(b)
        b *= 2
    return out + [max_rows]


def load_model(spec: BundleSpec, device):
    """(module, kind) from the bundle's torch/ copy of the run; weights checked against the manifest."""
    from ..run_dir import read_run_meta, trained_model

    t = spec.artifact("torch")
    if not t:
        raise BundleError(f"{spec.path}: the bundle carries no torch weights (re-export it for backend='torch')")
    d = spec.path / t["dir"]
    cfg, meta = read_run_meta(d, required=("config.yaml", "meta.json"))
    sha = spec.manifest["files"].get(f"{t['dir']}/{t['weights']}")
    return trained_model(cfg, meta, spec.source["model"], d, sha).to(device).eval()


class Bucketed:
    """Runs ``fn(*static_inputs) -> tuple of tensors`` on inputs padded to a bucket size, one set of
    static input buffers (and, on CUDA, one captured graph) per bucket, all prepared at construction.
    ``inputs``: (item shape, torch dtype) per argument; padding rows are zeros (a valid cluster index too)."""

    def __init__(self, fn, inputs, buckets, device, capture):
        import torch

        self.fn, self.inputs, self.buckets, self.device = fn, list(inputs), list(buckets), device
        self.entries: dict[int, tuple] = {}
        for b in self.buckets:  # capture (fn, static_inputs) -> replay() returning the static outputs
            static = [torch.zeros((b, *shape), dtype=dtype, device=device) for shape, dtype in self.inputs]
            self.entries[b] = (static, capture(fn, static))

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def __call__(self, *xs):
        n = xs[0].shape[0]
        b = self.bucket(n)
        static, replay = self.entries[b]
        for buf, x in zip(static, xs):
            buf[:n].copy_(x)
            if n < b:
                buf[n:].zero_()
        return tuple(o[:n] for o in replay())


def eager_capture(fn, static):
    return lambda: fn(*static)


def graph_capture(cuda, pool):
    """A capture function recording CUDA graphs with CUDA (``torch.cuda``, or a test stand-in) into POOL."""

    def capture(fn, static):
        s = cuda.Stream()
        s.wait_stream(cuda.current_stream())
        with cuda.stream(s):
            for _ in range(2):  # warm-up on a side stream, as torch's CUDA graph docs require
                fn(*static)
        cuda.current_stream().wait_stream(s)
        g = cuda.CUDAGraph()
        with cuda.graph(g, pool=pool, capture_error_mode="thread_local"):
            out = fn(*static)
        return lambda: (g.replay(), out)[1]

    return capture


class TorchExecutor:
    def __init__(self, spec: BundleSpec, layout: str, device: str = "auto", cuda_graphs: bool = True,
                 max_bucket: int | None = None, model=None, graph_capture_with=None):
        """``graph_capture_with``: a ``torch.cuda`` stand-in to capture with on any device (tests)."""
        import threading

        import torch

        if spec.kind == "image":
            raise BundleError(f"{spec.path}: backend 'torch' serves feature bundles; use onnxruntime or tensorrt "
                              f"for image bundles")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise DLSAError("backend 'torch' on cuda: no GPU is visible to torch")
        self.torch, self.device, self.spec, self.layout = torch, torch.device(device), spec, layout
        self.model = model if model is not None else load_model(spec, self.device)
        self.max_rows = int(max_bucket or spec.batch_profile["max"])
        self.lock = threading.Lock()  # one set of static buffers per bucket
        cuda = graph_capture_with or (torch.cuda if cuda_graphs and self.device.type == "cuda" else None)
        self.graphs = cuda is not None
        with torch.no_grad(), ieee_fp32():
            self._build(spec, layout, cuda)

    def _build(self, spec, layout, cuda):
        import torch

        from ..models.graphs import FusedGraph

        capture = graph_capture(cuda, cuda.graph_pool_handle()) if cuda is not None else eager_capture
        buckets = buckets_for(self.max_rows)
        feat = [((spec.dim,), torch.float32)]
        self.calls = self.specs = None
        if layout == FUSED:
            fused = FusedGraph(self.model).eval()
            self.fn = Bucketed(lambda x: (lambda o: (o[0], o[2], o[3][:, 0]))(fused(x)), feat, buckets, self.device,
                               capture)
        elif layout == SINGLE:
            clf = self.model
            depth = spec.depth

            def single(x):
                logits = clf(x)
                return logits, torch.full((x.shape[0],), depth + 1, dtype=torch.int64, device=x.device)

            self.fn = Bucketed(single, feat, buckets, self.device, capture)
        else:
            self.specs = spec.graphs(layout)
            self.calls = self._stage_calls(feat, buckets, capture)
            self.ops = TorchOps(self.device)
            self.fn = self._staged

    def _stage_calls(self, feat, buckets, capture) -> dict:
        """One bucketed (CUDA-graphed) callable per staged graph, fed by the spec's input names."""
        import torch

        model = self.model
        fns = {REGULAR: (lambda x: (model.regular(x),), feat)}
        for d, stage in enumerate(model.stages, start=1):
            fns[filter_name(d)] = (lambda x, s=stage: tuple(s.route(x)), feat)
            fns[classifier_name(d)] = (lambda x, c, s=stage: (s.classify(x, c),), feat + [((), torch.int64)])
        calls = {}
        for name, (fn, inputs) in fns.items():
            bucketed = Bucketed(fn, inputs, buckets, self.device, capture)
            names = [t.name for t in self.specs[name].inputs]
            calls[name] = lambda feeds, _b=bucketed, _n=names: list(_b(*[feeds[n] for n in _n]))
        return calls

    def _staged(self, x):
        return run_staged(self.calls, self.specs, x, self.spec.thresholds, self.spec.depth, self.ops)

    def describe(self) -> str:
        what = "CUDA graphs per batch bucket, captured at load" if self.graphs else "eager, batch buckets"
        return f"torch {self.device.type} ({what})"

    def warmup(self) -> list[int]:
        """The batch buckets, every one prepared (and, with CUDA graphs, captured) when this executor loaded."""
        return buckets_for(self.max_rows)

    def run(self, x: np.ndarray, timer=None):
        torch = self.torch

        with torch.no_grad(), ieee_fp32(), self.lock:
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            logits, exit_depth, *loglik_1 = self.fn(t)
            ll = loglik_1[0].cpu().numpy().copy() if loglik_1 and loglik_1[0] is not None else None
            return logits.cpu().numpy().copy(), exit_depth.cpu().numpy().astype(np.int64), ll


def load(spec: BundleSpec, layout: str, options: dict) -> TorchExecutor:
    return TorchExecutor(spec, layout, options.get("device", "auto"), options.get("cuda_graphs", True),
                         options.get("max_bucket"), options.get("model"), options.get("graph_capture_with"))
