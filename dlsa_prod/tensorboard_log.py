"""Opt-in TensorBoard log of a run (``output.tensorboard: true`` or ``train --tensorboard``):
RUN/tensorboard/ next to history.json, written with ``torch.utils.tensorboard.SummaryWriter``.

Scalars: every per-epoch value of history.json (losses, learning rate and the selection scores:
good clusters and cluster purity for the flows, val accuracy for the classifiers) as
``<loop>/<name>`` at step = epoch; the routing shares (train, val, test) as ``routing/<split>/<exit>``.
Without the ``tensorboard`` package the run goes on and one warning line says why there is no log.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("dlsa_prod")
DIRNAME = "tensorboard"


def exit_names(n: int) -> list[str]:
    return [f"depth{d + 1}" for d in range(n - 1)] + ["regular"]


def write_tensorboard(directory: Path, histories: dict, metrics: dict) -> bool:
    """Write the log into DIRECTORY; False (and one warning) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        log.warning("output.tensorboard: no TensorBoard log written (%s; pip install tensorboard)", exc)
        return False
    writer = SummaryWriter(str(directory))
    try:
        for loop, rows in histories.items():
            for row in rows:
                for key, value in row.items():
                    if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                        writer.add_scalar(f"{loop}/{key}", value, row["epoch"])
        shares = {split: metrics[split]["dlsa"]["routing_share"] for split in ("val", "test") if split in metrics}
        if "train_routing_share" in metrics:
            counts = metrics["train_routing_share"]
            shares["train"] = [c / max(sum(counts), 1) for c in counts]
        for split, share in shares.items():
            for name, value in zip(exit_names(len(share)), share):
                writer.add_scalar(f"routing/{split}/{name}", value, 0)
    finally:
        writer.close()
    return True
