"""Freezing a container's cgroup for a moment, and thawing it for sure.

A rootfs-only checkpoint runs no CRIU, which would freeze the container itself; it
freezes the container's cgroup while the root filesystem changes are read, so the diff
is one moment's (no file half-written, no rename seen from both sides). The cgroup is
the one runc freezes for ``runc pause`` (:func:`cedana.container.cgroups.freezer_path`):
the v1 freezer controller (``freezer.state``: ``FROZEN`` / ``THAWED``), or on a pure
cgroup v2 host the unified cgroup (``cgroup.freeze`` 1 / 0, ``frozen 1`` in
``cgroup.events`` once every task stopped).

:func:`frozen` thaws on every way out, errors and interrupts included; a container that
was already frozen (paused) is read as it is and left frozen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from cedana.container import cgroups
from cedana.errors import ContainerError, ContainerNotRunning, NotCheckpointable

__all__ = ["frozen"]

logger = logging.getLogger("cedana.runc")


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class _V1:
    """The v1 freezer controller's directory."""

    def __init__(self, path: Path) -> None:
        self.state = path / "freezer.state"

    def is_frozen(self) -> bool:
        return _read(self.state) == "FROZEN"

    def freeze(self) -> None:
        _write(self.state, "FROZEN")

    def thaw(self) -> None:
        _write(self.state, "THAWED")


class _V2:
    """A cgroup v2 directory (``cgroup.freeze``, ``cgroup.events``)."""

    def __init__(self, path: Path) -> None:
        self.freeze_file = path / "cgroup.freeze"
        self.events = path / "cgroup.events"

    def is_frozen(self) -> bool:
        return "frozen 1" in self.events.read_text().splitlines()

    def freeze(self) -> None:
        _write(self.freeze_file, "1")

    def thaw(self) -> None:
        _write(self.freeze_file, "0")


@contextlib.contextmanager
def frozen(
    cgroup_paths: Mapping[str, str],
    *,
    what: str,
    timeout: float = 10,
    unified: bool | None = None,
) -> Iterator[bool]:
    """Freeze the container whose cgroups are ``cgroup_paths`` (runc's ``state.json``) for
    the ``with`` block, and thaw it on the way out, whatever the way.

    Yields:
        True when this call froze it; False when it was frozen already (paused), in which
        case it is left frozen.

    Raises:
        NotCheckpointable: The container has no freezer cgroup to freeze.
        ContainerError: It did not freeze within ``timeout`` seconds (it is thawed again).
        ContainerNotRunning: Its cgroup is gone (it exited meanwhile).

    ``unified`` says whether the host is pure cgroup v2; read from the mounts by default.
    """
    if unified is None:
        unified = cgroups.unified_mode()
    path = cgroups.freezer_path(cgroup_paths, unified=unified)
    if path is None:
        controller = "unified cgroup" if unified else "v1 freezer cgroup"
        raise NotCheckpointable(
            f"container {what!r} has no {controller} to freeze (runc's state lists "
            f"{dict(cgroup_paths)}); a consistent rootfs-only checkpoint freezes it while "
            "its changes are read"
        )
    freezer = _V2(Path(path)) if unified else _V1(Path(path))
    try:
        already = freezer.is_frozen()
    except FileNotFoundError:  # the cgroup went with the container
        raise ContainerNotRunning(
            f"container {what!r} exited before it could be frozen ({path} is gone); "
            "nothing was written"
        ) from None
    if already:
        logger.debug("freezer %s: frozen already (paused), left so", path)
        yield False
        return
    started = time.monotonic()
    try:
        freezer.freeze()
        deadline = started + timeout
        while not freezer.is_frozen():
            if time.monotonic() > deadline:
                raise ContainerError(
                    f"container {what!r} did not freeze within {timeout:.0f}s ({path}); it "
                    "was thawed again and nothing was written: try again"
                )
            # FREEZING: tasks in uninterruptible sleep stop when they come out of it.
            time.sleep(0.001)
        logger.debug("freezer %s: frozen in %.3fs", path, time.monotonic() - started)
        yield True
    finally:
        freezer.thaw()
        logger.debug("freezer %s: thawed after %.3fs", path, time.monotonic() - started)
