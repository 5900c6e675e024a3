"""Device buffers for the TensorRT runner and builder, behind one small seam.

``TorchCudaMemory`` (the real one) allocates device buffers as torch CUDA tensors: torch is
already a dependency of the package, gives a caching allocator (no cudaMalloc per call), CUDA
streams and CUDA graphs, and the same tensors feed the torch backend and the parity gate; the
alternative, cuda-python, would add a dependency and hand-written memory management.

``HostMemory`` is the seam for tests: "device" memory is host memory (numpy arrays, the pointer
is the array's address, stream 0), so a fake TensorRT can run engines on the CPU end to end.

Both also serve as the ``ArrayOps`` of ``layouts.run_staged`` (routing on the device).
"""

from __future__ import annotations

import numpy as np

from ..errors import DLSAError
from .layouts import NumpyOps, TorchOps


class HostMemory(NumpyOps):
    name = "host"

    def compute_capability(self) -> str:
        return "host"

    def device_name(self) -> str:
        return "host memory (test seam)"

    def empty_dtype(self, shape, dtype: str):
        return np.empty(shape, dtype=np.dtype(dtype))

    def from_host(self, a: np.ndarray):
        return np.ascontiguousarray(a)

    def host(self, a) -> np.ndarray:
        return np.asarray(a)

    def ptr(self, a) -> int:
        assert a.flags["C_CONTIGUOUS"]
        return int(a.ctypes.data)

    def stream(self) -> int:
        return 0

    def synchronize(self) -> None:
        pass

    def concat(self, parts):
        return np.concatenate(parts)

    def graph_capture(self):
        return None  # no CUDA graphs on the host


class TorchCudaMemory(TorchOps):
    name = "cuda"

    def __init__(self, device: int = 0):
        import torch

        if not torch.cuda.is_available():
            raise DLSAError("TensorRT engines need an NVIDIA GPU; none is visible to torch")
        super().__init__(torch.device("cuda", device))
        self._stream = torch.cuda.Stream(self.device)

    _DTYPES = {"float32": "float32", "int64": "int64", "int32": "int32", "float16": "float16", "bool": "bool",
               "uint8": "uint8"}

    def compute_capability(self) -> str:
        return "%d.%d" % self.torch.cuda.get_device_capability(self.device)

    def device_name(self) -> str:
        return self.torch.cuda.get_device_name(self.device)

    def empty_dtype(self, shape, dtype: str):
        return self.torch.empty(tuple(shape), dtype=getattr(self.torch, self._DTYPES[dtype]), device=self.device)

    def from_host(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=False)

    def host(self, a) -> np.ndarray:
        return a.detach().cpu().numpy()

    def ptr(self, a) -> int:
        return int(a.data_ptr())

    def stream(self) -> int:
        return int(self._stream.cuda_stream)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def concat(self, parts):
        return self.torch.cat(parts)

    def graph_capture(self):
        return self.torch.cuda


def default_memory():
    """The memory engines run on: torch CUDA tensors (tests replace this seam with HostMemory)."""
    return TorchCudaMemory()
