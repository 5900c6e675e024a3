"""Runtime against the real onnxruntime-gpu wheel on a machine without CUDA (run by check_onnxruntime_gpu.sh
inside its own venv: numpy, onnx, jsonschema and onnxruntime-gpu only, no torch).

onnxruntime-gpu lists the CUDA and TensorRT providers, then falls back to CPU when a session cannot
start them, as on a GPU box with a broken CUDA install.  The runtime must say so in one line and
run only when allow_fallback=True.  Usage: python check_onnxruntime_gpu.py BUNDLE
"""

import sys

import numpy as np
import onnxruntime as ort

from dlsa_prod.backends.ort import ProviderError
from dlsa_prod.runtime import Runtime


def main(bundle: str) -> int:
    dist = getattr(ort, "__file__", "")
    print(f"onnxruntime {ort.__version__} ({dist}); providers: {', '.join(ort.get_available_providers())}")
    for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        assert p in ort.get_available_providers(), f"this is not the onnxruntime-gpu wheel: {p} not listed"
    x = np.load(f"{bundle}/samples.npy")[:8]
    cpu = Runtime(bundle).predict(x)
    for provider in ("cuda", "tensorrt"):
        try:
            Runtime(bundle, providers=[provider])
        except ProviderError as exc:
            msg = str(exc)
            assert "\n" not in msg and "allow_fallback=True" in msg, msg
            print(f"providers=['{provider}']: refused in one line: {msg}")
        else:
            raise AssertionError(f"providers=['{provider}'] ran without a GPU and without an error")
        rt = Runtime(bundle, providers=[provider], allow_fallback=True)
        out = rt.predict(x)
        assert np.array_equal(out.labels, cpu.labels) and np.array_equal(out.exit_depth, cpu.exit_depth)
        print(f"providers=['{provider}'], allow_fallback=True: ran on {rt.describe()}")
    assert "torch" not in sys.modules, "the ONNX Runtime path imported torch"
    print("onnxruntime-gpu check: ok (no torch imported)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
