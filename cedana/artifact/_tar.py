"""The tar layer of an artifact: member headers as the writer makes them, and a strict
reader that takes regular files and nothing else."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from cedana.artifact._members import (
    _CHUNK,
    _ZEROS,
    _damaged,
    _name_problem,
    _not_a_checkpoint,
    _truncated,
    _unsafe,
)
from cedana.artifact.manifest import MANIFEST_NAME, Manifest
from cedana.artifact.signing import SIGNATURE_NAME, SigningKey

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_ZERO_BLOCK = bytes(_BLOCK)
_MAX_PAX = 1 << 20

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


class _Stream(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _member_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = mtime
    # PAX: names over 100 bytes and files of 8 GiB and more get an extended header.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def _slot_header(name: str, size: int, mtime: int) -> bytes:
    """A member header that is one 512-byte block for any size, written after its data
    (into the block left for it) when the size was not known in advance: ustar, with
    GNU's base-256 size field from 8 GiB on, which GNU tar, bsdtar and Python's tarfile read.
    ``name`` must fit the 100-byte ustar name field."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = mtime
    header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
    if len(header) != _BLOCK:
        raise ValueError(f"{name!r} is too long for a streamed member's one-block header")
    return header


def _head(
    manifest: Manifest, mtime: int, signer: SigningKey | None = None, *, fill: int = 0
) -> tuple[bytes, bytes]:
    """The tar header and padded content of ``manifest.json``, then of ``manifest.sig``
    when signed (a signature has the same length for every manifest).

    With ``fill``, the manifest is padded with spaces (which JSON allows) so that the head
    is exactly ``fill`` bytes, the room a plain tar left for it; a manifest that does not
    fit raises ValueError. The signature covers the padded bytes, as read. Returns the head
    and the manifest's bytes as stored."""
    body = manifest.to_json()
    sig = b"" if signer is None else signer.sign(body).to_json()
    if fill:
        sig_part = 0 if signer is None else _BLOCK + len(sig) + (-len(sig) % _BLOCK)
        room = fill - _BLOCK - sig_part
        if room < len(body) or room % _BLOCK:
            raise ValueError("the manifest does not fit the room left for it")
        body += b" " * (room - len(body))
        if signer is not None:
            sig = signer.sign(body).to_json()
    head = (
        _member_header(MANIFEST_NAME, len(body), mtime) + body + _ZERO_BLOCK[: -len(body) % _BLOCK]
    )
    if signer is not None:
        head += _member_header(SIGNATURE_NAME, len(sig), mtime) + sig
        head += _ZERO_BLOCK[: -len(sig) % _BLOCK]
    return head, body


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
