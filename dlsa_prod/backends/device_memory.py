"""Device buffers for the TensorRT runner and builder, behind one small seam.

``TorchCudaMemory`` (the real one) allocates device buffers as torch CUDA tensors: torch is
already a dependency of the package, gives a caching allocator (no cudaMalloc per call), CUDA
streams and CUDA graphs, and the same tensors feed the torch backend and the parity gate; the
alternative, cuda-python, would add a dependency and hand-written memory management.

``HostMemory`` is the seam for tests: "device" memory is host memory (numpy arrays, the pointer
is the array's address), so a fake TensorRT can run engines on the CPU end to end; given a
CUDA-graph capture stub (``tests/fakes/cuda_graph_stub.py``) it also captures and replays.

Every buffer either seam allocates starts on a ``ALIGNMENT``-byte boundary, as TensorRT requires
of tensor addresses (NvInferRuntime.h, setTensorAddress: "at least 256-byte alignment"; torch's
CUDA caching allocator rounds blocks to 512 bytes).  Views into a buffer (a chunk ``a[s:e]``) are
not aligned in general: ``is_aligned`` tells the runner when to copy.

Both also serve as the ``ArrayOps`` of ``layouts.run_staged`` (routing on the device).
"""

from __future__ import annotations

import numpy as np

from ..errors import DLSAError
from ..array_ops import NumpyOps, TorchOps


ALIGNMENT = 256  # bytes


class HostMemory(NumpyOps):
    name = "host"

    def __init__(self, capture=None):
        self.capture = capture  # a torch.cuda stand-in for CUDA graphs, or None
        self._stream = capture.Stream() if capture is not None else None

    def compute_capability(self) -> str:
        return "host"

    def device_name(self) -> str:
        return "host memory (test seam)"

    def empty_dtype(self, shape, dtype: str):
        dt = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        raw = np.empty(n + ALIGNMENT, np.uint8)
        start = (-raw.ctypes.data) % ALIGNMENT
        return raw[start:start + n].view(dt).reshape(shape)

    def from_host(self, a: np.ndarray):
        out = self.empty_dtype(a.shape, a.dtype.name)
        np.copyto(out, a)
        return out

    def empty(self, shape, like):
        return self.empty_dtype(shape, like.dtype.name)

    def copy_into(self, dst, src) -> None:
        np.copyto(dst, src)

    def host(self, a) -> np.ndarray:
        return np.asarray(a)

    def ptr(self, a) -> int:
        assert a.flags["C_CONTIGUOUS"]
        return int(a.ctypes.data)

    def stream(self) -> int:
        return self._stream.cuda_stream if self._stream is not None else 0

    def synchronize(self) -> None:
        pass

    def concat(self, parts):
        return np.concatenate(parts)

    def copy(self, a):
        return np.array(a)

    def graph_capture(self):
        return self.capture  # None: no CUDA graphs on the host


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

    def copy_into(self, dst, src) -> None:
        dst.copy_(src)

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

    def copy(self, a):
        return a.clone()

    def graph_capture(self):
        return self.torch.cuda


def is_aligned(memory, a) -> bool:
    return memory.ptr(a) % ALIGNMENT == 0


def default_memory():
    """The memory engines run on: torch CUDA tensors (tests replace this seam with HostMemory)."""
    return TorchCudaMemory()
