"""What writing and reading an artifact share: member names, listing a tree, hashing, and
the errors that say what is wrong with an artifact.

A safe member name always names something inside the directory it is joined to; the errors
here describe the file and say that it cannot be used, never what an operation did.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import attrs
import blake3

from cedana.artifact.manifest import MANIFEST_NAME, Manifest
from cedana.artifact.signing import SIGNATURE_NAME
from cedana.errors import ArtifactCorrupt, UnsafeArtifact

_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)

# O_NONBLOCK: opening a FIFO that replaced a file must not hang; regular files ignore it.
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# --------------------------------------------------------------------------- names and errors


def _name_problem(name: str) -> str | None:
    """Say what is wrong with a member name, or return ``None`` if it is safe.

    A safe name is relative, ``/``-separated, valid UTF-8, has no empty, ``.`` or ``..``
    component, no backslash and no control character, so that joined to a directory it always
    names something inside it.
    """
    if not name:
        return "is empty"
    if name.startswith("/"):
        return "is an absolute path"
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in name):
        return "contains a control character or a backslash"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "has an empty, '.' or '..' component"
    if len(encoded) > 4096 or any(len(part.encode("utf-8")) > 255 for part in parts):
        return "is too long"
    return None


def _file_kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


# The same read serves open, inspect and restore, so these say what is wrong with the file
# and that it cannot be used, never what an operation did or did not do.


def _truncated(path: Path, detail: str) -> ArtifactCorrupt:
    return ArtifactCorrupt(
        f"{path} is truncated: {detail}; the checkpoint cannot be used: copy it again or take "
        "a new checkpoint"
    )


def _damaged(path: Path, detail: str) -> ArtifactCorrupt:
    return ArtifactCorrupt(
        f"{path} is damaged: {detail}; the checkpoint cannot be used: copy it again or take "
        "a new checkpoint"
    )


def _unsafe(path: Path, name: str, why: str) -> UnsafeArtifact:
    return UnsafeArtifact(
        f"{path} holds an unsafe member {name!r} ({why}); the checkpoint cannot be used: do "
        "not trust this file"
    )


def _not_a_checkpoint(path: Path, detail: str) -> ArtifactCorrupt:
    return ArtifactCorrupt(
        f"{path} is not a cedana checkpoint ({detail}); pass the file or directory that "
        "cedana wrote"
    )


def _check_manifest(path: Path, manifest: Manifest) -> None:
    """Check the member list itself: safe names, each once, no file where a directory goes."""
    names = set()
    for member in manifest.members:
        problem = _name_problem(member.name)
        if problem is not None:
            raise _unsafe(path, member.name, f"its name {problem}")
        if member.name == MANIFEST_NAME:
            raise _damaged(path, "the manifest lists itself as a member")
        if member.name == SIGNATURE_NAME:
            raise _damaged(path, f"the manifest lists its own signature {SIGNATURE_NAME}")
        if member.name in names:
            raise _damaged(path, f"the manifest lists member {member.name!r} twice")
        names.add(member.name)
    for name in names:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in names:
                raise _damaged(path, f"the manifest lists {name!r} inside a file")


# --------------------------------------------------------------------------- walking a tree


@attrs.frozen
class _Entry:
    name: str
    size: int
    mtime: int


def _scan_tree(root: Path) -> tuple[list[_Entry], list[tuple[str, str]]]:
    """List a directory tree without following symlinks.

    Returns:
        The regular files, sorted by name, and every other entry (symlink, FIFO, device, ...)
        with what it is. Directories are walked into, not listed.
    """
    files: list[_Entry] = []
    others: list[tuple[str, str]] = []

    def walk(directory: str, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                name = prefix + entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    walk(entry.path, name + "/")
                elif stat.S_ISREG(st.st_mode):
                    files.append(_Entry(name, st.st_size, int(st.st_mtime)))
                else:
                    others.append((name, _file_kind(st.st_mode)))

    walk(os.fspath(root), "")
    files.sort(key=lambda entry: entry.name)
    return files, others


#: Members at least this big are hashed on more than one thread: sha256 on a helper thread
#: while the caller reads, compresses or decompresses (hashlib and zstd release the GIL), BLAKE3
#: with its own threads over each chunk.
_THREADED_HASH = 8 << 20


class _Hasher(Protocol):
    def update(self, chunk: bytes, /) -> object: ...

    def hexdigest(self) -> str: ...


@contextlib.contextmanager
def _hashing(algorithm: str, size: int) -> Iterator[_Hasher]:
    """A hasher for a member of ``size`` bytes (``algorithm`` as :attr:`Member.algorithm`
    names it); its threads, if any, are stopped on the way out. ``update`` takes bytes that
    are not changed afterwards (the sha256 thread may read them later)."""
    if algorithm == "blake3":
        yield blake3.blake3(max_threads=blake3.blake3.AUTO if size >= _THREADED_HASH else 1)
        return
    if size < _THREADED_HASH:
        yield hashlib.sha256()
        return
    background = _BackgroundSha256()
    try:
        yield background
    finally:
        background.close()


class _BackgroundSha256:
    """sha256 computed on a helper thread; ``update`` takes immutable chunks (bytes)."""

    def __init__(self) -> None:
        self._pending: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._hasher = hashlib.sha256()
        self._thread = threading.Thread(target=self._work, name="cedana-sha256", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (chunk := self._pending.get()) is not None:
            self._hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._pending.put(chunk)

    def close(self) -> None:
        """Stop the thread (idempotent); safe on error paths."""
        if self._thread.is_alive():
            self._pending.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        return self._hasher.hexdigest()
