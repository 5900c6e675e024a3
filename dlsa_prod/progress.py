"""Progress of long loops: a tqdm bar in a terminal; otherwise (a log file, nohup, CI) one log line
at least every ``INTERVAL`` seconds with the position, elapsed time and ETA.

``progress(iterable=None, total=None, desc=..., unit=...)`` returns an object with tqdm's small
interface (iteration, ``update``, ``set_postfix``, ``close``, context manager).  The line clock is
shared by every loop, so a sequence of short loops still prints a line at least every INTERVAL
seconds (plus one step of the loop running), and a fast run prints none.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("dlsa_prod")

# seconds between progress lines when not in a terminal (the promise: at most 30); tests set it lower
INTERVAL = float(os.environ.get("DLSA_PROD_PROGRESS_SECONDS", "15"))
_last_line = [time.monotonic()]  # when the last progress line was printed (any loop)


def interactive() -> bool:
    """Both stdout and stderr are terminals (tqdm bars); else progress goes to log lines."""
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr))


def reset_clock() -> None:
    """Start the line clock now (a command starting: its first line comes INTERVAL seconds later)."""
    _last_line[0] = time.monotonic()


def format_seconds(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class LineProgress:
    """tqdm's interface, printing a log line when INTERVAL seconds have passed since the last one."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", every_update: bool = False):
        self.iterable, self.every_update = iterable, every_update
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.n = desc, unit, 0
        self.t0 = time.monotonic()
        self.postfix: dict = {}

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        where = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        parts = [f"{self.desc}: {where}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else ""),
                 f"elapsed {format_seconds(elapsed)}"]
        if self.total and self.n:
            parts.append(f"ETA {format_seconds(elapsed / self.n * (self.total - self.n))}")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.every_update or now - _last_line[0] >= INTERVAL:
            _last_line[0] = now
            log.info("%s", self.line())

    def close(self) -> None:
        pass


def progress(iterable=None, total=None, desc: str = "", unit: str = "it", leave: bool = False):
    """A tqdm bar in a terminal, else a LineProgress; an outer loop (``leave``: tune's candidates)
    prints a line at every update, the inner loops between them every INTERVAL seconds."""
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
    return LineProgress(iterable, total, desc, unit, every_update=leave)
