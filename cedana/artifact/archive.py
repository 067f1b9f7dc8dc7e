"""Write, open, verify and extract checkpoint artifacts.

An artifact holds a CRIU images directory plus ``manifest.json``, in one of three forms:

``zstd`` (the default)
    One file, a zstd-compressed tar that ``tar --zstd -tf`` lists: ``manifest.json`` first, then
    the images sorted by name, regular files only.
``tar``
    The same tar, uncompressed (``compress="none"``).
``directory``
    A directory holding the same members.

Files are 0600 and directories 0700: an artifact holds process memory.

Writing streams every image once. The manifest must come first but lists every member's
sha256, which is only known at the end, so the writer leaves room for it at the start of the file
and fills it in last: the manifest's length is known in advance (a sha256 is always 64 hex
digits), so in a plain tar its slot is exact, and in the zstd form it gets a frame of its own,
padded to the reserved length with a zstd *skippable frame*, which every zstd decoder passes
over. Hashing then runs alongside zstd's worker threads instead of in a pass of its own.

A signed artifact (:mod:`cedana.artifact.signing`) holds ``manifest.sig`` right after
``manifest.json``, in the same reserved room (its length is fixed too), or beside it in a
directory; nowhere else.

Reading checks everything on every path (:meth:`Artifact.verify`, :meth:`Artifact.extract`,
:meth:`Artifact.read_member`): members must be regular files with safe relative names, listed
once in the manifest, with the listed size and sha256; a cut or damaged file is reported as such.
Nothing is trusted before it is checked, and extraction never follows a symlink.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import queue
import re
import secrets
import shutil
import stat
import struct
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO, BinaryIO, Literal, Protocol, cast

import attrs
import zstandard

from cedana.artifact.manifest import MANIFEST_NAME, Manifest, Member
from cedana.artifact.signing import (
    MAX_SIGNATURE,
    SIGNATURE_NAME,
    Signature,
    SigningKey,
    verify_signature,
)
from cedana.errors import (
    ArtifactCorrupt,
    ArtifactError,
    ArtifactExists,
    InvalidOption,
    NoSpace,
    UnsafeArtifact,
    UntrustedArtifact,
)
from cedana.staging import owner_gone, owner_tag

__all__ = [
    "Artifact",
    "Compression",
    "Form",
    "check_destination",
    "check_write_arguments",
    "open_artifact",
    "remove_path",
    "sweep_temporaries",
    "write_artifact",
]

_log = logging.getLogger("cedana.artifact")

Compression = Literal["zstd", "none"]
Form = Literal["zstd", "tar", "directory"]

_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_ZERO_BLOCK = bytes(_BLOCK)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MAGIC = 0x184D2A50
_MAX_MANIFEST = 64 << 20
_MAX_PAX = 1 << 20
_PLACEHOLDER_SHA256 = "0" * 64
_FULL = (errno.ENOSPC, errno.EDQUOT)
_MIN_LEVEL = -(1 << 17)  # zstd's fastest "negative" level
_MAX_LEVEL = zstandard.MAX_COMPRESSION_LEVEL

# O_NONBLOCK: opening a FIFO that replaced a file must not hang; regular files ignore it.
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# Extended (pax) header keywords a reader accepts; tarfile writes "path" and "size" for
# long names and files of 8 GiB and more. Anything else (GNU sparse maps, ...) is refused.
_PAX_KEYWORDS = frozenset(
    {"path", "size", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname"}
)

_TAR_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.DIRTYPE: "a directory",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_LONGNAME: "a GNU long-name entry",
    tarfile.GNUTYPE_LONGLINK: "a GNU long-link entry",
    tarfile.GNUTYPE_SPARSE: "a GNU sparse file",
    tarfile.XGLTYPE: "a global extended header",
}


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


class _Sink(Protocol):
    """Where a member's bytes go while they are hashed."""

    def write(self, data: bytes | memoryview) -> None: ...

    def finish(self) -> None: ...


#: Checks one member's bytes against the manifest on their way to a sink (or to none).
_Consume = Callable[[Member, Iterator[bytes], _Sink | None], None]


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


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], func)


_SYNC_FILE_RANGE = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
#: Start writeback every this many bytes, so the final fsync has only the tail to wait for.
_WRITEBACK_STEP = 32 << 20


class _FdWriter:
    """The file object zstd writes to: every write completes or raises.

    Writeback of what is written starts as it goes (``sync_file_range``), so the disk
    works while zstd compresses instead of all at once in the final fsync.
    """

    def __init__(self, fd: int, start: int = 0) -> None:
        self._fd = fd
        self._synced = self._offset = start

    def write(self, data: bytes | memoryview) -> int:
        _write_all(self._fd, data)
        self._offset += len(data)
        if _SYNC_FILE_RANGE is not None and self._offset - self._synced >= _WRITEBACK_STEP:
            # Best effort: a failure here only means the fsync at the end does all the work.
            _SYNC_FILE_RANGE(
                self._fd, self._synced, self._offset - self._synced, _SYNC_FILE_RANGE_WRITE
            )
            self._synced = self._offset
        return len(data)


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


# --------------------------------------------------------------------------- writing


def check_write_arguments(compress: str, level: int, threads: int) -> None:
    """Refuse ``compress``, ``level`` and ``threads`` values the writer cannot use.

    Raises:
        InvalidOption: (a ValueError) Which value, and what it may be.
    """
    if compress not in ("zstd", "none"):
        raise InvalidOption(f"compress must be 'zstd' or 'none', not {compress!r}")
    if not isinstance(level, int) or isinstance(level, bool):
        raise InvalidOption(f"level must be an integer, not {level!r}")
    if level == 0 or not _MIN_LEVEL <= level <= _MAX_LEVEL:
        raise InvalidOption(
            f"zstd level must be 1 (fastest) to {_MAX_LEVEL} (smallest), or negative for "
            f"zstd's faster modes, not {level}; 3 is the default"
        )
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise InvalidOption(f"threads must be 0 (all cores) or a positive count, not {threads!r}")


def _member_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = mtime
    # PAX: names over 100 bytes and files of 8 GiB and more get an extended header.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def _head(manifest: Manifest, mtime: int, signer: SigningKey | None = None) -> bytes:
    """The tar header and padded content of ``manifest.json``, then of ``manifest.sig``
    when signed (a signature has the same length for every manifest)."""
    body = manifest.to_json()
    head = (
        _member_header(MANIFEST_NAME, len(body), mtime) + body + _ZERO_BLOCK[: -len(body) % _BLOCK]
    )
    if signer is not None:
        sig = signer.sign(body).to_json()
        head += _member_header(SIGNATURE_NAME, len(sig), mtime) + sig
        head += _ZERO_BLOCK[: -len(sig) % _BLOCK]
    return head


def _compress_bound(size: int) -> int:
    """The most bytes zstd can make out of ``size`` bytes (ZSTD_COMPRESSBOUND), plus room."""
    small = ((128 << 10) - size) >> 11 if size < (128 << 10) else 0
    return size + (size >> 8) + small + 64


#: Members at least this big are hashed on a second thread while the first reads, compresses
#: or decompresses them (hashlib and zstd release the GIL): sha256 is otherwise the bottleneck.
_THREADED_HASH = 8 << 20


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


def _copy_hashed(
    images_dir: Path, entry: _Entry, write: Callable[[memoryview], object], buffer: memoryview
) -> str:
    """Stream one image file to ``write`` and return its sha256.

    Raises:
        ArtifactError: The file changed (size or type) since the images directory was listed.
    """
    path = images_dir / entry.name
    fd = os.open(path, _O_READ)
    background = _BackgroundSha256() if entry.size >= _THREADED_HASH else None
    try:
        st = os.fstat(fd)
        digest = hashlib.sha256()
        remaining = entry.size
        with open(fd, "rb", buffering=0, closefd=False) as source:
            if stat.S_ISREG(st.st_mode) and st.st_size == entry.size:
                while remaining:
                    if background is not None:
                        data = source.read(min(remaining, _CHUNK))  # fresh bytes for the thread
                        count = len(data)
                        if count:
                            background.update(data)
                            write(memoryview(data))
                    else:
                        count = source.readinto(buffer[: min(remaining, _CHUNK)])
                        chunk = buffer[:count]
                        digest.update(chunk)
                        write(chunk)
                    if not count:
                        break
                    remaining -= count
                if not remaining and not source.read(1):
                    return (background or digest).hexdigest()
    finally:
        if background is not None:
            background.close()
        os.close(fd)
    raise ArtifactError(
        f"{path} changed while the checkpoint was being written; images must not change "
        "once CRIU has dumped them, take the checkpoint again"
    )


def write_artifact(
    images_dir: Path,
    dest: Path,
    manifest: Manifest,
    *,
    compress: Compression = "zstd",
    level: int = 3,
    threads: int = 0,
    directory: bool = False,
    overwrite: bool = False,
    signer: SigningKey | None = None,
) -> Manifest:
    """Write ``images_dir`` and ``manifest`` as an artifact at ``dest``, atomically.

    Every regular file under ``images_dir`` becomes a member; the manifest is returned, and
    written first, with ``members`` filled in (sorted by name, with size and sha256). The
    artifact is built in a temporary file (or directory) beside ``dest`` and renamed over it
    only when complete, fsynced and read back (the zstd form by its frame checksums, the
    others by hashing every member again), so ``dest`` never holds half an artifact. On any
    error before the rename, including ``ENOSPC`` and ``KeyboardInterrupt``, ``dest`` is left
    as it was, the temporary is removed and the error propagates (a full filesystem as
    :class:`~cedana.errors.NoSpace`); should the directory's fsync fail after it, the new
    artifact is removed. Temporaries that killed writers left beside ``dest`` are removed
    first (:func:`sweep_temporaries`).

    Args:
        images_dir: The CRIU images directory (subdirectories are kept).
        dest: Where to write: a file, or with ``directory=True`` a directory.
        manifest: Everything but ``members``, which is computed here.
        compress: ``"zstd"`` for a ``.tar.zst``, ``"none"`` for a plain tar.
        level: zstd level, 1 (fastest) to 22; negative levels are zstd's faster modes.
        threads: zstd worker threads; 0 means one per core.
        directory: Write the directory form instead of a single file (``compress`` and
            ``level`` are then unused).
        overwrite: Replace ``dest`` if it exists. An existing directory is only replaced if it
            is a cedana checkpoint itself.
        signer: Sign the manifest with this key (``manifest.sig``); None writes an unsigned
            artifact, which readers refuse unless told to accept it.

    Raises:
        ArtifactExists: ``dest`` exists and ``overwrite`` is false, or is a directory other
            than a checkpoint (checked before any work).
        FileNotFoundError: ``dest``'s directory does not exist.
        ArtifactError: ``images_dir`` holds something other than regular files and
            directories, a file named ``manifest.json`` or ``manifest.sig`` at its top, or a
            name that cannot be stored, or a file changed while being written.
        ArtifactCorrupt: What was written did not read back as written (``dest`` is left
            as it was).
        InvalidOption: (a ValueError) A bad ``compress``, ``level`` or ``threads``.
        NoSpace: (an OSError, ``errno`` ENOSPC or EDQUOT) ``dest``'s filesystem filled up.
        OSError: Reading the images or writing ``dest`` failed (``errno`` kept).
    """
    images_dir = Path(images_dir)
    dest = Path(dest)
    check_write_arguments(compress, level, threads)
    check_destination(dest, overwrite=overwrite)
    if dest.resolve().is_relative_to(images_dir.resolve()):
        raise ValueError(f"the artifact {dest} cannot be written inside the images {images_dir}")

    started = time.perf_counter()
    form: Form = "directory" if directory else ("zstd" if compress == "zstd" else "tar")
    _log.debug("writing %s artifact %s from %s", form, dest, images_dir)
    files = _scan_images(images_dir)
    placeholder = attrs.evolve(
        manifest,
        members=tuple(
            Member(name=entry.name, size=entry.size, sha256=_PLACEHOLDER_SHA256) for entry in files
        ),
    )
    sweep_temporaries(dest.parent)
    # The owner in the name lets a later write remove what a killed writer left.
    tmp = dest.parent / f".{dest.name}.tmp-{owner_tag()}-{secrets.token_hex(6)}"
    renamed = False
    try:
        if directory:
            final = _write_directory(images_dir, files, tmp, placeholder, signer)
        else:
            final = _write_tar(
                images_dir,
                files,
                tmp,
                placeholder,
                compress=compress,
                level=level,
                threads=threads,
                signer=signer,
            )
        signature = None if signer is None else signer.sign(final.to_json())  # deterministic
        _check_written(Artifact(path=tmp, form=form, manifest=final, signature=signature), dest)
        _replace(tmp, dest)
        renamed = True
        _fsync_path(dest.parent)
    except BaseException as exc:
        remove_path(dest if renamed else tmp)
        _log.debug("writing %s failed after %.3f s: %r", dest, time.perf_counter() - started, exc)
        if isinstance(exc, OSError) and exc.errno in _FULL and not isinstance(exc, NoSpace):
            raise NoSpace(
                f"no space left on device in {dest.parent}: the artifact {dest} filled its "
                "filesystem (nothing was kept); free space there, or write the checkpoint to "
                "another destination",
                filename=str(dest),
                errno=exc.errno,
            ) from exc
        raise
    total = sum(member.size for member in final.members)
    elapsed = time.perf_counter() - started
    _log.debug(
        "wrote %s: %d members, %d bytes in %.3f s (%.0f MB/s)",
        dest,
        len(final.members),
        total,
        elapsed,
        total / elapsed / 1e6 if elapsed else 0.0,
    )
    return final


_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)-(\d+)-[0-9a-f]{12}$")


def sweep_temporaries(directory: Path) -> None:
    """Remove the temporary artifacts that writers killed mid-write (SIGKILL, a crash) left
    in ``directory``: only names :func:`write_artifact` makes, and only when their owner is
    gone (a concurrent writer's file stays, and so does one whose pid is taken by a
    process that started at the very time the owner did)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or not owner_gone(int(match.group(1)), int(match.group(2))):
            continue
        _log.debug("removing %s, left by pid %s", entry.path, match.group(1))
        remove_path(Path(entry.path))


def _check_written(artifact: Artifact, dest: Path) -> None:
    """Read back what was just written for ``dest``, before it replaces anything."""
    try:
        # zstd's frame checksums prove the bytes the digests were computed from.
        artifact.verify(digests=False)
    except ArtifactError as exc:
        raise ArtifactCorrupt(
            f"the artifact written for {dest} did not read back as written, so {dest} was "
            "left as it was; check the disk and take the checkpoint again"
        ) from exc


def check_destination(dest: Path, *, overwrite: bool) -> None:
    """Refuse ``dest`` as where an artifact goes, before any work is done.

    Raises:
        ArtifactExists: ``dest`` exists and ``overwrite`` is false, or it is a directory
            that is not a cedana checkpoint (never replaced).
        FileNotFoundError: The directory ``dest`` would be written in does not exist.
    """
    try:
        st = os.lstat(dest)
    except (FileNotFoundError, NotADirectoryError):
        if not dest.parent.is_dir():
            raise FileNotFoundError(
                errno.ENOENT, "directory does not exist; create it first", os.fspath(dest.parent)
            ) from None
        return
    if not overwrite:
        raise ArtifactExists(
            f"{dest} already exists; pass overwrite=True (--overwrite) to replace it, or choose "
            "another path"
        )
    if stat.S_ISDIR(st.st_mode) and not os.path.isfile(dest / MANIFEST_NAME):
        raise ArtifactExists(
            f"{dest} is a directory that is not a cedana checkpoint, so overwrite=True "
            "(--overwrite) does not replace it; choose another path"
        )


def _scan_images(images_dir: Path) -> list[_Entry]:
    files, others = _scan_tree(images_dir)
    if others:
        name, kind = others[0]
        raise ArtifactError(
            f"{images_dir / name} is {kind}, which a checkpoint cannot hold; "
            "the images directory must hold only the files CRIU wrote"
        )
    for entry in files:
        if entry.name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise ArtifactError(
                f"{images_dir / entry.name} would clash with the artifact's own manifest or "
                "signature; remove it from the images directory"
            )
        problem = _name_problem(entry.name)
        if problem is not None:
            raise ArtifactError(
                f"{images_dir / entry.name} cannot be stored because its name {problem}; rename it"
            )
    return files


def _replace(tmp: Path, dest: Path) -> None:
    """Move the finished ``tmp`` to ``dest``, replacing what is there."""
    try:
        dest_is_dir = stat.S_ISDIR(os.lstat(dest).st_mode)
    except FileNotFoundError:
        os.rename(tmp, dest)
        return
    if not dest_is_dir and not tmp.is_dir():
        os.rename(tmp, dest)  # atomic replacement
        return
    # rename(2) cannot replace a directory, nor put one over a file: move the old one aside.
    aside = dest.parent / f".{dest.name}.old-{secrets.token_hex(6)}"
    os.rename(dest, aside)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(aside, dest)
        raise
    remove_path(aside)


def _write_tar(
    images_dir: Path,
    files: list[_Entry],
    tmp: Path,
    placeholder: Manifest,
    *,
    compress: Compression,
    level: int,
    threads: int,
    signer: SigningKey | None,
) -> Manifest:
    mtime = int(time.time())
    head_size = len(_head(placeholder, mtime, signer))
    # Room for the manifest at the start: exact for a plain tar; for zstd, its frame at its
    # largest plus a skippable frame's 8-byte header to pad out the rest.
    reserved = _compress_bound(head_size) + 8 if compress == "zstd" else head_size
    fd = os.open(tmp, _O_CREATE, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.lseek(fd, reserved, os.SEEK_SET)
        sink = _FdWriter(fd, reserved)
        compressor = None
        write: Callable[[bytes | memoryview], object] = sink.write
        if compress == "zstd":
            cctx = zstandard.ZstdCompressor(level=level, threads=threads or -1, write_checksum=True)
            compressor = cctx.stream_writer(cast(IO[bytes], sink), write_size=_CHUNK, closefd=False)
            write = compressor.write
        members: list[Member] = []
        offset = head_size
        buffer = memoryview(bytearray(_CHUNK))
        for entry in files:
            header = _member_header(entry.name, entry.size, entry.mtime)
            write(header)
            digest = _copy_hashed(images_dir, entry, write, buffer)
            padding = -entry.size % _BLOCK
            write(_ZERO_BLOCK[:padding])
            offset += len(header) + entry.size + padding
            members.append(Member(name=entry.name, size=entry.size, sha256=digest))
        # Two zero blocks end a tar; tar itself pads the whole to a 10 KiB record.
        end = offset + 2 * _BLOCK
        write(_ZEROS[: end - offset + (-end % _RECORD)])
        if compressor is not None:
            compressor.flush(zstandard.FLUSH_FRAME)

        final = attrs.evolve(placeholder, members=tuple(members))
        head = _head(final, mtime, signer)
        if len(head) != head_size:
            raise AssertionError("the manifest changed length between reserving and writing it")
        if compress == "zstd":
            frame = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(head)
            gap = reserved - len(frame) - 8
            if gap < 0:
                raise AssertionError("the manifest frame outgrew the room reserved for it")
            head = frame + struct.pack("<II", _SKIPPABLE_MAGIC, gap)
            # The skippable frame's content is the hole left by seeking past it: zeros.
        os.lseek(fd, 0, os.SEEK_SET)
        _write_all(fd, head)
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


def _write_directory(
    images_dir: Path,
    files: list[_Entry],
    tmp: Path,
    placeholder: Manifest,
    signer: SigningKey | None,
) -> Manifest:
    tree = _TreeWriter(tmp, sync=True)
    try:
        members: list[Member] = []
        buffer = memoryview(bytearray(_CHUNK))
        for entry in files:
            sink = tree.create(entry.name)
            digest = _copy_hashed(images_dir, entry, sink.write, buffer)
            sink.finish()
            members.append(Member(name=entry.name, size=entry.size, sha256=digest))
        final = attrs.evolve(placeholder, members=tuple(members))
        body = final.to_json()
        sink = tree.create(MANIFEST_NAME)
        sink.write(body)
        sink.finish()
        if signer is not None:
            sink = tree.create(SIGNATURE_NAME)
            sink.write(signer.sign(body).to_json())
            sink.finish()
        tree.sync()
    finally:
        tree.close()
    return final


# --------------------------------------------------------------------------- reading


class _Malformed(Exception):
    """The zstd frame structure is broken (raised inside the decompressor's reads)."""


class _FrameTracker:
    """Follows the frame structure of a zstd stream (RFC 8878) to tell complete from cut.

    python-zstandard's stream reader returns what it decoded, then ``b""`` when its source
    ends, whether or not the last frame was complete (so a file cut inside a frame, or just
    before the frame's checksum, reads like a whole one). This walks the frame and block headers
    of the bytes the decompressor consumes: a few bytes per block of up to 128 KiB.
    """

    _MAGIC, _DESCRIPTOR, _HEADER_REST, _BLOCK_HEADER, _CHECKSUM, _SKIPPABLE_SIZE = range(6)

    def __init__(self) -> None:
        self._state = self._MAGIC
        self._need = 4
        self._field = bytearray()
        self._skip = 0
        self._checksum = False
        self.frames = 0

    @property
    def complete(self) -> bool:
        """True when at least one frame was read and the bytes so far end a frame."""
        return self._state == self._MAGIC and not self._field and not self._skip and self.frames > 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        position, end = 0, len(view)
        while position < end:
            if self._skip:
                step = min(self._skip, end - position)
                self._skip -= step
                position += step
                continue
            take = min(self._need - len(self._field), end - position)
            self._field += view[position : position + take]
            position += take
            if len(self._field) == self._need:
                field = bytes(self._field)
                self._field.clear()
                self._advance(field)

    def _expect(self, state: int, size: int) -> None:
        self._state, self._need = state, size

    def _advance(self, field: bytes) -> None:
        value = int.from_bytes(field, "little")
        if self._state == self._MAGIC:
            if field == _ZSTD_MAGIC:
                self._expect(self._DESCRIPTOR, 1)
            elif value & 0xFFFFFFF0 == _SKIPPABLE_MAGIC:
                self._expect(self._SKIPPABLE_SIZE, 4)
            else:
                raise _Malformed("a zstd frame starts with an unknown magic number")
        elif self._state == self._DESCRIPTOR:
            if value & 0x08:
                raise _Malformed("a zstd frame header has its reserved bit set")
            single_segment = bool(value & 0x20)
            content_size = (1 if single_segment else 0, 2, 4, 8)[value >> 6]
            dictionary_id = (0, 1, 2, 4)[value & 0x03]
            self._checksum = bool(value & 0x04)
            rest = (0 if single_segment else 1) + dictionary_id + content_size
            if rest:
                self._expect(self._HEADER_REST, rest)
            else:
                self._expect(self._BLOCK_HEADER, 3)
        elif self._state == self._HEADER_REST:
            self._expect(self._BLOCK_HEADER, 3)
        elif self._state == self._BLOCK_HEADER:
            block_type = (value >> 1) & 0x03
            if block_type == 3:
                raise _Malformed("a zstd block has the reserved type")
            self._skip = 1 if block_type == 1 else value >> 3  # an RLE block holds one byte
            if not value & 0x01:
                self._expect(self._BLOCK_HEADER, 3)
            elif self._checksum:
                self._expect(self._CHECKSUM, 4)
            else:
                self._end_frame()
        elif self._state == self._CHECKSUM:
            self._end_frame()
        else:  # _SKIPPABLE_SIZE
            self._skip = value
            self._end_frame()

    def _end_frame(self) -> None:
        self.frames += 1
        self._expect(self._MAGIC, 4)


class _Tap:
    """A file wrapper that shows the frame tracker every byte the decompressor reads."""

    def __init__(self, source: BinaryIO, tracker: _FrameTracker) -> None:
        self._source = source
        self._tracker = tracker

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._tracker.feed(data)
        return data


class _Stream(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _ZstdStream:
    """The decompressed bytes of a zstd file, with truncation and damage as ArtifactCorrupt."""

    def __init__(self, source: BinaryIO, path: Path) -> None:
        self._path = path
        self._tracker = _FrameTracker()
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], _Tap(source, self._tracker)),
            read_size=_CHUNK,
            read_across_frames=True,
            closefd=False,
        )

    def read(self, size: int, /) -> bytes:
        try:
            data = self._reader.read(size)
        except zstandard.ZstdError as exc:
            raise _damaged(self._path, f"zstd: {exc}") from None
        except _Malformed as exc:
            raise _damaged(self._path, str(exc)) from None
        if not data and not self._tracker.complete:
            raise _truncated(self._path, "the compressed data ends inside a zstd frame")
        return data


class _TarReader:
    """Reads the tar stream of an artifact, refusing anything but regular files."""

    def __init__(self, stream: _Stream, path: Path) -> None:
        self._stream = stream
        self._path = path

    def _exact(self, size: int) -> bytes:
        data = self._stream.read(size)
        if len(data) == size:
            return data
        parts = [data]
        have = len(data)
        while have < size:
            more = self._stream.read(size - have)
            if not more:
                raise _truncated(self._path, "the tar data ends in the middle of an entry")
            parts.append(more)
            have += len(more)
        return b"".join(parts)

    def next_entry(self, *, first: bool = False) -> tuple[str, int] | None:
        """Read up to the next member's data; return its name and size, or None at the end.

        With ``first``, a header that does not parse means the file is not a tar at all.
        """
        pax: dict[str, str] | None = None
        while True:
            block = self._stream.read(_BLOCK)
            if not block:
                raise _truncated(self._path, "the tar data ends before its end-of-archive marker")
            if len(block) < _BLOCK:
                block += self._exact(_BLOCK - len(block))
            if block == _ZERO_BLOCK:
                if pax is not None:
                    raise _damaged(self._path, "a tar extended header is followed by nothing")
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                if first:
                    raise _not_a_checkpoint(
                        self._path, "it does not begin with a valid tar header, or it is damaged"
                    ) from None
                raise _damaged(self._path, f"a tar header is invalid: {exc}") from None
            if info.type == tarfile.XHDTYPE:
                if pax is not None or not 0 <= info.size <= _MAX_PAX:
                    raise _damaged(self._path, "a tar extended header is malformed")
                pax = self._pax(self._exact(info.size))
                self.skip_padding(info.size)
                continue
            name = pax.get("path", info.name) if pax else info.name
            size = info.size
            if pax and "size" in pax:
                if not (pax["size"].isascii() and pax["size"].isdigit()):
                    raise _damaged(self._path, f"member {name!r} has a malformed size")
                size = int(pax["size"])
            if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                return name, size
            if info.type == tarfile.DIRTYPE and size == 0 and _name_problem(name) is None:
                pax = None  # directory entries carry nothing; directories are made as needed
                continue
            kind = _TAR_KINDS.get(info.type, f"a tar entry of type {info.type!r}")
            raise _unsafe(self._path, name, f"it is {kind}, not a regular file")

    def _pax(self, data: bytes) -> dict[str, str]:
        records: dict[str, str] = {}
        position = 0
        try:
            while position < len(data):
                space = data.index(b" ", position)
                length = int(data[position:space])
                record = data[position : position + length]
                if length <= space - position or len(record) != length or record[-1:] != b"\n":
                    raise ValueError("bad record length")
                keyword, equals, value = record[space - position + 1 : -1].partition(b"=")
                if not equals:
                    raise ValueError("no '=' in record")
                records[keyword.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
                position += length
        except ValueError:
            raise _damaged(self._path, "a tar extended header is malformed") from None
        unknown = records.keys() - _PAX_KEYWORDS
        if unknown:
            raise _damaged(self._path, f"unexpected tar extended header {min(unknown)!r}")
        return records

    def chunks(self, size: int) -> Iterator[bytes]:
        """Yield the ``size`` bytes of the current member's data."""
        remaining = size
        while remaining:
            data = self._stream.read(min(remaining, _CHUNK))
            if not data:
                raise _truncated(self._path, "the tar data ends in the middle of a member")
            remaining -= len(data)
            yield data

    def skip_padding(self, size: int) -> None:
        padding = -size % _BLOCK
        if padding and self._exact(padding) != _ZERO_BLOCK[:padding]:
            raise _damaged(self._path, "tar padding holds data")

    def finish(self) -> None:
        """Check the rest of the stream after the first end-of-archive block: zeros only."""
        rest = 0
        while data := self._stream.read(_CHUNK):
            if not _ZEROS.startswith(data):
                raise _damaged(self._path, "data follows the tar end-of-archive marker")
            rest += len(data)
        if rest < _BLOCK:
            raise _truncated(self._path, "its tar end-of-archive marker is incomplete")


def _read_manifest_entry(tar: _TarReader, path: Path) -> bytes:
    entry = tar.next_entry(first=True)
    if entry is None or entry[0] != MANIFEST_NAME:
        first = "nothing" if entry is None else repr(entry[0])
        raise _not_a_checkpoint(path, f"its first member is {first}, not {MANIFEST_NAME}")
    size = entry[1]
    if size > _MAX_MANIFEST:
        raise _damaged(path, f"its manifest claims {size} bytes")
    data = b"".join(tar.chunks(size))
    tar.skip_padding(size)
    return data


def _read_signature_entry(tar: _TarReader, path: Path, size: int) -> bytes:
    """Read the data of the ``manifest.sig`` entry whose header was just read."""
    if size > MAX_SIGNATURE:
        raise _damaged(path, f"its {SIGNATURE_NAME} claims {size} bytes")
    data = b"".join(tar.chunks(size))
    tar.skip_padding(size)
    return data


def _read_directory_manifest(root: Path) -> bytes:
    """Read ``manifest.json`` of a directory artifact, refusing a link or a special file."""
    data = _read_directory_file(root, MANIFEST_NAME, _MAX_MANIFEST)
    if data is None:
        raise _not_a_checkpoint(root, f"it holds no {MANIFEST_NAME}")
    return data


def _read_directory_file(root: Path, name: str, limit: int) -> bytes | None:
    """Read the top-level file ``name`` of a directory artifact (None if it has none),
    refusing a link or a special file."""
    try:
        fd = os.open(root / name, _O_READ)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise _unsafe(root, name, "it is a symbolic link") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _unsafe(root, name, f"it is {_file_kind(st.st_mode)}")
        if st.st_size > limit:
            what = "manifest" if name == MANIFEST_NAME else name
            raise _damaged(root, f"its {what} claims {st.st_size} bytes")
        return b"".join(_file_chunks(fd, st.st_size, root, name))
    finally:
        os.close(fd)


def _file_chunks(fd: int, size: int, path: Path, name: str) -> Iterator[bytes]:
    remaining = size
    while remaining:
        data = os.read(fd, min(remaining, _CHUNK))
        if not data:
            raise _damaged(path, f"member {name!r} is shorter than the manifest says")
        remaining -= len(data)
        yield data
    if os.read(fd, 1):
        raise _damaged(path, f"member {name!r} is longer than the manifest says")


@attrs.define(eq=False)
class Artifact:
    """An opened checkpoint artifact: where it is, its form, and its manifest.

    Get one from :func:`open_artifact`. It holds no open file: each method reads the artifact
    again from the start, and checks that its manifest is still the one read when it was
    opened.

    Attributes:
        path: The file or directory.
        form: ``"zstd"``, ``"tar"`` or ``"directory"``.
        manifest: The parsed ``manifest.json``.
        signature: Its ``manifest.sig``, verified against the manifest's bytes; None when
            unsigned. Whether its signer is trusted is
            :func:`cedana.artifact.signing.check_trust`'s decision.
    """

    path: Path
    form: Form
    manifest: Manifest
    signature: Signature | None = None

    def verify(self, *, digests: bool = True) -> None:
        """Read the whole artifact and check every member against the manifest.

        Args:
            digests: Recompute every member's sha256. ``False`` is for an artifact this
                process has just written, in the zstd form only: every zstd frame carries
                a checksum of what the compressor was fed, which is what the manifest's
                digests were computed from, so a clean decode proves the members match
                (names, sizes and structure are still checked). Other forms always hash.

        Raises:
            ArtifactCorrupt: The artifact is truncated or damaged, or a member is missing,
                added, listed twice, or differs in size or sha256 from the manifest.
            UnsafeArtifact: An entry is not a regular file, or its name is not safe.
        """
        started = time.perf_counter()
        self._pass(lambda _member: None, digests=digests or self.form != "zstd")
        _log.debug("verified %s in %.3f s", self.path, time.perf_counter() - started)

    def extract(self, dest: Path, *, only: Callable[[str], bool] | None = None) -> None:
        """Write the members into ``dest``, checking the whole artifact in the same pass.

        ``dest`` is created (0700) if missing; files are written 0600, directories 0700, and
        runs of zeros are left as holes. Nothing is fsynced: the images are read right away
        by the restore that asked for them. On any failure, everything written so far is
        removed (and ``dest`` too if this call created it) before the error propagates.

        Args:
            dest: The directory to extract into; existing files are never replaced.
            only: Write only the members for which ``only(name)`` is true; the others are
                still read and checked.

        Raises:
            ArtifactCorrupt: As for :meth:`verify`.
            UnsafeArtifact: As for :meth:`verify`, or a path under ``dest`` is a symlink.
            ArtifactExists: A file to extract already exists under ``dest``.
        """
        dest = Path(dest)
        started = time.perf_counter()
        tree = _TreeWriter(dest, sync=False)
        try:
            self._pass(lambda m: tree.create(m.name) if only is None or only(m.name) else None)
        except BaseException as exc:
            tree.remove_created()
            _log.debug("extracting %s into %s failed: %r", self.path, dest, exc)
            raise
        tree.close()
        _log.debug("extracted %s into %s in %.3f s", self.path, dest, time.perf_counter() - started)

    def read_member(self, name: str) -> bytes:
        """Return the content of one (small) member, checked against the manifest.

        In the file forms, the members stored before it are read and checked on the way.

        Raises:
            KeyError: The manifest lists no such member.
            ArtifactCorrupt: The member, or the artifact up to it, is damaged.
            UnsafeArtifact: An entry up to it is not a regular file or has an unsafe name.
        """
        self.manifest.member(name)
        sink = _BytesSink()
        self._pass(lambda m: sink if m.name == name else None, stop_at=name)
        return sink.value()

    def _pass(
        self,
        sink_for: Callable[[Member], _Sink | None],
        stop_at: str | None = None,
        *,
        digests: bool = True,
    ) -> None:
        """Read the artifact once, hashing each member (unless not ``digests`` and it goes to
        no sink) and handing it to ``sink_for``'s sink."""
        consume = partial(self._consume, digests=digests)
        if self.form == "directory":
            self._pass_directory(sink_for, stop_at, consume)
        else:
            self._pass_tar(sink_for, stop_at, consume)

    def _check_same_manifest(self, raw: bytes) -> None:
        try:
            same = Manifest.from_json(raw) == self.manifest
        except ArtifactError:
            same = False
        if not same:
            raise _damaged(self.path, "its manifest changed since it was opened")

    def _check_same_signature(self, raw: bytes | None) -> None:
        try:
            same = (None if raw is None else Signature.from_json(raw, path=self.path)) == (
                self.signature
            )
        except UntrustedArtifact:
            same = False
        if not same:
            raise _damaged(self.path, "its signature changed since it was opened")

    def _consume(
        self, member: Member, chunks: Iterator[bytes], sink: _Sink | None, *, digests: bool
    ) -> None:
        if not digests and sink is None:
            for _chunk in chunks:  # decoded (and frame-checksummed) but not hashed
                pass
            return
        hasher = _BackgroundSha256() if member.size >= _THREADED_HASH else hashlib.sha256()
        try:
            for chunk in chunks:
                hasher.update(bytes(chunk))
                if sink is not None:
                    sink.write(chunk)
            digest = hasher.hexdigest()
        finally:
            if isinstance(hasher, _BackgroundSha256):
                hasher.close()
        if digest != member.sha256:
            raise _damaged(self.path, f"member {member.name!r} does not match its sha256")
        if sink is not None:
            sink.finish()

    def _pass_tar(
        self,
        sink_for: Callable[[Member], _Sink | None],
        stop_at: str | None,
        consume: _Consume,
    ) -> None:
        expected = {member.name: member for member in self.manifest.members}
        seen: set[str] = set()
        with open(self.path, "rb", buffering=_CHUNK) as source:
            stream: _Stream = _ZstdStream(source, self.path) if self.form == "zstd" else source
            tar = _TarReader(stream, self.path)
            self._check_same_manifest(_read_manifest_entry(tar, self.path))
            first = True
            while (entry := tar.next_entry()) is not None:
                name, size = entry
                if first:  # manifest.sig, if any, comes right after the manifest
                    first = False
                    if name == SIGNATURE_NAME:
                        self._check_same_signature(_read_signature_entry(tar, self.path, size))
                        continue
                    self._check_same_signature(None)
                problem = _name_problem(name)
                if problem is not None:
                    raise _unsafe(self.path, name, f"its name {problem}")
                if name in seen or name == MANIFEST_NAME:
                    raise _damaged(self.path, f"it holds member {name!r} twice")
                if name == SIGNATURE_NAME:
                    raise _damaged(
                        self.path,
                        f"it holds {SIGNATURE_NAME} out of place (it may only follow "
                        f"{MANIFEST_NAME} right away)",
                    )
                member = expected.get(name)
                if member is None:
                    raise _damaged(self.path, f"member {name!r} was added: the manifest lacks it")
                if size != member.size:
                    raise _damaged(
                        self.path,
                        f"member {name!r} holds {size} bytes, the manifest says {member.size}",
                    )
                seen.add(name)
                consume(member, tar.chunks(size), sink_for(member))
                tar.skip_padding(size)
                if name == stop_at:
                    return
            if first:
                self._check_same_signature(None)
            missing = sorted(expected.keys() - seen)
            if missing:
                raise _damaged(
                    self.path, f"member {missing[0]!r} listed in the manifest is missing"
                )
            tar.finish()

    def _pass_directory(
        self,
        sink_for: Callable[[Member], _Sink | None],
        stop_at: str | None,
        consume: _Consume,
    ) -> None:
        files, others = _scan_tree(self.path)
        if others:
            name, kind = others[0]
            raise _unsafe(self.path, name, f"it is {kind}, not a regular file")
        expected = {member.name: member for member in self.manifest.members}
        present = {entry.name for entry in files}
        if MANIFEST_NAME not in present:
            raise _damaged(self.path, f"{MANIFEST_NAME} is missing")
        for name in sorted(present - expected.keys() - {MANIFEST_NAME, SIGNATURE_NAME}):
            problem = _name_problem(name)
            if problem is not None:
                raise _unsafe(self.path, name, f"its name {problem}")
            raise _damaged(self.path, f"member {name!r} was added: the manifest lacks it")
        missing = sorted(expected.keys() - present)
        if missing:
            raise _damaged(self.path, f"member {missing[0]!r} listed in the manifest is missing")
        self._check_same_manifest(_read_directory_manifest(self.path))
        self._check_same_signature(_read_directory_file(self.path, SIGNATURE_NAME, MAX_SIGNATURE))
        for member in self.manifest.members:
            if stop_at is not None and member.name != stop_at:
                continue
            fd = os.open(self.path / member.name, _O_READ)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise _unsafe(self.path, member.name, f"it is {_file_kind(st.st_mode)}")
                if st.st_size != member.size:
                    raise _damaged(
                        self.path,
                        f"member {member.name!r} holds {st.st_size} bytes, "
                        f"the manifest says {member.size}",
                    )
                chunks = _file_chunks(fd, member.size, self.path, member.name)
                consume(member, chunks, sink_for(member))
            finally:
                os.close(fd)


def open_artifact(path: Path, *, verify: bool = True) -> Artifact:
    """Open the artifact at ``path``: detect its form, read its manifest, and verify it.

    Args:
        path: A ``.tar.zst``, a plain tar, or a directory written by :func:`write_artifact`.
        verify: Also check every member now (a full read); restore passes ``False`` only when
            it extracts, which checks everything again anyway.

    A ``manifest.sig`` is checked to sign exactly the manifest's bytes (so a changed manifest or
    a signature copied from another artifact is refused here, before any member is read); who
    signed it is in :attr:`Artifact.signature`, for the caller to trust or not.

    Raises:
        FileNotFoundError: Nothing is at ``path``.
        ArtifactCorrupt: ``path`` is not a cedana checkpoint, or it is truncated or damaged.
        UnsafeArtifact: A member is not a regular file or its name is unsafe.
        UnsupportedFormat: The manifest's format version is not one this cedana reads.
        UntrustedArtifact: Its signature is malformed or does not verify.
    """
    path = Path(path)
    started = time.perf_counter()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, "no checkpoint at this path; check its spelling", os.fspath(path)
        ) from None
    form: Form
    raw_signature: bytes | None = None
    if stat.S_ISDIR(st.st_mode):
        form = "directory"
        raw = _read_directory_manifest(path)
        raw_signature = _read_directory_file(path, SIGNATURE_NAME, MAX_SIGNATURE)
    elif stat.S_ISREG(st.st_mode):
        with open(path, "rb", buffering=_CHUNK) as source:
            start = source.read(_BLOCK)
            source.seek(0)
            stream: _Stream
            if start[:4] == _ZSTD_MAGIC:
                form, stream = "zstd", _ZstdStream(source, path)
            elif start[257:262] == b"ustar":
                form, stream = "tar", source
            else:
                raise _not_a_checkpoint(path, "it is neither a zstd tar, a tar nor a directory")
            tar = _TarReader(stream, path)
            raw = _read_manifest_entry(tar, path)
            following = tar.next_entry()
            if following is not None and following[0] == SIGNATURE_NAME:
                raw_signature = _read_signature_entry(tar, path, following[1])
    else:
        raise _not_a_checkpoint(path, f"it is {_file_kind(st.st_mode)}")
    try:
        manifest = Manifest.from_json(raw)
    except ArtifactError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    _check_manifest(path, manifest)
    # Cheap (one Ed25519 check over the manifest's bytes), so before any member is read.
    signature = verify_signature(path, raw, raw_signature)
    artifact = Artifact(path=path, form=form, manifest=manifest, signature=signature)
    if verify:
        artifact.verify()
    _log.debug("opened %s artifact %s in %.3f s", form, path, time.perf_counter() - started)
    return artifact
