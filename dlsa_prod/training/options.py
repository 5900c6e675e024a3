"""How training runs (not what it learns): precision, optional torch.compile, data-parallel context.

``train_flow`` and ``train_classifier`` take ``options=``; when omitted they use the options
made active by ``using_options`` (the pipeline activates the run's options once, so every
trainer call inside a run, baselines included, gets the same precision and process group).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

from ..distributed import DistContext, current, quiet_other_ranks
from .precision import check_train_precision


@dataclass(frozen=True)
class TrainOptions:
    precision: str = "fp32"  # fp32 | tf32 | bf16 (see training/precision.py)
    compile: bool = False  # torch.compile the models' forward (opt-in; measure before enabling)
    dist: DistContext = field(default_factory=DistContext)

    def __post_init__(self):
        check_train_precision(self.precision)

    @classmethod
    def from_config(cls, cfg) -> "TrainOptions":
        return cls(getattr(cfg, "precision", "fp32"), bool(getattr(cfg, "compile", False)), current())


_active: contextvars.ContextVar[TrainOptions] = contextvars.ContextVar("dlsa_prod_train_options",
                                                                       default=TrainOptions())


def active_options() -> TrainOptions:
    return _active.get()


@contextlib.contextmanager
def using_options(options: TrainOptions):
    token = _active.set(options)
    try:
        yield options
    finally:
        _active.reset(token)


@contextlib.contextmanager
def rank_context(cfg):
    """The run's training options (precision, compile, process group) for every trainer call;
    ranks other than 0 log errors only (entered after the run's logging is set up).  Lives here, not
    in ``distributed``, so that ``distributed`` never imports ``training``."""
    quiet_other_ranks()
    with using_options(TrainOptions.from_config(cfg)) as opts:
        yield opts
