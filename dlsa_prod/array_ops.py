"""The array operations routing needs, one implementation per kind of array (the ``ArrayOps`` seam).

``NumpyOps`` works on host numpy arrays (ONNX Runtime), ``TorchOps`` on torch tensors of one device
(the PyTorch model, the torch backend, TensorRT's device buffers).  ``routing`` is written against
this seam only, so the same rule runs everywhere.  torch is imported only by ``TorchOps``.
"""

from __future__ import annotations

import numpy as np


class NumpyOps:
    def full(self, n, value, like):
        return np.full(n, value, dtype=np.int64)

    def arange(self, n, like):
        return np.arange(n)

    def empty(self, shape, like):
        return np.empty(shape, dtype=like.dtype)

    def count(self, mask) -> int:
        return int(np.count_nonzero(mask))

    def rows(self, a) -> int:
        return int(a.shape[0])

    def where(self, cond, a, b):
        return np.where(cond, a, b)

    def column(self, mask):
        return mask[:, None]


NUMPY = NumpyOps()


class TorchOps:
    """The same operations on torch tensors of one device (torch backend, TensorRT on torch CUDA memory)."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device

    def full(self, n, value, like):
        return self.torch.full((n,), value, dtype=self.torch.int64, device=self.device)

    def arange(self, n, like):
        return self.torch.arange(n, device=self.device)

    def empty(self, shape, like):
        return self.torch.empty(shape, dtype=like.dtype, device=self.device)

    def count(self, mask) -> int:
        return int(mask.sum())

    def rows(self, a) -> int:
        return int(a.shape[0])

    def where(self, cond, a, b):
        if not isinstance(a, self.torch.Tensor):
            a = self.torch.full_like(b, a)
        return self.torch.where(cond, a, b)

    def column(self, mask):
        return mask.unsqueeze(1)
