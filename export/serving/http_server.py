"""A small JSON inference endpoint around ``dlsa_prod.runtime.Runtime`` (standard library only).

    python export/serving/http_server.py --bundle RUN/bundle --port 8000
    python export/serving/http_server.py --bundle RUN/bundle --provider cuda      # ONNX Runtime CUDA
    python export/serving/http_server.py --bundle RUN/bundle --backend tensorrt   # export --trt engines

    curl -s localhost:8000/healthz
    curl -s -X POST localhost:8000/predict -d '{"features": [[0.1, 0.2, ...], [...]]}'
      -> {"labels": [3, 0], "confidence": [0.97, 0.88], "exit_depth": [1, 3], "in_distribution": [true, true],
          "classes": [...]}

Image bundles take ``{"images": ...}``: a list of uint8 images (0..255 integers) as H x W x C or
C x H x W nested lists (or floats in 0..1); the runtime preprocesses them as the manifest records.
``classes`` (class names) is present only when the bundle names its classes; ``in_distribution``
(the input guard: depth 1's log p(x) at least the training set's 0.1% quantile) only when the
bundle carries the guard's quantiles.  A request with more than 5% of its rows below that quantile
is logged as a one-line warning.

Bad input (malformed JSON, a missing key, ragged rows, the wrong width, NaN or values beyond the
float32 range) is answered with HTTP 400 and ``{"error": "<one line>"}``.  One ``Runtime`` is
shared by all request threads (``predict`` is thread-safe).  This is an example to embed or copy:
for production traffic put it behind a reverse proxy, or serve the bundle with Triton
(``dlsa-prod export RUN --triton DIR``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from dlsa_prod.errors import DLSAError
from dlsa_prod.runtime import Runtime

log = logging.getLogger("dlsa_prod.serving")
MAX_BODY_BYTES = 64 << 20


class BadRequest(Exception):
    """The request cannot be served as sent (HTTP 400 or the status given)."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


def one_line(message) -> str:
    return " ".join(str(message).split())


def parse_inputs(body: bytes, runtime: Runtime) -> np.ndarray:
    """The JSON request body -> the array ``Runtime.predict`` takes (its own checks follow there)."""
    key = "images" if runtime.spec.kind == "image" else "features"
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict) or key not in request:
        raise BadRequest(f'request body must be a JSON object with a "{key}" key')
    try:
        x = np.asarray(request[key])
    except ValueError:
        raise BadRequest(f'"{key}" must be a list of equally long lists of numbers (ragged input)') from None
    if x.dtype.kind not in "iuf":  # strings, booleans, nulls, nested objects
        raise BadRequest(f'"{key}" must hold numbers only, got {type(request[key]).__name__} of {x.dtype} values')
    if key == "features":
        if x.ndim == 1 and x.size == runtime.dim:
            raise BadRequest(f'"features" must be a list of rows, e.g. [[...{runtime.dim} numbers...]]')
        return x.astype(np.float64)  # exact for JSON numbers; the runtime checks the float32 range
    if x.dtype.kind in "iu":
        if x.size and (x.min() < 0 or x.max() > 255):
            raise BadRequest('"images" integers must be uint8 pixel values 0..255')
        return x.astype(np.uint8)
    return x


def respond_predictions(runtime: Runtime, x: np.ndarray) -> dict:
    pred = runtime.predict(x)
    out = {"labels": pred.labels.tolist(),
           "confidence": pred.probabilities.max(axis=1).astype(float).tolist() if len(pred.labels) else [],
           "exit_depth": pred.exit_depth.tolist()}
    if pred.in_distribution is not None:
        out["in_distribution"] = pred.in_distribution.tolist()
        warning = runtime.guard_warning(pred, "POST /predict")
        if warning:
            log.warning("%s", warning)
    names = runtime.spec.class_names
    if names:
        out["classes"] = [names[i] for i in pred.labels]
    return out


class PredictHandler(BaseHTTPRequestHandler):
    server_version = "dlsa-prod-serving/1"
    protocol_version = "HTTP/1.1"

    @property
    def runtime(self) -> Runtime:
        return self.server.runtime

    def _send(self, status: HTTPStatus, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, message) -> None:
        self._send(status, {"error": one_line(message)})

    def do_GET(self):  # noqa: N802 (http.server naming)
        if self.path.split("?")[0] != "/healthz":
            return self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path}; use POST /predict or GET /healthz")
        rt = self.runtime
        self._send(HTTPStatus.OK, {"status": "ok", "runs": rt.describe(), "input": rt.spec.kind,
                                   "dim": rt.dim, "num_classes": rt.num_classes, "depth": rt.depth,
                                   "input_guard": rt.guard_status()})

    def do_POST(self):  # noqa: N802
        if self.path.split("?")[0] != "/predict":
            self.close_connection = True  # the body is left unread
            return self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path}; use POST /predict")
        try:
            x = parse_inputs(self._read_body(), self.runtime)
            result = respond_predictions(self.runtime, x)
        except BadRequest as exc:
            return self._error(exc.status, exc)
        except DLSAError as exc:  # the runtime's one-line input errors (width, NaN, float32 range, ...)
            return self._error(HTTPStatus.BAD_REQUEST, exc)
        except Exception as exc:  # a server fault, not the client's: log it in full, answer one line
            log.exception("predict failed")
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}: {exc}")
        self._send(HTTPStatus.OK, result)

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise BadRequest("Content-Length header required", HTTPStatus.LENGTH_REQUIRED)
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise BadRequest(f"bad Content-Length {length!r}") from None
        if n > self.server.max_body_bytes:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            raise BadRequest(f"request body of {n} bytes exceeds the limit of {self.server.max_body_bytes} bytes",
                             HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        return self.rfile.read(n)

    def log_message(self, format, *args):  # noqa: A002 (http.server signature)
        log.info("%s %s", self.address_string(), format % args)


class PredictServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks shutdown

    def __init__(self, address, runtime: Runtime, max_body_bytes: int = MAX_BODY_BYTES):
        super().__init__(address, PredictHandler)
        self.runtime = runtime
        self.max_body_bytes = max_body_bytes


def make_server(runtime: Runtime, host: str = "127.0.0.1", port: int = 8000,
                max_body_bytes: int = MAX_BODY_BYTES) -> PredictServer:
    """A bound server (``port=0``: an ephemeral port, see ``server.server_address``); call
    ``serve_forever()`` (in a thread if you like) and ``shutdown()``/``server_close()`` to stop."""
    return PredictServer((host, port), runtime, max_body_bytes)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve a dlsa-prod bundle as a JSON endpoint (POST /predict, GET /healthz).")
    p.add_argument("--bundle", required=True, help="bundle directory written by `dlsa-prod export`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port; default: %(default)s)")
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime, tensorrt or torch (default: %(default)s)")
    p.add_argument("--provider", action="append", default=None,
                   help="ONNX Runtime provider: cpu, cuda, tensorrt (repeat for a preference list; default cpu)")
    p.add_argument("--layout", default=None, help="fused or staged (default: staged when the bundle has it)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        runtime = Runtime(args.bundle, layout=args.layout, backend=args.backend, providers=args.provider)
        server = make_server(runtime, args.host, args.port)
    except DLSAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # port in use, address not available
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    # the first line is machine-readable: tests and scripts read the port chosen for --port 0
    print(f"serving {args.bundle} ({runtime.describe()}) on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
