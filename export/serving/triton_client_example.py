"""Call the Triton model that ``dlsa-prod export RUN --triton REPO`` writes (HTTP client).

    dlsa-prod export RUN --triton models/               # models/dlsa/{config.pbtxt, 1/model.onnx}
    tritonserver --model-repository=models/              # on the GPU server
    pip install tritonclient[http]
    python export/serving/triton_client_example.py --bundle RUN/bundle --url localhost:8000 \
        --features feats.npy                             # (N, dim) float rows, or an (N, ...) image array

The served model is the bundle's fused graph (or the single graph of a baseline bundle); its input
and output names, dtypes and shapes are read from the bundle spec, the same source config.pbtxt
was generated from, so this client never hard-codes ``x`` or ``image``.  Image bundles are
preprocessed here exactly as the runtime does (resize is the caller's job; the manifest records
size, mean and std).  Without ``--features`` the bundle's own samples.npy rows are sent.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from dlsa_prod.backends.triton import served_graph
from dlsa_prod.bundle_spec import read_spec
from dlsa_prod.errors import DLSAError
from dlsa_prod.value_range import check_values

def graph_input(spec, rows: np.ndarray) -> tuple[str, np.ndarray]:
    """(input name, graph-ready float32 array) for the served graph, preprocessed as the runtime does."""
    (inp,) = served_graph(spec).inputs
    if spec.kind == "image":
        from dlsa_prod.images.preprocess import Preprocess

        return inp.name, Preprocess.from_dict(spec.preprocess).to_nchw(rows)
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != spec.dim:
        raise DLSAError(f"features must have shape (batch, {spec.dim}), got {rows.shape}")
    check_values(rows, "features")
    return inp.name, np.ascontiguousarray(rows, dtype=np.float32)


def infer(url: str, model: str, name: str, x: np.ndarray, outputs: list[str]) -> dict:
    try:
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException
    except (ImportError, RuntimeError) as exc:  # RuntimeError: tritonclient installed without [http]
        raise DLSAError(f"tritonclient's HTTP client is not available ({exc}); pip install 'tritonclient[http]'") from None
    try:
        client = httpclient.InferenceServerClient(url=url)
        inp = httpclient.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput(o) for o in outputs])
    except (OSError, InferenceServerException) as exc:
        raise DLSAError(f"Triton at {url}, model {model!r}: {' '.join(str(exc).split())}") from None
    return {o: result.as_numpy(o) for o in outputs}


def labels_and_exits(out: dict) -> tuple[np.ndarray, np.ndarray]:
    """The fused graph returns pred and exit_depth; a single-classifier (baseline) graph only logits."""
    labels = out["pred"].reshape(-1) if "pred" in out else out["logits"].argmax(1)
    exits = out["exit_depth"].reshape(-1) if "exit_depth" in out else np.ones(len(labels), np.int64)
    return labels, exits


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Send rows to the Triton model written by `dlsa-prod export --triton`.")
    p.add_argument("--bundle", required=True, help="the bundle the Triton repository was written from")
    p.add_argument("--url", default="localhost:8000", help="Triton HTTP endpoint (default: %(default)s)")
    p.add_argument("--model", default="dlsa", help="model name in the repository (default: %(default)s)")
    p.add_argument("--features", help=".npy file of rows (default: the bundle's samples.npy)")
    p.add_argument("--rows", type=int, default=8, help="how many rows to send (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        spec = read_spec(args.bundle)
        path = args.features or spec.path / "samples.npy"
        try:
            rows = np.load(path, allow_pickle=False)[: args.rows]
        except (OSError, ValueError) as exc:
            raise DLSAError(f"{path}: cannot read rows ({exc})") from None
        name, x = graph_input(spec, rows)
        out = infer(args.url, args.model, name, x, [t.name for t in served_graph(spec).outputs])
    except DLSAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for i, (label, depth) in enumerate(zip(*labels_and_exits(out))):
        print(f"row {i}: label {int(label)}, exits at depth {int(depth)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
