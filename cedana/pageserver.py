"""Receive a dump's memory pages from CRIU and stream them into the artifact as CRIU sends them.

CRIU writes most images to the images directory, but the pages (nearly all the bytes) can go to
a *page server* instead. Over RPC, ``criu_opts.ps.fd`` hands ``criu swrk`` one end of a socket
pair; the :class:`PageServer` holds the other end on a thread of its own and speaks CRIU's
page-server protocol (criu/page-xfer.c): per pagemap, ``OPEN2`` (answered with one byte, "no
parent images"), then ``ADD_F`` records, each followed by its pages when present, and a final
``FORCE_CLOSE`` (answered with an ``int32`` status, 0 for success). Each pagemap's pages become
one streamed artifact member (``pages-N.img``: compressed and hashed as they arrive, never
staged on disk), and the ``pagemap-*.img`` image that CRIU's own page server would write is
written into the images directory, to be added with the other images.

Failure is always CRIU's to act on, so the tree is never left frozen. Should writing fail (a
full disk), the receiver drains the rest of the pages and answers the final ``FORCE_CLOSE``
with a failure status, which makes CRIU fail the dump and thaw the tree; the error is raised
by :meth:`PageServer.finish`. Should the stream itself go wrong (a record this receiver does
not take), or this process die, its end of the socket closes: CRIU's next send fails (it
ignores SIGPIPE) and it rolls back the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from cedana import progress
from cedana.artifact.writer import ArtifactWriter, MemberStream
from cedana.criu import pagemap_image
from cedana.errors import DumpFailed

__all__ = ["PageServer"]

_log = logging.getLogger("cedana.pageserver")
_T = TypeVar("_T")

_PAGE = 4096
_HEADER = struct.Struct("=I4xQQQ")  # cmd, nr_pages, vaddr, dst_id (x86_64 layout)
_CMD_BITS, _TYPE_BITS = 16, 8
_ADD, _HOLE, _OPEN, _OPEN2, _PARENT, _ADD_F, _GET = 1, 2, 3, 4, 5, 6, 7
_CLOSE, _FORCE_CLOSE = 0x1023, 0x1024
_PE_PARENT, _PE_PRESENT = 1, 4
_TYPE_PID, _TYPE_SHMEM = 1, 2
#: Pages are received in pieces this big, up to this many waiting to be written (128 MiB:
#: CRIU need not wait for the writer until then, and cedana stays well under 256 MiB).
_PIECE = 4 << 20
_POOL = 32
_SOCKET_BUFFER = 8 << 20
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # not in Python's socket module


#: What the writer and hasher threads are given: a piece for a member, or an event to set
#: once they are done with everything before it.
_Job = tuple[MemberStream, memoryview, int] | threading.Event


class PageServer:
    """A page server for one dump: pages into ``writer``, pagemaps into ``images_dir``.

    Use as a context manager around the dump; :attr:`criu_fd` goes into the request
    (``ps={"fd": ...}`` and ``pass_fds``). Call :meth:`finish` once the dump returned (or from
    its post-dump callback): it waits for the receiver and raises what failed it.
    """

    def __init__(
        self, writer: ArtifactWriter, images_dir: Path, *, expected: int | None = None
    ) -> None:
        self._writer = writer
        self._images = Path(images_dir)
        self._progress = progress.current()  # the receiver thread has a context of its own
        self._expected = expected
        self._ours, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._theirs.set_inheritable(True)
        # A deep socket buffer lets CRIU splice whole runs of pages without waiting for each
        # of our reads (the default, about 200 KiB, ping-pongs the two). Root may go past
        # wmem_max with the FORCE options; otherwise the kernel caps it.
        for sock, forced, plain in (
            (self._theirs, _SO_SNDBUFFORCE, socket.SO_SNDBUF),
            (self._ours, _SO_RCVBUFFORCE, socket.SO_RCVBUF),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, forced, _SOCKET_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, _SOCKET_BUFFER)
        self._error: BaseException | None = None
        self._member: MemberStream | None = None
        self._pagemap: tuple[str, list[tuple[int, int, int]]] | None = None
        self._dst_id: int | None = None
        self._pages_ids = 0
        self._received = 0
        self._closed = False
        self._used = False  # CRIU sent anything (it does not when the pages stay local)
        # Received pieces wait for the writer thread in a bounded pool: CRIU sends at the
        # speed of the socket while the writer compresses and hashes behind it.
        self._free: queue.Queue[memoryview] = queue.Queue()
        self._pieces = 0  # allocated as needed: a small dump needs few
        self._cpu: dict[str, float] = {}  # each thread's CPU seconds, for the debug log
        self._work: queue.Queue[_Job | None] = queue.Queue()
        self._hash_work: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="cedana-pages", daemon=True)
        self._writing = threading.Thread(target=self._write, name="cedana-pages-write", daemon=True)
        self._hashing = threading.Thread(target=self._hash, name="cedana-pages-hash", daemon=True)

    @property
    def criu_fd(self) -> int:
        """The descriptor CRIU gets (pass it to swrk under the same number)."""
        return self._theirs.fileno()

    @property
    def received(self) -> int:
        """Bytes of pages received so far."""
        return self._received

    def __enter__(self) -> PageServer:
        self._hashing.start()
        self._writing.start()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        # CRIU has exited (or never started): our end closing ends the receiver's wait.
        self._theirs.close()
        if self._thread.is_alive():
            self._ours.shutdown(socket.SHUT_RDWR)
            self._thread.join()
        self._ours.close()
        self._stop_writing()

    def _stop_writing(self) -> None:
        if self._writing.is_alive():
            self._work.put(None)  # the writer passes it on to the hasher
            self._writing.join()
        self._hashing.join()

    def finish(self) -> None:
        """Wait until CRIU has sent everything (its ``FORCE_CLOSE``), then raise what went
        wrong on the way, if anything. A CRIU that sent nothing kept its pages among the
        images (``lazy_pages``, say), which are added as files.

        Raises:
            DumpFailed: CRIU ended the stream without closing it, or sent what this
                receiver does not take.
            NoSpace, OSError: Writing the artifact failed.
        """
        self.raise_error()
        if self._used and not self._closed:
            raise DumpFailed("CRIU stopped sending pages before it had sent them all")

    def raise_error(self) -> None:
        """Wait for the receiver, then raise what failed it (and so made CRIU fail the
        dump: a full disk, say), if anything."""
        self._theirs.close()  # so a CRIU that died cannot leave the receiver waiting
        self._thread.join()
        self._stop_writing()
        if self._error is not None:
            raise self._error

    # ----------------------------------------------------------------- the receiver

    def _serve(self) -> None:
        try:
            self._serve_records()
        finally:
            self._cpu["receive"] = time.thread_time()

    def _serve_records(self) -> None:
        try:
            while True:
                header = self._exact(_HEADER.size)
                if header is None:
                    return  # CRIU went away: finish() says so
                cmd, nr_pages, vaddr, dst_id = _HEADER.unpack(header)
                self._used = True
                if self._command(cmd, nr_pages, vaddr, dst_id):
                    return
        except BaseException as exc:  # raised again by finish()
            if self._error is None:
                self._error = exc
            _log.debug("page server: %r", exc)
            # Stop CRIU for sure: with nobody reading, its next send fails (it ignores
            # SIGPIPE) and it rolls the dump back, thawing the tree, instead of waiting.
            with contextlib.suppress(OSError):
                self._ours.shutdown(socket.SHUT_RDWR)

    def _command(self, cmd: int, nr_pages: int, vaddr: int, dst_id: int) -> bool:
        """Act on one record; True at the end of the stream."""
        op, flags = cmd & ((1 << _CMD_BITS) - 1), cmd >> _CMD_BITS
        if op in (_OPEN, _OPEN2):
            self._open(dst_id)
            if op == _OPEN2:
                self._ours.sendall(b"\0")  # no parent images
        elif op in (_ADD_F, _ADD, _HOLE):
            if dst_id != self._dst_id:
                self._open(dst_id)  # CRIU's "IO without open", which its server takes too
            flags = flags if op == _ADD_F else (_PE_PRESENT if op == _ADD else _PE_PARENT)
            self._add(vaddr, nr_pages, flags)
        elif op in (_CLOSE, _FORCE_CLOSE):
            self._close_pagemap()
            self._drained()  # the status says whether everything was written
            status = 0 if self._error is None else -1
            self._ours.sendall(struct.pack("=i", status))
            self._closed = True
            return True
        else:  # PARENT and GET belong to incremental dumps and lazy restores
            raise _protocol_error(f"page-server command {op:#x}, which cedana does not serve")
        return False

    def _open(self, dst_id: int) -> None:
        self._close_pagemap()
        kind, ident = dst_id & ((1 << _TYPE_BITS) - 1), dst_id >> _TYPE_BITS
        if kind == _TYPE_PID:
            name = f"pagemap-{ident}.img"
        elif kind == _TYPE_SHMEM:
            name = f"pagemap-shmem-{ident}.img"
        else:
            raise _protocol_error(f"a pagemap of unknown type {kind}")
        self._pages_ids += 1
        self._dst_id = dst_id
        self._pagemap = (name, [])
        self._member = self._guarded(
            lambda: self._writer.open_member(f"pages-{self._pages_ids}.img")
        )

    def _add(self, vaddr: int, nr_pages: int, flags: int) -> None:
        if self._pagemap is None:
            raise _protocol_error("pages before any pagemap was opened")
        self._pagemap[1].append((vaddr, nr_pages, flags))
        if not flags & _PE_PRESENT:
            return
        remaining = nr_pages * _PAGE
        while remaining:
            buffer = self._piece()
            view = buffer[: min(remaining, _PIECE)]
            got = 0
            while got < len(view):
                count = self._ours.recv_into(view[got:])
                if not count:
                    raise _protocol_error("the stream ended in the middle of a page run")
                got += count
            remaining -= got
            self._received += got
            if self._member is not None and self._error is None:
                self._work.put((self._member, buffer, got))
            else:
                self._free.put(buffer)  # drained: CRIU is told at the end
            if self._progress is not None:
                self._progress(progress.Progress("dump", self._received, self._expected))

    def _piece(self) -> memoryview:
        """A free piece of the pool, waiting for one when all are in use."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            if self._pieces < _POOL:
                self._pieces += 1
                return memoryview(bytearray(_PIECE))
            return self._free.get()

    def _close_pagemap(self) -> None:
        if self._pagemap is None:
            return
        name, entries = self._pagemap
        self._pagemap = None
        member, self._member = self._member, None
        self._drained()
        if member is not None:
            self._guarded(member.close)
        image = pagemap_image(self._pages_ids, entries)
        self._guarded(lambda: _write_new(self._images / name, image))

    def _drained(self) -> None:
        """Wait until the writer and hasher threads are done with every piece so far."""
        done = threading.Event()
        self._work.put(done)
        done.wait()

    def _write(self) -> None:
        """The writer thread: pieces compressed into their members, in the order received,
        then handed to the hasher (events too, so that they mean "both are done")."""
        while (job := self._work.get()) is not None:
            if not isinstance(job, threading.Event):
                member, buffer, size = job
                self._guarded(partial(member.store, buffer[:size]))
            self._hash_work.put(job)
        self._hash_work.put(None)
        self._cpu["compress"] = time.thread_time()

    def _hash(self) -> None:
        """The hasher thread: pieces into their members' digests; then the piece is free."""
        while (job := self._hash_work.get()) is not None:
            if isinstance(job, threading.Event):
                job.set()
                continue
            member, buffer, size = job
            self._guarded(partial(member.hash, buffer[:size]))
            self._free.put(buffer)
        self._cpu["hash"] = time.thread_time()
        _log.debug(
            "page server: %d bytes; CPU seconds %s",
            self._received,
            ", ".join(f"{k} {v:.2f}" for k, v in sorted(self._cpu.items())),
        )

    def _guarded(self, work: Callable[[], _T]) -> _T | None:
        """Run ``work`` unless something failed already; on failure keep the error and go on
        receiving (CRIU is told at the end), so the dump fails cleanly instead of stalling."""
        if self._error is not None:
            return None
        try:
            return work()
        except Exception as exc:
            if self._error is None:
                self._error = exc
            _log.debug("page server: writing failed, draining the rest: %r", exc)
            return None

    def _exact(self, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            more = self._ours.recv(size - len(data))
            if not more:
                if data:
                    raise _protocol_error("the stream ended in the middle of a record")
                return None
            data += more
        return data


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _protocol_error(what: str) -> DumpFailed:
    return DumpFailed(f"CRIU's page stream holds {what}; the dump was abandoned")
