"""Write checkpoint artifacts: atomically, in one pass over the images.

Writing streams every image once. The manifest must come first but lists every member's
sha256, which is only known at the end, so the writer leaves room for it at the start of the file
and fills it in last: the manifest's length is known in advance (a sha256 is always 64 hex
digits), so in a plain tar its slot is exact, and in the zstd form it gets a frame of its own,
padded to the reserved length with a zstd *skippable frame*, which every zstd decoder passes
over. Hashing then runs alongside zstd's worker threads instead of in a pass of its own.

A signed artifact (:mod:`cedana.artifact.signing`) holds ``manifest.sig`` right after
``manifest.json``, in the same reserved room (its length is fixed too), or beside it in a
directory; nowhere else.

The artifact is built in a temporary beside its destination, named for its writer, and renamed
over the destination only when complete and read back; temporaries of writers that died are
swept away.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import re
import secrets
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Literal, cast

import attrs
import zstandard

from cedana.artifact._files import _fsync_path, _TreeWriter, _write_all, remove_path
from cedana.artifact._members import (
    _CHUNK,
    _O_CREATE,
    _O_READ,
    _THREADED_HASH,
    _ZEROS,
    _BackgroundSha256,
    _Entry,
    _name_problem,
    _scan_tree,
)
from cedana.artifact._tar import _BLOCK, _RECORD, _ZERO_BLOCK, _head, _member_header
from cedana.artifact._zstd import _SKIPPABLE_MAGIC, _compress_bound
from cedana.artifact.manifest import MANIFEST_NAME, Manifest, Member
from cedana.artifact.reader import Artifact, Form
from cedana.artifact.signing import SIGNATURE_NAME, SigningKey
from cedana.errors import ArtifactCorrupt, ArtifactError, ArtifactExists, InvalidOption, NoSpace
from cedana.staging import owner_gone, owner_tag

__all__ = [
    "Compression",
    "check_destination",
    "check_write_arguments",
    "sweep_temporaries",
    "write_artifact",
]

_log = logging.getLogger("cedana.artifact")

Compression = Literal["zstd", "none"]

_PLACEHOLDER_SHA256 = "0" * 64
_FULL = (errno.ENOSPC, errno.EDQUOT)
_MIN_LEVEL = -(1 << 17)  # zstd's fastest "negative" level
_MAX_LEVEL = zstandard.MAX_COMPRESSION_LEVEL


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
