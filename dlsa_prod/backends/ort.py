"""ONNX Runtime backend: one session per graph, explicit provider options, no silent fallback.

* ``cpu``: CPUExecutionProvider.
* ``cuda``: CUDAExecutionProvider with ``use_tf32=0`` (its default is 1; routing compares a
  log-likelihood of magnitude ~1e3 with a threshold, and TF32 error flips exits).
* ``tensorrt``: ONNX Runtime's TensorRT provider running the ONNX graphs (not the native engines:
  that is ``backend="tensorrt"``), with its engine and timing caches in a user cache directory keyed
  by the bundle's content hash, min/opt/max profile shapes from the bundle spec, fp16 only when
  asked.  The provider has no TF32 switch: use the native engines for fp32-exact routing.

After a session is created its ``get_providers()`` is checked: when the requested provider is not
active (ONNX Runtime falls back to CPU when a provider fails to start), one clear line is raised,
unless ``allow_fallback=True`` (then a warning is logged and ``describe()`` names what ran).

``describe()`` reports where the graphs' nodes were placed (share per provider), from ONNX Runtime's
graph-assignment record (``session.record_ep_graph_assignment_info``, onnxruntime >= 1.23); with an
older onnxruntime it names the registered providers and says so.

The TensorRT provider runs TensorRT with its default TF32 on: a session is measured against the CPU
provider on the bundle's validation samples and refused unless it passes the precision gate
(``precision_gate``) or ``accept_precision_loss=True``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..bundle_spec import BundleError, BundleSpec, GraphSpec
from ..errors import DLSAError
from ..array_ops import NUMPY
from ..user_cache import user_cache_dir
from .layouts import run_layout
from .precision_gate import judge, routing_report

log = logging.getLogger("dlsa_prod")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class ProviderError(DLSAError):
    """The requested execution provider is unavailable or did not start."""


def provider_name(name: str) -> str:
    p = PROVIDERS.get(name.lower(), name)
    if p not in PROVIDERS.values():
        raise ProviderError(f"unknown execution provider {name!r}; choose from {', '.join(PROVIDERS)}")
    return p


def profile_shapes(graph: GraphSpec, batch_profile: dict) -> dict[str, str]:
    """TensorRT provider profile options: ``name:1x8,other:1`` for min, opt and max."""
    out = {}
    for which in ("min", "opt", "max"):
        parts = [f"{t.name}:" + "x".join(str(d) for d in t.concrete(int(batch_profile[which]))) for t in graph.inputs]
        out[f"trt_profile_{which}_shapes"] = ",".join(parts)
    return out


def provider_chain(provider: str, spec: BundleSpec, graph: GraphSpec, fp16: bool = False) -> list:
    """The ``providers`` argument of InferenceSession for one graph: (name, options) pairs."""
    cuda = ("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"})
    if provider == "CPUExecutionProvider":
        return ["CPUExecutionProvider"]
    if provider == "CUDAExecutionProvider":
        return [cuda, "CPUExecutionProvider"]
    cache = user_cache_dir() / "ort-tensorrt" / spec.content_hash()
    trt = {"device_id": "0", "trt_fp16_enable": "True" if fp16 else "False",
           "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache / "engines"),
           "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache / "timing"),
           "trt_max_workspace_size": str(2 << 30), **profile_shapes(graph, spec.batch_profile)}
    return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]


def check_available(provider: str, allow_fallback: bool) -> None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available and not allow_fallback:
        raise ProviderError(f"execution provider {provider} is not available in this onnxruntime "
                            f"(available: {', '.join(available)}); install onnxruntime-gpu for cuda/tensorrt, "
                            f"or pass allow_fallback=True (CLI: --allow-fallback) to run on what is available")


def make_session(path: Path, provider: str, chain: list, sess_options, allow_fallback: bool):
    import onnxruntime as ort

    if provider != "CPUExecutionProvider":
        for item in chain:
            if isinstance(item, tuple) and "trt_engine_cache_path" in item[1]:
                Path(item[1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
                Path(item[1]["trt_timing_cache_path"]).mkdir(parents=True, exist_ok=True)
    names = [c[0] if isinstance(c, tuple) else c for c in chain]
    options = [c[1] if isinstance(c, tuple) else {} for c in chain]
    available = set(ort.get_available_providers())
    keep = [i for i, n in enumerate(names) if n in available]  # allow_fallback: ask only for what exists
    sess = ort.InferenceSession(str(path), sess_options=sess_options, providers=[names[i] for i in keep],
                                provider_options=[options[i] for i in keep])
    active = sess.get_providers()
    if provider not in active:
        msg = (f"{path.name}: onnxruntime did not start {provider} (active: {', '.join(active)}); "
               f"check the CUDA/TensorRT installation")
        if not allow_fallback:
            raise ProviderError(msg + ", or pass allow_fallback=True (CLI: --allow-fallback) to accept the fallback")
        log.warning("%s; running on %s (allow_fallback=True)", msg, active[0])
    return sess


ASSIGNMENT_KEY = "session.record_ep_graph_assignment_info"


def node_placement(sessions) -> dict[str, int] | None:
    """Nodes per execution provider over SESSIONS, or None when onnxruntime cannot say."""
    counts: dict[str, int] = {}
    for sess in sessions:
        info = getattr(sess, "get_provider_graph_assignment_info", None)
        if info is None:
            return None
        try:
            for sub in info():
                counts[sub.ep_name] = counts.get(sub.ep_name, 0) + len(sub.get_nodes())
        except Exception:  # noqa: BLE001 - recording not enabled or unsupported: fall back to "registered"
            return None
    return counts or None


def placement_text(counts: dict[str, int] | None, registered) -> str:
    if counts is None:
        return f"registered providers {'+'.join(registered)} (this onnxruntime does not report node placement)"
    total = sum(counts.values())
    return ", ".join(f"{p} {100 * n / total:.0f}%" for p, n in sorted(counts.items(), key=lambda kv: -kv[1])) + \
        f" of {total} nodes"


class OrtExecutor:
    def __init__(self, spec: BundleSpec, layout: str, provider: str = "cpu", threads: int = 0,
                 allow_fallback: bool = False, fp16: bool = False, spinning: bool | None = None,
                 accept_precision_loss: bool = False):
        import onnxruntime as ort

        self.spec, self.layout = spec, layout
        self.provider = provider_name(provider)
        check_available(self.provider, allow_fallback)
        self.specs = spec.graphs(layout)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry(ASSIGNMENT_KEY, "1")
        if spinning is None:
            spinning = layout != "staged"
        if not spinning:
            # staged: stages run one after another; idle sessions must not spin their thread pools and
            # steal the cores from the one running (measured: 2x slower per stage with spinning)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {}
        for name, g in self.specs.items():
            chain = provider_chain(self.provider, spec, g, fp16)
            self.sessions[name] = make_session(spec.path / g.file, self.provider, chain, opts, allow_fallback)
        self.active = sorted({s.get_providers()[0] for s in self.sessions.values()})
        self.placement = node_placement(self.sessions.values())
        self.calls = {name: self._caller(name) for name in self.sessions}
        self.max_rows = None
        self.precision_report = None
        if self.provider == "TensorrtExecutionProvider" and "TensorrtExecutionProvider" in self.active:
            self.precision_report = self._precision_gate(threads, accept_precision_loss)

    def _precision_gate(self, threads: int, accept: bool) -> dict:
        """This session's outputs against the CPU provider's on the bundle's validation samples."""
        samples = np.ascontiguousarray(self.spec.load_samples(), np.float32)
        ref_logits, ref_exit = OrtExecutor(self.spec, self.layout, "cpu", threads).run(samples)[:2]
        logits, exit_depth = self.run(samples)[:2]
        report = routing_report({"pred": ref_logits.argmax(1), "exit": ref_exit}, logits, exit_depth,
                                self.spec.load_sample_labels())
        return judge(report, f"{self.spec.path}: ONNX Runtime's TensorRT provider ({self.layout})", accept)

    def _caller(self, name):
        sess = self.sessions[name]
        outs = [t.name for t in self.specs[name].outputs]
        return lambda feeds: sess.run(outs, feeds)

    def describe(self) -> str:
        return f"onnxruntime {'+'.join(self.active)} [{placement_text(self.placement, self.active)}]"

    def run(self, x, timer=None):
        logits, exit_depth, loglik_1 = run_layout(self.layout, self.calls, self.specs, x, self.spec.thresholds,
                                                  self.spec.depth, NUMPY, timer)
        return logits, exit_depth.astype("int64", copy=False), loglik_1


def load(spec: BundleSpec, layout: str, options: dict) -> OrtExecutor:
    providers = options.get("providers") or ["cpu"]
    if isinstance(providers, str):
        providers = [providers]
    first = [p for p in providers if provider_name(p) != "CPUExecutionProvider"]
    if len(first) > 1:
        raise BundleError(f"choose one accelerated provider, got {', '.join(first)}")
    return OrtExecutor(spec, layout, first[0] if first else "cpu", options.get("threads", 0),
                       options.get("allow_fallback", False), options.get("fp16", False), options.get("spinning"),
                       options.get("accept_precision_loss", False))

