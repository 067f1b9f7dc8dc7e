"""zstd frames: following a stream's frame structure to tell a complete file from a cut one,
and the bound on what a compressed frame can take."""

from __future__ import annotations

from pathlib import Path
from typing import IO, BinaryIO, cast

import zstandard

from cedana.artifact._members import _CHUNK, _damaged, _truncated

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MAGIC = 0x184D2A50


def _compress_bound(size: int) -> int:
    """The most bytes zstd can make out of ``size`` bytes (ZSTD_COMPRESSBOUND), plus room."""
    small = ((128 << 10) - size) >> 11 if size < (128 << 10) else 0
    return size + (size >> 8) + small + 64


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
        self._padding = False  # the bytes skipped are a skippable frame's: zeros, as written
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
                if self._padding and bytes(view[position : position + step]).count(0) != step:
                    # cedana pads with zeros only: anything else is damage (or an edit).
                    raise _Malformed("a zstd skippable frame holds data")
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
            self._padding = False
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
            self._padding = False
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
            self._padding = True
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
