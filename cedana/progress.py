"""Progress of long work: what a checkpoint or a restore has done so far, for a bar.

``checkpoint(..., progress=...)`` and ``cedana.restore(..., progress=...)`` take a callable,
called with a :class:`Progress` as bytes go by (from a helper thread while CRIU streams pages:
keep it quick), or ``True`` for a bar: a notebook widget or a terminal bar through
``tqdm.auto`` when tqdm is installed (``pip install cedana[progress]``), else a plain bar on
stderr when it is a terminal, else nothing.

The layers report through :func:`report`, which finds the callback of the call in progress
(a context variable set by :func:`reporting`), so no layer passes it down by hand.

Phases, in order:

``dump``
    pages received from CRIU while it dumps (``total``: the tree's anonymous memory, an
    estimate: CRIU may send somewhat more or less)
``verify``
    the artifact read back before the workload is killed (``total``: the members' size)
``unpack``
    members decompressed, checked and unpacked for a restore (``total``: exact)
``restore``
    CRIU recreating the tree (no byte count: ``done`` 0 then 1, ``total`` 1)
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal, TextIO

import attrs

__all__ = [
    "Progress",
    "ProgressArg",
    "ProgressCallback",
    "TerminalBar",
    "current",
    "default_bar",
    "report",
    "reporting",
    "resolve",
]

Phase = Literal["dump", "verify", "unpack", "restore"]


@attrs.frozen
class Progress:
    """Where a long operation is.

    Attributes:
        phase: ``"dump"``, ``"verify"``, ``"unpack"`` or ``"restore"`` (see the module).
        done: Bytes done in this phase.
        total: Bytes this phase should take, when known (an estimate for ``dump``).
    """

    phase: Phase
    done: int
    total: int | None = None

    @property
    def fraction(self) -> float | None:
        """``done / total``, at most 1; None when the total is not known."""
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


ProgressCallback = Callable[[Progress], None]
#: What ``progress=`` takes: a callback, True for the default bar, or None/False for nothing.
ProgressArg = ProgressCallback | bool | None

_current: contextvars.ContextVar[ProgressCallback | None] = contextvars.ContextVar(
    "cedana_progress", default=None
)


def resolve(progress: ProgressArg) -> ProgressCallback | None:
    """The callback ``progress=`` stands for (``True``: :func:`default_bar`)."""
    if progress is True:
        return default_bar()
    if progress is None or progress is False:
        return None
    if not callable(progress):
        raise TypeError(f"progress must be a callable or True, not {progress!r}")
    return progress


@contextlib.contextmanager
def reporting(progress: ProgressArg) -> Iterator[None]:
    """Send what :func:`report` is told, in this context, to ``progress``."""
    callback = resolve(progress)
    if callback is None:
        yield
        return
    token = _current.set(callback)
    try:
        yield
    finally:
        _current.reset(token)
        close = getattr(callback, "close", None)
        if close is not None:
            close()


def current() -> ProgressCallback | None:
    """The callback of the operation in progress (for a layer handing it to a thread)."""
    return _current.get()


def report(phase: Phase, done: int, total: int | None = None) -> None:
    """Tell the operation's callback, if any, that ``phase`` has ``done`` bytes of ``total``."""
    callback = _current.get()
    if callback is not None:
        callback(Progress(phase, done, total))


def default_bar() -> ProgressCallback | None:
    """A tqdm bar (notebook or terminal) when tqdm is installed, else a plain bar on
    stderr when it is a terminal, else None."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return TerminalBar() if sys.stderr.isatty() else None
    return _TqdmBar(tqdm)


class _TqdmBar:
    """One tqdm bar per phase (a notebook widget under Jupyter, text elsewhere)."""

    def __init__(self, tqdm: Any) -> None:
        self._tqdm = tqdm
        self._bar: Any = None
        self._phase: str | None = None
        self._lock = threading.Lock()

    def __call__(self, progress: Progress) -> None:
        with self._lock:
            if progress.phase != self._phase:
                self.close()
                self._phase = progress.phase
                self._bar = self._tqdm(
                    total=progress.total,
                    desc=progress.phase,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    leave=False,
                )
            if progress.total and self._bar.total != progress.total:
                self._bar.total = progress.total
            self._bar.update(progress.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class TerminalBar:
    """A one-line bar on a terminal (stderr by default), redrawn at most 10 times a second."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._last = 0.0
        self._phase: str | None = None
        self._lock = threading.Lock()
        self._drawn = False

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        with self._lock:
            final = progress.total is not None and progress.done >= progress.total
            if progress.phase == self._phase and now - self._last < 0.1 and not final:
                return
            self._phase, self._last = progress.phase, now
            self._stream.write("\r" + self.line(progress))
            self._stream.flush()
            self._drawn = True

    def line(self, progress: Progress) -> str:
        """The bar's text for ``progress``."""
        done = f"{progress.done / (1 << 20):,.0f} MiB"
        fraction = progress.fraction
        if fraction is None:
            return f"{progress.phase:<8} {done}".ljust(self._width + 30)
        filled = round(fraction * self._width)
        bar = "#" * filled + "-" * (self._width - filled)
        return f"{progress.phase:<8} [{bar}] {fraction:4.0%} {done}".ljust(self._width + 30)

    def close(self) -> None:
        with self._lock:
            if self._drawn:
                self._stream.write("\r" + " " * (self._width + 30) + "\r")
                self._stream.flush()
                self._drawn = False
