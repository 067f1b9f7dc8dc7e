"""Writing members to files: sinks that hash-check on the way and leave holes for zeros, a
tree writer that never follows a symlink and can undo what it made, and removal."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cedana.artifact._members import _O_CREATE, _O_DIR, _ZEROS
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
    """Creates files under a directory without following any symlink, and can undo it.

    Every directory is opened relative to its parent with ``O_NOFOLLOW``, so a symlink already
    present under the target (or planted there meanwhile) cannot send a member elsewhere.
    """

    def __init__(self, root: Path, *, sync: bool) -> None:
        self._root = root
        self._sync = sync
        self._created_root = False
        self._dirs: dict[str, int] = {}
        self._made_dirs: list[str] = []
        self._made_files: list[str] = []
        self._open: list[_FileSink] = []
        try:
            os.mkdir(root, 0o700)
            self._created_root = True
        except FileExistsError:
            pass
        fd = os.open(root, _O_DIR)
        self._dirs[""] = fd
        if self._created_root:
            os.fchmod(fd, 0o700)

    def create(self, name: str) -> _FileSink:
        """Create the file ``name`` (0600), with its missing parent directories (0700)."""
        parent, _, base = name.rpartition("/")
        dirfd = self._directory(parent)
        try:
            fd = os.open(base, _O_CREATE, 0o600, dir_fd=dirfd)
        except FileExistsError:
            raise ArtifactExists(
                f"{self._root / name} already exists, so nothing was written; "
                "extract into an empty directory"
            ) from None
        self._made_files.append(name)
        os.fchmod(fd, 0o600)
        sink = _FileSink(fd, sync=self._sync)
        self._open.append(sink)
        return sink

    def _directory(self, path: str) -> int:
        if path in self._dirs:
            return self._dirs[path]
        parent, _, base = path.rpartition("/")
        parent_fd = self._directory(parent)
        made = False
        try:
            os.mkdir(base, 0o700, dir_fd=parent_fd)
            made = True
        except FileExistsError:
            pass
        try:
            fd = os.open(base, _O_DIR | os.O_NOFOLLOW, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise UnsafeArtifact(
                f"{self._root / path} is a symlink or not a directory, so a member would land "
                f"outside {self._root} and nothing was written; extract into an empty directory"
            ) from None
        if made:
            self._made_dirs.append(path)
            os.fchmod(fd, 0o700)
        self._dirs[path] = fd
        return fd

    def sync(self) -> None:
        """fsync every directory written to, so the new entries survive a crash."""
        for fd in self._dirs.values():
            os.fsync(fd)

    def close(self) -> None:
        for sink in self._open:
            sink.close()
        self._open.clear()
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def remove_created(self) -> None:
        """Close, then remove every file and directory this writer created."""
        self.close()
        for name in reversed(self._made_files):
            _quietly(os.unlink, self._root / name)
        for path in reversed(self._made_dirs):
            _quietly(os.rmdir, self._root / path)
        if self._created_root:
            _quietly(os.rmdir, self._root)


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
