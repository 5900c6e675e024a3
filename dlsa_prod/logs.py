"""Readable logs: one line per event on stderr (kept clear of tqdm bars) and in the run's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-5s %(message)s"


class LogFile(logging.FileHandler):
    """The run's log file: a write error (a full disk) is kept and raised by ``close_handler`` as one
    OSError naming the file, instead of a traceback printed for every later record."""

    error: OSError | None = None

    def handleError(self, record) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) and self.error is None:
            self.error = exc
        elif not isinstance(exc, OSError):
            super().handleError(record)


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
        fh = LogFile(log_file)
        fh.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(fh)
    root.propagate = False
    return fh if log_file is not None else None


def close_handler(handler: logging.Handler | None, discard: bool = False) -> None:
    """Detach and close HANDLER; a write error of a LogFile is raised here (OSError naming the file)
    unless ``discard`` (the file is being thrown away with its directory)."""
    if handler is None:
        return
    logging.getLogger("dlsa_prod").removeHandler(handler)
    try:
        handler.close()
    except OSError as exc:
        if isinstance(handler, LogFile) and handler.error is None:
            handler.error = exc
    error = getattr(handler, "error", None)
    if error is not None and not discard:
        if error.filename is None:
            error.filename = handler.baseFilename
        handler.error = None
        raise error
