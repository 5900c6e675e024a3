"""Sum gradients across data-parallel ranks with one collective per step.

The parameters' ``.grad`` tensors are views into one flat buffer, so a step all-reduces the
buffer once, without copying.  Single process: nothing is changed and ``all_reduce`` is a no-op.
Use ``optimizer.zero_grad(set_to_none=False)`` so the views are kept between steps.
"""

from __future__ import annotations

import torch

from ..distributed import DistContext


class GradientSync:
    def __init__(self, module: torch.nn.Module, dist: DistContext):
        self.dist = dist
        self.flat = None
        if not dist.enabled:
            return
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            return
        self.flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=params[0].dtype)
        offset = 0
        for p in params:
            p.grad = self.flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()

    def all_reduce(self) -> None:
        if self.flat is not None:
            self.dist.all_reduce_(self.flat)
