"""Write checkpoint artifacts: atomically, in one pass, members streamed in as they come.

An :class:`ArtifactWriter` takes members in any order and of sizes known or not: a file whose
size is known (:meth:`~ArtifactWriter.add_file`) or a stream that ends when its producer says
so (:meth:`~ArtifactWriter.open_member`: CRIU's pages, received while CRIU dumps). Each member
is hashed (BLAKE3) and compressed on the way, once; nothing is staged uncompressed.

Two things are only known at the end, and the file leaves room for both:

- a streamed member's tar header holds its size, so a one-block header slot is left before its
  data and filled in when it ends: in a plain tar the 512 bytes themselves; in the zstd form
  the compressed stream is cut into a new frame there, and the slot takes the header's own
  frame padded out with a zstd *skippable frame*, which every zstd decoder passes over;
- the manifest, first in the file, lists every member's digest: room is left at the start
  (the zstd form pads its frame with a skippable frame; a plain tar pads the JSON with spaces).
  Should the manifest outgrow its room, the body is copied behind a bigger one.

A signed artifact (:mod:`cedana.artifact.signing`) holds ``manifest.sig`` right after
``manifest.json``, in the same room (its length is fixed), or beside it in a directory.

The file is built as an anonymous file (``O_TMPFILE``) in the destination's directory, so a
writer killed mid-write leaves nothing behind, and is linked in at the destination only when
complete, fsynced and read back. Where the filesystem has no anonymous files, and for the
directory form, a temporary named for its writer is used, and temporaries of writers that died
are swept away.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import stat
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, cast

import attrs
import blake3
import zstandard

from cedana.artifact._files import _FileSink, _fsync_path, _TreeWriter, _write_all, remove_path
from cedana.artifact._members import (
    _CHUNK,
    _O_READ,
    _THREADED_HASH,
    _ZEROS,
    _name_problem,
    _scan_tree,
)
from cedana.artifact._tar import (
    _BLOCK,
    _RECORD,
    _ZERO_BLOCK,
    _head,
    _member_header,
    _slot_header,
)
from cedana.artifact._zstd import _SKIPPABLE_MAGIC, _compress_bound
from cedana.artifact.manifest import MANIFEST_NAME, Manifest, Member
from cedana.artifact.reader import Artifact, Form
from cedana.artifact.signing import SIGNATURE_NAME, Signature, SigningKey
from cedana.errors import ArtifactCorrupt, ArtifactError, ArtifactExists, InvalidOption, NoSpace
from cedana.staging import owner_gone, owner_tag

__all__ = [
    "ArtifactWriter",
    "Compression",
    "MemberStream",
    "check_destination",
    "check_write_arguments",
    "sweep_temporaries",
    "write_artifact",
]

_log = logging.getLogger("cedana.artifact")

Compression = Literal["zstd", "none"]

_FULL = (errno.ENOSPC, errno.EDQUOT)
_PLACEHOLDER = "0" * 64  # a digest's length, for sizing the manifest before it is known
_MIN_LEVEL = -(1 << 17)  # zstd's fastest "negative" level
_MAX_LEVEL = zstandard.MAX_COMPRESSION_LEVEL
#: Room left for the head (manifest, signature) beyond the draft manifest's own size.
_HEAD_SLACK = 64 << 10
#: What a streamed member's header slot takes in the zstd form: its frame, at its largest,
#: and the 8-byte header of the skippable frame that pads the rest.
_ZSTD_SLOT = _compress_bound(_BLOCK) + 8
_O_TMPFILE_FLAGS = os.O_RDWR | os.O_CLOEXEC | getattr(os, "O_TMPFILE", 0)


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], func)


def _libc_linkat() -> Callable[[int, bytes, int, bytes, int], int] | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).linkat
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    func.restype = ctypes.c_int
    return cast(Callable[[int, bytes, int, bytes, int], int], func)


_LINKAT = _libc_linkat()
_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400


def _link_anonymous(fd: int, dest: Path) -> None:
    """Give the anonymous (``O_TMPFILE``) file ``fd`` the name ``dest``, which must not exist.

    ``os.link`` cannot: it links /proc's magic link itself, not the file it stands for.
    """
    if _LINKAT is None:
        raise OSError(errno.ENOSYS, "linkat is not available")
    source = f"/proc/self/fd/{fd}".encode()
    if _LINKAT(_AT_FDCWD, source, _AT_FDCWD, os.fsencode(dest), _AT_SYMLINK_FOLLOW) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), os.fspath(dest))


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
        self._synced = self.offset = start

    def write(self, data: bytes | memoryview) -> int:
        _write_all(self._fd, data)
        self.offset += len(data)
        if _SYNC_FILE_RANGE is not None and self.offset - self._synced >= _WRITEBACK_STEP:
            # Best effort: a failure here only means the fsync at the end does all the work.
            _SYNC_FILE_RANGE(
                self._fd, self._synced, self.offset - self._synced, _SYNC_FILE_RANGE_WRITE
            )
            self._synced = self.offset
        return len(data)

    def skip(self, size: int) -> int:
        """Leave ``size`` bytes (a hole, read as zeros) to be written later; return where."""
        at = self.offset
        self.offset = os.lseek(self._fd, size, os.SEEK_CUR)
        return at


# --------------------------------------------------------------------------- checks


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
            f"zstd's faster modes, not {level}; 1 is the default"
        )
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise InvalidOption(
            f"threads must be 0 (compress on the writing thread) or a count of zstd worker "
            f"threads, not {threads!r}"
        )


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
        raise _exists(dest)
    if stat.S_ISDIR(st.st_mode) and not os.path.isfile(dest / MANIFEST_NAME):
        raise ArtifactExists(
            f"{dest} is a directory that is not a cedana checkpoint, so overwrite=True "
            "(--overwrite) does not replace it; choose another path"
        )


def _exists(dest: Path) -> ArtifactExists:
    return ArtifactExists(
        f"{dest} already exists; pass overwrite=True (--overwrite) to replace it, or choose "
        "another path"
    )


def _check_member_name(name: str, where: str) -> None:
    if name in (MANIFEST_NAME, SIGNATURE_NAME):
        raise ArtifactError(
            f"{where} would clash with the artifact's own manifest or signature; rename it"
        )
    problem = _name_problem(name)
    if problem is not None:
        raise ArtifactError(f"{where} cannot be stored because its name {problem}; rename it")


def _no_space(dest: Path, exc: OSError) -> NoSpace:
    return NoSpace(
        f"no space left on device in {dest.parent}: the artifact {dest} filled its "
        "filesystem (nothing was kept); free space there, or write the checkpoint to "
        "another destination",
        filename=str(dest),
        errno=exc.errno or errno.ENOSPC,
    )


# --------------------------------------------------------------------------- writing


class MemberStream:
    """One member being streamed into an :class:`ArtifactWriter`: :meth:`write` its bytes
    (hashed and compressed as they come), then :meth:`close` it. Get one from
    :meth:`ArtifactWriter.open_member`; only one is open at a time."""

    def __init__(self, writer: ArtifactWriter, name: str, slot: int) -> None:
        self.name = name
        self.size = 0
        self._writer = writer
        self._slot = slot
        # One thread: the stream is already stages of a pipeline (receive, compress, hash).
        self._hasher = blake3.blake3()

    def write(self, data: bytes | memoryview) -> None:
        """Add ``data`` (not kept: the caller may reuse its buffer).

        Raises:
            NoSpace: The artifact's filesystem filled up.
        """
        self.hash(data)
        self.store(data)

    def store(self, data: bytes | memoryview) -> None:
        """The half of :meth:`write` that compresses and writes ``data``; a caller running
        the two halves on two threads calls both for every piece, each in order, and
        :meth:`close` after both are done with the last one.

        Raises:
            NoSpace: The artifact's filesystem filled up.
        """
        with self._writer._own_errors():
            self._writer._write(data)
        self.size += len(data)

    def hash(self, data: bytes | memoryview) -> None:
        """The half of :meth:`write` that hashes ``data`` (see :meth:`store`)."""
        self._hasher.update(data)

    def close(self) -> Member:
        """End the member: its header goes into its slot; returns what the manifest lists."""
        with self._writer._own_errors():
            return self._writer._close_member(self, self._hasher.hexdigest())


@attrs.define(eq=False)
class ArtifactWriter:
    """Write one artifact at ``dest``: add members, then :meth:`finish` with the manifest.

    Use it as a context manager: leaving the block without :meth:`finish` (an error, a
    ``KeyboardInterrupt``) discards everything, and ``dest`` is left as it was. The
    arguments are those of :func:`write_artifact`; ``draft`` is the manifest as far as it is
    known, to size the room left for the final one: the room is the draft's head and
    ``spare`` bytes more (a draft listing every member, with placeholder digests, needs none).

    Raises (on creation):
        ArtifactExists, FileNotFoundError: As :func:`check_destination`.
        InvalidOption: As :func:`check_write_arguments`.
    """

    dest: Path = attrs.field(converter=Path)
    compress: Compression = "zstd"
    level: int = 1
    threads: int = 0
    directory: bool = False
    overwrite: bool = False
    signer: SigningKey | None = None
    draft: Manifest | None = None
    spare: int = _HEAD_SLACK
    _form: Form = attrs.field(init=False)
    _fd: int = attrs.field(default=-1, init=False)
    _tmp: Path | None = attrs.field(default=None, init=False)  # a named temporary, if any
    _tree: _TreeWriter | None = attrs.field(default=None, init=False)
    _sink: _FdWriter | None = attrs.field(default=None, init=False)
    _compressor: zstandard.ZstdCompressionWriter | None = attrs.field(default=None, init=False)
    _room: int = attrs.field(default=0, init=False)
    _members: dict[str, Member] = attrs.field(factory=dict, init=False)
    _open: MemberStream | None = attrs.field(default=None, init=False)
    _tree_sink: _FileSink | None = attrs.field(default=None, init=False)
    _mtime: int = attrs.field(factory=lambda: int(time.time()), init=False)
    _started: float = attrs.field(factory=time.perf_counter, init=False)
    _buffer: memoryview = attrs.field(factory=lambda: memoryview(bytearray(_CHUNK)), init=False)
    _done: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        check_write_arguments(self.compress, self.level, self.threads)
        check_destination(self.dest, overwrite=self.overwrite)
        self._form = (
            "directory" if self.directory else ("zstd" if self.compress == "zstd" else "tar")
        )
        _log.debug("writing %s artifact %s", self._form, self.dest)
        sweep_temporaries(self.dest.parent)
        try:
            self._create()
        except BaseException as exc:
            self.abort()
            self._raise_translated(exc)
            raise

    # ----------------------------------------------------------------- the file

    def _create(self) -> None:
        if self.directory:
            self._tmp = self._temporary_name()
            self._tree = _TreeWriter(self._tmp, sync=True)
            return
        self._open_file()
        os.fchmod(self._fd, 0o600)
        draft = 0
        if self.draft is not None:
            draft = len(_head(self.draft, self._mtime, self.signer)[0])
        raw = -(draft + self.spare) // _BLOCK * -_BLOCK
        # zstd: the head's frame at its largest, and a skippable frame's header to pad it out.
        self._room = _compress_bound(raw) + 8 if self.compress == "zstd" else raw
        os.lseek(self._fd, self._room, os.SEEK_SET)
        self._sink = _FdWriter(self._fd, self._room)
        if self.compress == "zstd":
            cctx = zstandard.ZstdCompressor(
                level=self.level, threads=self.threads, write_checksum=True
            )
            self._compressor = cctx.stream_writer(
                cast(IO[bytes], self._sink), write_size=_CHUNK, closefd=False
            )

    def _temporary_name(self) -> Path:
        # The owner in the name lets a later write remove what a killed writer left.
        name = f".{self.dest.name}.tmp-{owner_tag()}-{secrets.token_hex(6)}"
        return self.dest.parent / name

    def _write(self, data: bytes | memoryview) -> None:
        if self._compressor is not None:
            self._compressor.write(data)
        elif self._sink is not None:
            self._sink.write(data)
        else:
            cast(_FileSink, self._tree_sink).write(data)

    # ----------------------------------------------------------------- members

    def _start(self, name: str) -> None:
        if self._done or (self._fd < 0 and self._tree is None):
            raise ArtifactError(f"the artifact {self.dest} is no longer being written")
        if self._open is not None:
            raise ArtifactError(f"member {self._open.name!r} is still being written")
        if name in self._members:
            raise ArtifactError(f"member {name!r} was added twice")

    def add_file(self, path: Path, name: str, size: int | None = None) -> Member:
        """Add the regular file at ``path`` as member ``name`` (its size as listed, when
        given: a file that changed since is refused).

        Raises:
            ArtifactError: The file is not a regular file, changed while being read, or its
                name cannot be stored.
        """
        _check_member_name(name, str(path))
        self._start(name)
        with self._own_errors():
            return self._add_file(path, name, size)

    def _add_file(self, path: Path, name: str, size: int | None) -> Member:
        fd = os.open(path, _O_READ)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
                raise _changed(path)
            size = st.st_size
            threads = blake3.blake3.AUTO if size >= _THREADED_HASH else 1
            hasher = blake3.blake3(max_threads=threads)
            self._begin_known(name, size)
            remaining = size
            with open(fd, "rb", buffering=0, closefd=False) as source:
                while remaining:
                    count = source.readinto(self._buffer[: min(remaining, _CHUNK)])
                    if not count:
                        break
                    chunk = self._buffer[:count]
                    hasher.update(chunk)
                    self._write(chunk)
                    remaining -= count
                if remaining or source.read(1):
                    raise _changed(path)
            self._end_data(size)
        finally:
            os.close(fd)
        member = Member(name=name, size=size, blake3=hasher.hexdigest())
        self._members[name] = member
        return member

    def add_tree(self, root: Path) -> None:
        """Add every regular file under ``root`` not added yet (names relative to it).

        Raises:
            ArtifactError: ``root`` holds something other than regular files and
                directories, a name that cannot be stored, or a file changed while read.
        """
        root = Path(root)
        files, others = _scan_tree(root)
        if others:
            name, kind = others[0]
            raise ArtifactError(
                f"{root / name} is {kind}, which a checkpoint cannot hold; "
                "the images directory must hold only the files CRIU wrote"
            )
        for entry in files:
            if entry.name not in self._members:
                self.add_file(root / entry.name, entry.name, entry.size)

    def open_member(self, name: str) -> MemberStream:
        """Start member ``name``, whose size is known when it ends; write it, then close it
        before adding anything else.

        Raises:
            ArtifactError: ``name`` cannot be stored (or is too long for a streamed member:
                100 bytes at most), or another member is still open.
        """
        _check_member_name(name, f"member {name!r}")
        if len(name.encode()) > 100:
            raise ArtifactError(f"member name {name!r} is too long to be streamed")
        self._start(name)
        with self._own_errors():
            return self._open_member(name)

    def _open_member(self, name: str) -> MemberStream:
        if self._tree is not None:
            self._tree_sink = self._tree.create(name)
            slot = 0
        elif self._compressor is not None:
            # The header gets a frame of its own, written when the size is known.
            self._compressor.flush(zstandard.FLUSH_FRAME)
            slot = cast(_FdWriter, self._sink).skip(_ZSTD_SLOT)
        else:
            slot = cast(_FdWriter, self._sink).skip(_BLOCK)
        self._open = MemberStream(self, name, slot)
        return self._open

    def _close_member(self, stream: MemberStream, digest: str) -> Member:
        if self._open is not stream:
            raise ArtifactError(f"member {stream.name!r} is not the one being written")
        self._open = None
        self._end_data(stream.size)
        if self._tree is None:  # the header goes into the slot left for it
            header = _slot_header(stream.name, stream.size, self._mtime)
            if self._compressor is not None:
                frame = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(header)
                header = frame + struct.pack("<II", _SKIPPABLE_MAGIC, _ZSTD_SLOT - len(frame) - 8)
            os.pwrite(self._fd, header, stream._slot)  # the skippable's content: the hole
        member = Member(name=stream.name, size=stream.size, blake3=digest)
        self._members[stream.name] = member
        return member

    def _begin_known(self, name: str, size: int) -> None:
        if self._tree is not None:
            self._tree_sink = self._tree.create(name)
        else:
            self._write(_member_header(name, size, self._mtime))

    def _end_data(self, size: int) -> None:
        if self._tree is not None:
            cast(_FileSink, self._tree_sink).finish()
            self._tree_sink = None
        else:
            self._write(_ZERO_BLOCK[: -size % _BLOCK])

    # ----------------------------------------------------------------- the end

    def finish(self, manifest: Manifest, *, verify: bool = True) -> Manifest:
        """Write ``manifest`` (its members filled in, sorted by name), fsync, read back
        (with ``verify``: the zstd form by its frame checksums, the others by hashing every
        member again) and put the artifact at ``dest``; return the manifest written.

        Raises:
            ArtifactCorrupt: What was written did not read back as written.
            ArtifactExists: ``dest`` appeared meanwhile and ``overwrite`` is false.
            NoSpace: ``dest``'s filesystem filled up (nothing is kept).
            OSError: Writing failed.
        """
        try:
            final = attrs.evolve(
                manifest, members=tuple(self._members[n] for n in sorted(self._members))
            )
            if self._open is not None:
                raise ArtifactError(f"member {self._open.name!r} was never closed")
            self._done = True
            signature = None
            if self._tree is not None:
                body = final.to_json()
                self._write_directory_head(body)
                if self.signer is not None:
                    signature = self.signer.sign(body)
            else:
                body = self._write_head(final)
                signature = None if self.signer is None else self.signer.sign(body)
            if verify:
                self._check_written(final, signature)
            self._put_in_place()
        except BaseException as exc:
            self.abort()
            _log.debug(
                "writing %s failed after %.3f s: %r",
                self.dest,
                time.perf_counter() - self._started,
                exc,
            )
            self._raise_translated(exc)
            raise
        total = sum(member.size for member in final.members)
        elapsed = time.perf_counter() - self._started
        _log.debug(
            "wrote %s: %d members, %d bytes in %.3f s (%.0f MB/s)",
            self.dest,
            len(final.members),
            total,
            elapsed,
            total / elapsed / 1e6 if elapsed else 0.0,
        )
        return final

    def _write_directory_head(self, body: bytes) -> None:
        tree = cast(_TreeWriter, self._tree)
        sink = tree.create(MANIFEST_NAME)
        sink.write(body)
        sink.finish()
        if self.signer is not None:
            sink = tree.create(SIGNATURE_NAME)
            sink.write(self.signer.sign(body).to_json())
            sink.finish()
        tree.sync()
        tree.close()
        self._tree = None

    def _write_head(self, final: Manifest) -> bytes:
        """End the tar, write the head into its room (or move the body behind a bigger one),
        fsync; return the manifest's bytes as stored."""
        sink = cast(_FdWriter, self._sink)
        if self._compressor is not None:
            # Two zero blocks end a tar (the zstd form leaves out tar's 10 KiB record padding).
            self._write(_ZEROS[: 2 * _BLOCK])
            self._compressor.flush(zstandard.FLUSH_FRAME)
        else:
            self._write(_ZEROS[: 2 * _BLOCK + (-(sink.offset + 2 * _BLOCK) % _RECORD)])
        head, body = self._head_bytes(final)
        if len(head) > self._room:
            _log.debug("the manifest outgrew its room: moving the body behind a bigger one")
            self._relocate(len(head))
        os.pwrite(self._fd, head, 0)
        os.fsync(self._fd)
        return body

    def _head_bytes(self, final: Manifest) -> tuple[bytes, bytes]:
        if self._compressor is None:
            try:
                return _head(final, self._mtime, self.signer, fill=self._room)
            except ValueError:  # too big: a bigger room, made exact
                head, _ = _head(final, self._mtime, self.signer)
                return _head(final, self._mtime, self.signer, fill=len(head) + _HEAD_SLACK)
        head, body = _head(final, self._mtime, self.signer)
        frame = zstandard.ZstdCompressor(level=self.level, write_checksum=True).compress(head)
        room = max(self._room, len(frame) + 8)
        # The skippable frame's content is the hole left by seeking past it: zeros.
        return frame + struct.pack("<II", _SKIPPABLE_MAGIC, room - len(frame) - 8), body

    def _relocate(self, room: int) -> None:
        """Copy the body into a new file behind ``room`` bytes of head room."""
        old_fd, old_room = self._fd, self._room
        size = os.fstat(old_fd).st_size
        self._fd = -1
        tmp, self._tmp = self._tmp, None
        try:
            self._open_file()
            offset = old_room
            target = room
            while offset < size:
                copied = os.copy_file_range(old_fd, self._fd, size - offset, offset, target)
                if not copied:
                    raise ArtifactError(f"copying {self.dest}'s body ended early")
                offset += copied
                target += copied
            self._room = room
        finally:
            os.close(old_fd)
            if tmp is not None:
                remove_path(tmp)

    def _open_file(self) -> None:
        """The file the artifact is built in: anonymous where the filesystem can."""
        try:
            self._fd = os.open(self.dest.parent, _O_TMPFILE_FLAGS, 0o600)
        except OSError as exc:  # no O_TMPFILE on this filesystem (or this kernel)
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
            self._tmp = self._temporary_name()
            self._fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def _readable_path(self) -> Path:
        if self._tmp is not None:
            return self._tmp
        return Path(f"/proc/self/fd/{self._fd}")

    def _check_written(self, final: Manifest, signature: Signature | None) -> None:
        """Read back what was just written for ``dest``, before it replaces anything."""
        artifact = Artifact(
            path=self._readable_path(),
            form=self._form,
            manifest=final,
            signature=signature,
        )
        try:
            # zstd's frame checksums prove the bytes the digests were computed from.
            artifact.verify(digests=False)
        except ArtifactError as exc:
            raise ArtifactCorrupt(
                f"the artifact written for {self.dest} did not read back as written, so "
                f"{self.dest} was left as it was; check the disk and take the checkpoint again"
            ) from exc

    def _put_in_place(self) -> None:
        dest = self.dest
        if self._tmp is None:  # an anonymous file: link it in
            if not self.overwrite:
                try:
                    _link_anonymous(self._fd, dest)
                except FileExistsError:
                    raise _exists(dest) from None
                self._close_fd()
                self._synced_parent(dest)
                return
            self._tmp = self._temporary_name()
            _link_anonymous(self._fd, self._tmp)
        self._close_fd()
        _replace(self._tmp, dest)
        self._tmp = None
        self._synced_parent(dest)

    def _synced_parent(self, dest: Path) -> None:
        try:
            _fsync_path(dest.parent)
        except BaseException:
            remove_path(dest)
            raise

    def _close_fd(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def abort(self) -> None:
        """Discard everything written (idempotent); ``dest`` is left as it was."""
        self._done = True
        self._open = None
        self._compressor = None  # dropped, not flushed: its output is thrown away
        if self._tree is not None:
            self._tree.close()
            self._tree = None
        self._close_fd()
        if self._tmp is not None:
            remove_path(self._tmp)
            self._tmp = None

    @contextlib.contextmanager
    def _own_errors(self) -> Iterator[None]:
        """A full filesystem while this writer writes is NoSpace, naming the artifact."""
        try:
            yield
        except OSError as exc:
            self._raise_translated(exc)
            raise

    def _raise_translated(self, exc: BaseException) -> None:
        """Raise a full filesystem as NoSpace; return for every other error."""
        if isinstance(exc, OSError) and exc.errno in _FULL and not isinstance(exc, NoSpace):
            raise _no_space(self.dest, exc) from exc

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Errors from this writer's own writes were made NoSpace where they were raised;
        # anything else passing through the block is not the artifact's to rename.
        if not self._done or exc is not None:
            self.abort()


def _changed(path: Path) -> ArtifactError:
    return ArtifactError(
        f"{path} changed while the checkpoint was being written; images must not change "
        "once CRIU has dumped them, take the checkpoint again"
    )


def write_artifact(
    images_dir: Path,
    dest: Path,
    manifest: Manifest,
    *,
    compress: Compression = "zstd",
    level: int = 1,
    threads: int = 0,
    directory: bool = False,
    overwrite: bool = False,
    signer: SigningKey | None = None,
) -> Manifest:
    """Write ``images_dir`` and ``manifest`` as an artifact at ``dest``, atomically.

    Every regular file under ``images_dir`` becomes a member; the manifest is returned, and
    written first, with ``members`` filled in (sorted by name, with size and BLAKE3 digest).
    The artifact is built beside ``dest`` and put there only when complete, fsynced and read
    back (the zstd form by its frame checksums, the others by hashing every member again),
    so ``dest`` never holds half an artifact. On any error before, including ``ENOSPC`` and
    ``KeyboardInterrupt``, ``dest`` is left as it was, nothing is kept and the error
    propagates (a full filesystem as :class:`~cedana.errors.NoSpace`); should the
    directory's fsync fail after it, the new artifact is removed. Temporaries that killed
    writers left beside ``dest`` are removed first (:func:`sweep_temporaries`).

    Args:
        images_dir: The CRIU images directory (subdirectories are kept).
        dest: Where to write: a file, or with ``directory=True`` a directory.
        manifest: Everything but ``members``, which is computed here.
        compress: ``"zstd"`` for a ``.tar.zst``, ``"none"`` for a plain tar.
        level: zstd level, 1 (fastest, the default) to 22; negative levels are zstd's faster
            modes.
        threads: zstd worker threads; 0 compresses on the calling thread.
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
    files, _ = _scan_tree(images_dir)
    placeholder = attrs.evolve(
        manifest,
        members=tuple(
            Member(name=entry.name, size=entry.size, blake3=_PLACEHOLDER) for entry in files
        ),
    )
    with ArtifactWriter(
        dest,
        compress=compress,
        level=level,
        threads=threads,
        directory=directory,
        overwrite=overwrite,
        signer=signer,
        draft=placeholder,
        spare=0,
    ) as writer:
        writer.add_tree(images_dir)
        return writer.finish(manifest)


_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)-(\d+)-[0-9a-f]{12}$")


def sweep_temporaries(directory: Path) -> None:
    """Remove the temporary artifacts that writers killed mid-write (SIGKILL, a crash) left
    in ``directory``: only names :class:`ArtifactWriter` makes, and only when their owner is
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
