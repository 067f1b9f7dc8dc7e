"""Open, verify and extract checkpoint artifacts.

An artifact holds a CRIU images directory plus ``manifest.json``, in one of three forms:

``zstd`` (the default)
    One file, a zstd-compressed tar that ``tar --zstd -tf`` lists: ``manifest.json`` first, then
    the images sorted by name, regular files only.
``tar``
    The same tar, uncompressed (``compress="none"``).
``directory``
    A directory holding the same members.

Files are 0600 and directories 0700: an artifact holds process memory.

Reading checks everything on every path (:meth:`Artifact.verify`, :meth:`Artifact.extract`,
:meth:`Artifact.read_member`): members must be regular files with safe relative names, listed
once in the manifest, with the listed size and digest; a cut or damaged file is reported as such.
Nothing is trusted before it is checked, and extraction never follows a symlink.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Literal

import attrs

from cedana import progress
from cedana.artifact._files import _BytesSink, _Sink, _TreeWriter
from cedana.artifact._members import (
    _CHUNK,
    _O_READ,
    _check_manifest,
    _damaged,
    _file_kind,
    _hashing,
    _name_problem,
    _not_a_checkpoint,
    _scan_tree,
    _unsafe,
)
from cedana.artifact._tar import _BLOCK, _Stream, _TarReader
from cedana.artifact._zstd import _ZSTD_MAGIC, _ZstdStream
from cedana.artifact.manifest import MANIFEST_NAME, Manifest, Member
from cedana.artifact.signing import (
    MAX_SIGNATURE,
    SIGNATURE_NAME,
    Signature,
    verify_signature,
)
from cedana.errors import ArtifactError, UntrustedArtifact
from cedana.progress import Phase

__all__ = ["Artifact", "Form", "open_artifact"]

_log = logging.getLogger("cedana.artifact")

Form = Literal["zstd", "tar", "directory"]

_MAX_MANIFEST = 64 << 20
_REPORT_STEP = 4 << 20

#: Checks one member's bytes against the manifest on their way to a sink (or to none).
_Consume = Callable[[Member, Iterator[bytes], _Sink | None], None]


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
            digests: Recompute every member's digest. ``False`` is for an artifact this
                process has just written, in the zstd form only: every zstd frame carries
                a checksum of what the compressor was fed, which is what the manifest's
                digests were computed from, so a clean decode proves the members match
                (names, sizes and structure are still checked). Other forms always hash.

        Raises:
            ArtifactCorrupt: The artifact is truncated or damaged, or a member is missing,
                added, listed twice, or differs in size or digest from the manifest.
            UnsafeArtifact: An entry is not a regular file, or its name is not safe.
        """
        started = time.perf_counter()
        self._pass(lambda _member: None, digests=digests or self.form != "zstd", phase="verify")
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
            self._pass(
                lambda m: tree.create(m.name) if only is None or only(m.name) else None,
                phase="unpack",
            )
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

    def stream_member(self, name: str, write: Callable[[bytes], object]) -> None:
        """Hand one member's bytes to ``write`` as they are read, without a copy on disk.

        Its digest is known only at its end: should it not match, :class:`ArtifactCorrupt`
        is raised after the last ``write``, so a caller that consumes the bytes as they
        come (a VM loading its state) verifies the artifact first and undoes what it
        started on this error.

        Raises:
            KeyError: The manifest lists no such member.
            ArtifactCorrupt, UnsafeArtifact: As for :meth:`read_member`.
        """
        self.manifest.member(name)
        sink = _CallSink(write)
        self._pass(lambda m: sink if m.name == name else None, stop_at=name)

    def _pass(
        self,
        sink_for: Callable[[Member], _Sink | None],
        stop_at: str | None = None,
        *,
        digests: bool = True,
        phase: Phase | None = None,
    ) -> None:
        """Read the artifact once, hashing each member (unless not ``digests`` and it goes to
        no sink) and handing it to ``sink_for``'s sink; the bytes read are reported as
        ``phase`` (:mod:`cedana.progress`) when given."""
        counter = None
        if phase is not None and progress.current() is not None:
            counter = _Counter(phase, sum(m.size for m in self.manifest.members))
        consume = partial(self._consume, digests=digests, counter=counter)
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
        self,
        member: Member,
        chunks: Iterator[bytes],
        sink: _Sink | None,
        *,
        digests: bool,
        counter: _Counter | None,
    ) -> None:
        if counter is not None:
            chunks = counter.counted(chunks)
        if not digests and sink is None:
            for _chunk in chunks:  # decoded (and frame-checksummed) but not hashed
                pass
            return
        with _hashing(member.algorithm, member.size) as hasher:
            for chunk in chunks:
                hasher.update(chunk)
                if sink is not None:
                    sink.write(chunk)
            digest = hasher.hexdigest()
        if digest != member.digest:
            raise _damaged(
                self.path, f"member {member.name!r} does not match its {member.algorithm}"
            )
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


class _CallSink:
    """A sink that hands each piece to a callable."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write

    def write(self, data: bytes | memoryview) -> None:
        self._write(bytes(data))

    def finish(self) -> None:
        pass


class _Counter:
    """Counts the member bytes of one pass and reports them as a phase of progress."""

    def __init__(self, phase: Phase, total: int) -> None:
        self._phase: Phase = phase
        self._total = total
        self._done = 0
        self._reported = 0

    def counted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            yield chunk
            self._done += len(chunk)
            if self._done - self._reported >= _REPORT_STEP or self._done == self._total:
                self._reported = self._done
                progress.report(self._phase, self._done, self._total)


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
