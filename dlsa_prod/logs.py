"""Readable logs: one line per event on stderr (kept clear of tqdm bars) and in the run's log file."""

from __future__ import annotations

import logging
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-5s %(message)s"


def setup_logging(log_file: Path | None = None, verbose: bool = False) -> logging.Handler | None:
    """Log to stderr and, if given, to log_file; returns the file handler (close it when done)."""
    root = logging.getLogger("dlsa_prod")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    stream = logging.StreamHandler()
    stream.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root.addHandler(stream)
    if log_file is not None:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(fh)
    root.propagate = False
    return fh if log_file is not None else None


def close_handler(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("dlsa_prod").removeHandler(handler)
        handler.close()
