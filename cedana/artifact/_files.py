"""Writing members to files: sinks that hash-check on the way and leave holes for zeros, a
tree writer that never follows a symlink and can undo what it made, and removal."""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cedana._safefs import SafeTree
from cedana.artifact._members import _O_DIR, _ZEROS
from cedana.errors import ArtifactExists, UnsafeArtifact

_log = logging.getLogger("cedana.artifact")


class _Sink(Protocol):
    """Where a member's bytes go while they are hashed."""

    def write(self, data: bytes | memoryview) -> None: ...

    def finish(self) -> None: ...


class _FileSink:
    """Writes one file through its descriptor, leaving holes for runs of zeros.

    Process memory is often zero pages; seeking over them keeps extracted images sparse and
    spares the disk a write.
    """

    def __init__(self, fd: int, *, sync: bool) -> None:
        self._fd = fd
        self._sync = sync
        self._size = 0
        self._hole = False

    def write(self, data: bytes | memoryview) -> None:
        size = len(data)
        if size >= 4096 and _ZEROS.startswith(data):
            os.lseek(self._fd, size, os.SEEK_CUR)
            self._hole = True
        else:
            _write_all(self._fd, data)
            self._hole = False
        self._size += size

    def finish(self) -> None:
        try:
            if self._hole:
                os.ftruncate(self._fd, self._size)
            if self._sync:
                os.fsync(self._fd)
        finally:
            self.close()

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class _BytesSink:
    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.done = False

    def write(self, data: bytes | memoryview) -> None:
        self._parts.append(bytes(data))

    def finish(self) -> None:
        self.done = True

    def value(self) -> bytes:
        return b"".join(self._parts)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    # os.write may write less than asked (a disk filling up); only an error ends the loop.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _TreeWriter:
    """Creates member files under a directory without following any symlink, and can undo it.

    The directories and files are made by :class:`cedana._safefs.SafeTree`, so a symlink
    already present under the target (or planted there meanwhile) cannot send a member
    elsewhere; this adds the artifact's modes, sinks and words.
    """

    def __init__(self, root: Path, *, sync: bool) -> None:
        self._root = root
        self._sync = sync
        self._open: list[_FileSink] = []
        self._tree = SafeTree(
            root,
            escape=self._escape,
            dir_mode=0o700,
            create_root=True,
            follow_root=True,
            logger=_log,
        )

    def _escape(self, path: str) -> UnsafeArtifact:
        return UnsafeArtifact(
            f"{self._root / path} is a symlink or not a directory, so a member would land "
            f"outside {self._root} and nothing was written; extract into an empty directory"
        )

    def create(self, name: str) -> _FileSink:
        """Create the file ``name`` (0600), with its missing parent directories (0700)."""
        try:
            fd = self._tree.create_file(tuple(name.split("/")), 0o600)
        except FileExistsError:
            raise ArtifactExists(
                f"{self._root / name} already exists, so nothing was written; "
                "extract into an empty directory"
            ) from None
        sink = _FileSink(fd, sync=self._sync)
        self._open.append(sink)
        return sink

    def sync(self) -> None:
        """fsync every directory written to, so the new entries survive a crash."""
        self._tree.sync()

    def close(self) -> None:
        for sink in self._open:
            sink.close()
        self._open.clear()
        self._tree.close()

    def remove_created(self) -> None:
        """Close, then remove every file and directory this writer created."""
        self.close()
        self._tree.remove_created()


def _quietly(remove: Callable[[Path], None], path: Path) -> None:
    try:
        remove(path)
    except OSError as exc:
        _log.warning("could not remove %s while cleaning up: %s", path, exc)


def remove_path(path: Path) -> None:
    """Remove a file or a whole directory tree, whichever ``path`` is, if it exists."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):
            _log.warning("could not remove %s while cleaning up", path)
    else:
        _quietly(os.unlink, path)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, _O_DIR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
