"""Data-parallel training across processes (torchrun): process group, sharding and collectives.

``torchrun --nproc_per_node N -m dlsa_prod train CONFIG`` starts N processes with RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous address in the environment; ``init_from_env`` joins
the group (NCCL on CUDA, gloo on CPU).  Every rank loads the same data and draws the same random
indices (same seed); each computes its contiguous share of every batch, and gradients are summed
across ranks, so all ranks hold identical parameters and take identical decisions (epoch
selection, thresholds, cluster priors).  Only rank 0 writes the run directory.

A single process (no WORLD_SIZE, or WORLD_SIZE=1) gets ``SINGLE``: every helper is then a no-op.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .errors import DLSAError

log = logging.getLogger("dlsa_prod")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None  # torch.distributed ProcessGroup (None = the default group)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ sharding
    def shard_bounds(self, n: int) -> tuple[int, int]:
        """[start, end) of this rank's contiguous share of n items (shares differ by at most 1)."""
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of t along dim 0 (a view)."""
        if not self.enabled:
            return t
        s, e = self.shard_bounds(t.shape[0])
        return t[s:e]

    # ------------------------------------------------------------------ collectives
    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks (no autograd)."""
        if self.enabled:
            torch.distributed.all_reduce(t, group=self.group)
        return t

    def sum_with_grad(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks that autograd differentiates through (backward sums the gradients too)."""
        if not self.enabled:
            return t
        return _SumOverRanks.apply(t, self.group)

    def broadcast_(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.enabled:
            torch.distributed.broadcast(t, src, group=self.group)
        return t

    def broadcast_object(self, obj, src: int = 0):
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src, group=self.group)
        return box[0]

    def all_gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's (n_r, ...) tensor in rank order (n_r may differ)."""
        if not self.enabled:
            return t
        n = torch.tensor([t.shape[0]], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        torch.distributed.all_gather(sizes, n, group=self.group)
        sizes = [int(s) for s in sizes]
        pad = t.new_zeros((max(sizes),) + tuple(t.shape[1:]))
        pad[:t.shape[0]] = t
        parts = [torch.empty_like(pad) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, pad, group=self.group)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier(group=self.group)

    def sync_module_(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if self.enabled:
            for t in list(module.parameters()) + list(module.buffers()):
                torch.distributed.broadcast(t.data, 0, group=self.group)


class _SumOverRanks(torch.autograd.Function):
    """y = sum over ranks of x; the gradient of x is the sum over ranks of the gradients of y
    (each rank's loss depends on y, so x's total gradient collects every rank's)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        y = x.clone()
        torch.distributed.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, grad):
        g = grad.clone()
        torch.distributed.all_reduce(g, group=ctx.group)
        return g, None


SINGLE = DistContext()
_current: DistContext = SINGLE


def current() -> DistContext:
    """The process's data-parallel context (SINGLE unless ``init_from_env`` joined a group)."""
    return _current


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DLSAError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def init_from_env(device: torch.device, timeout_s: int = 1800) -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1 (idempotent); SINGLE otherwise."""
    global _current
    if _current.enabled or env_world_size() <= 1:
        return _current
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise DLSAError(f"WORLD_SIZE is set but {key} is not: start distributed runs with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {}
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DLSAError(f"LOCAL_RANK {local_rank}: this node has only {torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(local_rank)
        kwargs["device_id"] = torch.device("cuda", local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    _current = DistContext(rank, torch.distributed.get_world_size(), local_rank)
    _raise_on_sigterm()
    log.info("distributed: rank %d of %d (local rank %d), backend %s", rank, _current.world_size, local_rank, backend)
    return _current


def shutdown() -> None:
    global _current
    if _current.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _current = SINGLE


def _raise_on_sigterm() -> None:
    """torchrun stops the other ranks with SIGTERM when one fails: turn it into an exception so
    that the staging directory is removed (nothing half-written) instead of dying mid-write."""

    def handler(signum, frame):
        raise SystemExit(f"rank {_current.rank}: stopped by torchrun because another rank failed")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def quiet_other_ranks() -> Optional[int]:
    """Progress bars, info and warnings from rank 0 only (every rank takes the same decisions, so
    the others would repeat them); other ranks still log errors.  Returns the level set, if any."""
    if _current.enabled and not _current.is_main:
        os.environ["TQDM_DISABLE"] = "1"
        logging.getLogger("dlsa_prod").setLevel(logging.ERROR)
        return logging.ERROR
    return None


class ScratchDir:
    """What a rank other than 0 writes into: a private temporary directory, always removed."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix=f"dlsa_prod_rank{_current.rank}_"))

    def commit(self) -> Path:
        shutil.rmtree(self.path, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class RankStaging:
    """Rank 0 stages the real run directory; the others a scratch directory.  ``commit`` first
    waits for every rank to finish, so a rank that failed leaves no run behind."""

    def __init__(self, make_staging: Callable[[], Any]):
        self.inner = make_staging() if _current.is_main else ScratchDir()
        self.path = self.inner.path

    def commit(self):
        _current.barrier()
        return self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()


def join_for_run(device_name: str) -> DistContext:
    """Join torchrun's process group for a run (no-op in a single process) and quiet other ranks."""
    if env_world_size() <= 1:
        return _current
    from .device import resolve_device

    return init_from_env(resolve_device(device_name))
