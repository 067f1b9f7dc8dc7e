"""QEMU's machine protocol (QMP) over its unix socket: the only importer of ``qemu.qmp``.

``qemu.qmp`` (QEMU's own client library, ``pip install 'cedana[kata]'``) speaks the
protocol: greeting and capability negotiation, command ids, events set aside while a
command waits for its answer, and passing a descriptor with ``SCM_RIGHTS`` (what ``getfd``
takes). It is asyncio-based; :class:`QmpConnection` runs it on an event loop of its own,
never set as the thread's current loop, so a caller's own asyncio is not touched (the
package's ``legacy`` wrapper installs one in the calling thread).

Errors are mapped here, once: a socket nobody answers on is
:class:`~cedana.errors.RuntimeUnavailable`, a command QEMU refuses is
:class:`~cedana.errors.ContainerError` with QEMU's own words, one that hangs is
:class:`~cedana.errors.RuntimeTimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs

from cedana.errors import ContainerError, RuntimeTimeout, RuntimeUnavailable, SetupError

__all__ = ["QmpConnection"]

logger = logging.getLogger("cedana.kata")

_T = TypeVar("_T")


def _client() -> Any:
    try:
        from qemu.qmp import QMPClient
    except ImportError:
        raise SetupError(
            "talking to QEMU needs the qemu.qmp package: pip install 'cedana[kata]'"
        ) from None
    return QMPClient("cedana")


@attrs.define(eq=False)
class QmpConnection:
    """One QMP session with a QEMU; :meth:`close` (or ``with``) ends it.

    Args:
        path: QEMU's QMP socket (``-qmp unix:PATH,server=on``).
        timeout: Seconds one command may take before :class:`RuntimeTimeout`.
    """

    path: Path
    timeout: float = 60.0
    _loop: asyncio.AbstractEventLoop = attrs.field(factory=asyncio.new_event_loop, init=False)
    _qmp: Any = attrs.field(default=None, init=False)

    @classmethod
    def open(cls, path: Path, *, timeout: float = 60.0, wait: float = 0.0) -> QmpConnection:
        """Connect to the QMP socket at ``path``, retrying for ``wait`` seconds while QEMU
        has not made it yet.

        Raises:
            RuntimeUnavailable: Nothing answers QMP there.
            SetupError: ``qemu.qmp`` is not installed.
        """
        conn = cls(Path(path), timeout=timeout)
        deadline = time.monotonic() + wait
        while True:
            try:
                conn._connect()
                return conn
            except RuntimeUnavailable:
                if time.monotonic() >= deadline:
                    conn.close()
                    raise
                time.sleep(0.05)

    def _connect(self) -> None:
        from qemu.qmp import QMPError

        self._qmp = _client()
        try:
            self._run(self._qmp.connect(str(self.path)), f"connecting to {self.path}")
        except (QMPError, OSError) as exc:
            self._qmp = None
            raise RuntimeUnavailable(
                f"no QEMU answers QMP on {self.path} ({exc}); is the VM running?"
            ) from exc

    def _run(self, coro: Coroutine[Any, Any, _T], what: str) -> _T:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, self.timeout))
        except TimeoutError:
            raise RuntimeTimeout(
                f"QEMU did not answer {what} within {self.timeout:g} s ({self.path})"
            ) from None

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run one QMP command; its ``return`` value.

        Raises:
            ContainerError: QEMU refused it (its error text is in the message).
            RuntimeTimeout: No answer within ``timeout``.
            RuntimeUnavailable: The connection is gone (QEMU exited).
        """
        from qemu.qmp import ExecuteError, QMPError

        if self._qmp is None:
            raise RuntimeUnavailable(f"the QMP connection to {self.path} is closed")
        started = time.monotonic()
        try:
            with self._mapped(command):
                result = self._run(self._qmp.execute(command, dict(arguments or {})), command)
        except ExecuteError as exc:
            raise ContainerError(f"QEMU refused {command}: {exc.error.error.desc}") from None
        except QMPError as exc:
            raise RuntimeUnavailable(
                f"QMP {command} failed on {self.path}: {exc}; QEMU may have exited"
            ) from exc
        logger.debug("qmp %s: %.3f s", command, time.monotonic() - started)
        return result

    @contextlib.contextmanager
    def _mapped(self, command: str) -> Iterator[None]:
        try:
            yield
        except (ConnectionError, EOFError) as exc:
            raise RuntimeUnavailable(
                f"QMP {command}: the connection to {self.path} broke ({exc}); QEMU may have exited"
            ) from exc

    def pass_fd(self, fd: int, name: str) -> None:
        """Hand QEMU a copy of descriptor ``fd`` (``SCM_RIGHTS``), known to it as ``name``
        (``getfd``: ``fd:NAME`` URIs then use it). ``fd`` stays open here."""
        from qemu.qmp import QMPError

        if self._qmp is None:
            raise RuntimeUnavailable(f"the QMP connection to {self.path} is closed")
        try:
            self._qmp.send_fd_scm(fd)
        except (QMPError, OSError) as exc:
            raise RuntimeUnavailable(f"passing a descriptor to QEMU failed: {exc}") from exc
        self.execute("getfd", {"fdname": name})

    def close(self) -> None:
        """End the session (idempotent); QEMU keeps running."""
        qmp, self._qmp = self._qmp, None
        if qmp is not None:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.wait_for(qmp.disconnect(), 5))
        if not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> QmpConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
