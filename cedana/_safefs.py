"""Create files, directories and links under a root directory, never following a symlink.

Both places that write untrusted content to the host's filesystem use this: extracting an
artifact's members (:meth:`cedana.artifact.Artifact.extract`) and applying a container's root
filesystem changes to a fresh overlay upper directory (:func:`cedana.rootfs.overlay.apply_upper`).

Every directory is opened relative to its parent's descriptor with ``O_NOFOLLOW``, and every
entry is made relative to its directory's descriptor (``mkdirat``, ``openat`` with ``O_EXCL |
O_NOFOLLOW``, ``symlinkat``, ``linkat``, ``mknodat``), so a symlink already present under the
root, or planted there meanwhile, cannot send anything outside it. Names are tuples of
components; checking that they hold no ``..`` or empty component is the caller's (each format
says in its own words what is wrong with a name). A path through a symlink or a file is refused
with the caller's error.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = ["Parts", "SafeTree"]

#: A path under the root, as its components (``()`` is the root itself).
Parts = tuple[str, ...]

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SafeTree:
    """Makes entries under ``root`` through directory descriptors, and can undo what it made.

    Args:
        root: The directory to write under.
        escape: Makes the error raised when a path under ``root`` goes through a symlink or a
            file; it gets that path, ``/``-joined.
        dir_mode: The mode of the directories it makes (set with ``fchmod``, whatever the
            umask).
        create_root: Make ``root`` (``dir_mode``) if it is missing, and remove it again in
            :meth:`remove_created` if it was made here.
        follow_root: ``root`` itself may be a symlink (a destination the caller named);
            everything below it never is.
        logger: Where :meth:`remove_created` says what it could not remove.
    """

    def __init__(
        self,
        root: Path,
        *,
        escape: Callable[[str], Exception],
        dir_mode: int,
        create_root: bool = False,
        follow_root: bool = False,
        logger: logging.Logger,
    ) -> None:
        self.root = root
        self._escape = escape
        self._dir_mode = dir_mode
        self._log = logger
        self._created_root = False
        self._dirs: dict[Parts, int] = {}
        self._made_dirs: list[Parts] = []
        self._made_files: list[Parts] = []
        if create_root:
            try:
                os.mkdir(root, dir_mode)
                self._created_root = True
            except FileExistsError:
                pass
        fd = os.open(root, _O_DIR if follow_root else _O_DIR | os.O_NOFOLLOW)
        self._dirs[()] = fd
        if self._created_root:
            os.fchmod(fd, dir_mode)

    def directory(self, parts: Parts, *, create: bool = True) -> int:
        """The descriptor of the directory ``parts``, made (with its parents) when missing
        and ``create``; it stays open until :meth:`close`.

        Raises:
            Exception: ``escape``'s error: ``parts`` goes through a symlink or a file.
            FileNotFoundError: It is missing and not ``create``.
        """
        if parts in self._dirs:
            return self._dirs[parts]
        parent = self.directory(parts[:-1], create=create)
        made = False
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(parts[-1], self._dir_mode, dir_fd=parent)
                made = True
        try:
            fd = os.open(parts[-1], _O_DIR | os.O_NOFOLLOW, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise self._escape("/".join(parts)) from None
        if made:
            self._made_dirs.append(parts)
            os.fchmod(fd, self._dir_mode)
        self._dirs[parts] = fd
        return fd

    def create_file(self, parts: Parts, mode: int = 0o600) -> int:
        """Create the new file ``parts`` (``mode``, whatever the umask), with its missing
        parent directories, and return its descriptor open for writing (the caller's to close).

        Raises:
            FileExistsError: Something is already there (never replaced, never followed).
        """
        dirfd = self.directory(parts[:-1])
        fd = os.open(parts[-1], _O_CREATE, mode, dir_fd=dirfd)
        self._made_files.append(parts)
        os.fchmod(fd, mode)
        return fd

    def clear(self, parts: Parts) -> None:
        """Remove what is at ``parts`` unless it is a directory (a fresh tree normally has
        nothing there)."""
        dirfd = self.directory(parts[:-1])
        try:
            st = os.lstat(parts[-1], dir_fd=dirfd)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(parts[-1], dir_fd=dirfd)

    def symlink(self, parts: Parts, target: str) -> None:
        """Make the symlink ``parts`` pointing at ``target`` (never followed here)."""
        os.symlink(target, parts[-1], dir_fd=self.directory(parts[:-1]))
        self._made_files.append(parts)

    def link(self, parts: Parts, existing: Parts) -> None:
        """Make ``parts`` a hard link to the file ``existing`` under the same root (a symlink
        there is linked as itself, not followed)."""
        os.link(
            existing[-1],
            parts[-1],
            src_dir_fd=self.directory(existing[:-1], create=False),
            dst_dir_fd=self.directory(parts[:-1]),
            follow_symlinks=False,
        )
        self._made_files.append(parts)

    def mknod(self, parts: Parts, mode: int, device: int = 0) -> None:
        """Make the node ``parts`` (a FIFO or a device, as ``mode`` says)."""
        os.mknod(parts[-1], mode, device, dir_fd=self.directory(parts[:-1]))
        self._made_files.append(parts)

    def sync(self) -> None:
        """fsync every directory written to, so the new entries survive a crash."""
        for fd in self._dirs.values():
            os.fsync(fd)

    def close(self) -> None:
        """Close the directory descriptors (idempotent); what was made stays."""
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def remove_created(self) -> None:
        """Close, then remove every entry and directory this tree made, newest first."""
        self.close()
        for parts in reversed(self._made_files):
            self._quietly(os.unlink, self.root.joinpath(*parts))
        for parts in reversed(self._made_dirs):
            self._quietly(os.rmdir, self.root.joinpath(*parts))
        if self._created_root:
            self._quietly(os.rmdir, self.root)

    def _quietly(self, remove: Callable[[Path], None], path: Path) -> None:
        try:
            remove(path)
        except OSError as exc:
            self._log.warning("could not remove %s while cleaning up: %s", path, exc)
