"""How training runs (not what it learns): precision, optional torch.compile, data-parallel context.

Passed as an argument: ``train_flow``, ``train_classifier``, ``train_baselines`` and ``train_dlsa``
take ``options=`` (None: ``TrainOptions()``, fp32 on one process).  The pipeline builds the run's
options once with ``run_options`` and hands the same object to every trainer call.
"""

from __future__ import annotations

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


def run_options(cfg) -> TrainOptions:
    """The run's training options (precision, compile, process group) for every trainer call; ranks
    other than 0 log errors only from here on (call it after the run's logging is set up).  Lives
    here, not in ``distributed``, so that ``distributed`` never imports ``training``."""
    quiet_other_ranks()
    return TrainOptions.from_config(cfg)


def resolved(options: TrainOptions | None) -> TrainOptions:
    return TrainOptions() if options is None else options
