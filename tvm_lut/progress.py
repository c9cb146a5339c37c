"""Progress of long work, readable where it is read: a bar on a terminal, plain lines in a log.

Every function of the package that takes `progress=True` reports through `progress_bar`: a tqdm bar when stderr
is a terminal; otherwise (a log, CI, a notebook's saved output) one line per tenth of the work, no carriage
returns. `progress=False` (the CLI's `--no-progress`) reports nothing.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

__all__ = ["progress_bar"]


class _Lines:
    """The part of tqdm's interface the package uses, printing a full line per tenth of the work, never a `\\r`."""

    def __init__(self, iterable=None, desc: str = "", total: int | None = None, unit: str = "it", initial: int = 0,
                 leave: bool = True):
        del leave  # a printed line stays
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total, self.unit, self.n = iterable, desc, total, unit, initial
        self.postfix = ""
        self._start = time.monotonic()
        self._printed = self._tenth()
        self._printed_n = initial
        self._closed = False

    def _tenth(self) -> int:
        return 10 * self.n // self.total if self.total else self.n

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix(self, **values):
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1):
        self.n += n
        if self._tenth() > self._printed:
            self._printed = self._tenth()
            self._line()

    def close(self):
        if not self._closed and self.n != self._printed_n:
            self._line()  # stopped between tenths: say where
        self._closed = True

    def _line(self):
        self._printed_n = self.n
        of = f"/{self.total}" if self.total is not None else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} {self.unit} in {time.monotonic() - self._start:.0f} s{extra}",
              file=sys.stderr, flush=True)


def progress_bar(iterable=None, *, progress: bool, **kwargs):
    """`tqdm(iterable, **kwargs)`, or its line-per-tenth form when stderr is not a terminal (module docstring)."""
    if progress and not sys.stderr.isatty():
        return _Lines(iterable, **kwargs)
    return tqdm(iterable, disable=not progress, **kwargs)
