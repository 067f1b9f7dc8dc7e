"""The page server speaks CRIU's page-server protocol (criu/page-xfer.c) into an artifact.

A sender in the test plays CRIU's side of the protocol, record by record, as CRIU 4.2 sends
it in a dump with ``ps.fd``; the end-to-end path with real CRIU is in the integration tests.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import struct
from pathlib import Path

import pycriu.images
import pytest

import cedana
from cedana.artifact import ArtifactWriter, HostInfo, Manifest, MemberStream, open_artifact
from cedana.errors import DumpFailed, NoSpace
from cedana.pageserver import PageServer
from cedana.progress import Progress, reporting

HEADER = struct.Struct("=I4xQQQ")
OPEN2, ADD_F, GET, FORCE_CLOSE = 4, 6, 7, 0x1024
PE_PRESENT = 4


def manifest() -> Manifest:
    host = HostInfo(kernel="6.1", arch="x86_64", criu_version="4.2.1", hostname="h")
    return Manifest(host=host, kind="process", options={}, tree=(), workload={})


class Criu:
    """CRIU's half of the protocol, over the descriptor the page server gives it."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=os.dup(fd))

    def record(self, cmd: int, nr_pages: int = 0, vaddr: int = 0, dst_id: int = 0) -> None:
        self.sock.sendall(HEADER.pack(cmd, nr_pages, vaddr, dst_id))

    def open(self, dst_id: int) -> bytes:
        self.record(OPEN2, dst_id=dst_id)
        return self.sock.recv(1)

    def add(self, vaddr: int, pages: bytes, dst_id: int) -> None:
        self.record(ADD_F | PE_PRESENT << 16, len(pages) // 4096, vaddr, dst_id)
        self.sock.sendall(pages)

    def close(self) -> int:
        self.record(FORCE_CLOSE)
        status: int = struct.unpack("=i", self.sock.recv(4))[0]
        self.sock.close()
        return status


def pagemap(path: Path) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = pycriu.images.load(io.BytesIO(path.read_bytes()))["entries"]
    return entries


def test_pages_stream_into_members_and_pagemaps_into_the_images(tmp_path: Path) -> None:
    """Each pagemap's pages become one member (pages-1.img, pages-2.img, ... in the order
    CRIU opens them), its pagemap an image CRIU reads back (the head naming those pages, one
    entry per run); CRIU gets "no parent" for each OPEN2 and status 0 at the end."""
    images = tmp_path / "images"
    images.mkdir()
    task = os.urandom(3 * 4096)
    shmem = b"s" * 4096
    dest = tmp_path / "a.tar.zst"
    with ArtifactWriter(dest) as writer:
        with PageServer(writer, images) as server:
            criu = Criu(server.criu_fd)
            assert criu.open(1234 << 8 | 1) == b"\0"
            criu.add(0x7F0000, task[:8192], 1234 << 8 | 1)
            criu.add(0x900000, task[8192:], 1234 << 8 | 1)
            assert criu.open(77 << 8 | 2) == b"\0"
            criu.add(0x0, shmem, 77 << 8 | 2)
            assert criu.close() == 0
            server.finish()
        writer.add_tree(images)
        writer.finish(manifest())
    artifact = open_artifact(dest)
    assert artifact.read_member("pages-1.img") == task
    assert artifact.read_member("pages-2.img") == shmem
    task_map = pagemap(images / "pagemap-1234.img")
    assert task_map[0] == {"pages_id": 1}
    assert [(e["vaddr"], e["nr_pages"], e["flags"]) for e in task_map[1:]] == [
        (0x7F0000, 2, PE_PRESENT),
        (0x900000, 1, PE_PRESENT),
    ]
    assert pagemap(images / "pagemap-shmem-77.img")[0] == {"pages_id": 2}
    assert {m.name for m in artifact.manifest.members} >= {
        "pages-1.img",
        "pagemap-1234.img",
        "pagemap-shmem-77.img",
    }


def test_a_full_disk_fails_the_dump_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When writing the pages fails, the receiver keeps draining (CRIU never blocks on it),
    answers the final close with a failure status, so CRIU fails the dump and thaws the tree,
    and finish() raises the NoSpace naming the artifact."""
    images = tmp_path / "images"
    images.mkdir()

    def full(self: MemberStream, data: bytes) -> None:
        raise NoSpace("no space left on device: the artifact filled", errno=errno.ENOSPC)

    monkeypatch.setattr(MemberStream, "store", full)
    with ArtifactWriter(tmp_path / "a.tar.zst") as writer, PageServer(writer, images) as server:
        criu = Criu(server.criu_fd)
        criu.open(1 << 8 | 1)
        for i in range(40):  # more than the receiver's pool holds
            criu.add(i * 0x400000, bytes(1 << 20), 1 << 8 | 1)
        assert criu.close() == -1
        with pytest.raises(NoSpace, match="the artifact filled"):
            server.finish()


def test_what_it_does_not_serve_and_a_cut_stream_are_dump_failures(tmp_path: Path) -> None:
    """A GET (lazy pages) is refused as a DumpFailed naming it, and CRIU's next sends fail;
    a stream that stops in the middle of a page run, or before its close, is a DumpFailed
    too."""
    for cut in ("get", "mid-run", "no-close"):
        images = tmp_path / cut
        images.mkdir()
        with (
            ArtifactWriter(tmp_path / f"{cut}.tar.zst") as writer,
            PageServer(writer, images) as server,
        ):
            criu = Criu(server.criu_fd)
            criu.open(1 << 8 | 1)
            if cut == "get":
                criu.record(GET)
                # The receiver stops reading and closes its end: CRIU's next sends fail
                # (so it rolls back and thaws the tree) instead of blocking forever.
                with pytest.raises(OSError):
                    for _ in range(1000):
                        criu.sock.sendall(bytes(1 << 20))
            elif cut == "mid-run":
                criu.record(ADD_F | PE_PRESENT << 16, 2, 0, 1 << 8 | 1)
                criu.sock.sendall(bytes(4096))
            criu.sock.close()
            with pytest.raises(DumpFailed, match="page|pages"):
                server.finish()


def test_progress_reports_the_pages_received(tmp_path: Path) -> None:
    """A checkpoint's progress callback hears the dump phase, bytes received of what the
    tree was expected to hold, from the receiving thread."""
    seen: list[Progress] = []
    images = tmp_path / "images"
    images.mkdir()
    with (
        reporting(seen.append),
        ArtifactWriter(tmp_path / "a.tar.zst") as writer,
        PageServer(writer, images, expected=2 << 20) as server,
    ):
        criu = Criu(server.criu_fd)
        criu.open(1 << 8 | 1)
        criu.add(0, bytes(2 << 20), 1 << 8 | 1)
        criu.close()
        server.finish()
    assert seen and seen[-1] == Progress("dump", 2 << 20, 2 << 20)
    assert all(p.phase == "dump" for p in seen)
    assert cedana.progress.Progress("dump", 1, 2).fraction == 0.5
