"""Rendering and decoding of inspections, without root or CRIU: Inspection objects are
built by hand, and decoding is fed images in pycriu's JSON form by a fake loader."""

from __future__ import annotations

import html
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from cedana.artifact import (
    FileInfo,
    Inspection,
    ProcessInfo,
    SocketInfo,
    inspect_images,
)
from cedana.artifact import _decode as inspect_mod
from cedana.errors import ArtifactCorrupt

MiB = 1 << 20


def _proc(pid: int, ppid: int, command: str, pages: int = 256, threads: int = 1) -> ProcessInfo:
    return ProcessInfo(
        pid=pid,
        ppid=ppid,
        pgid=100,
        sid=100,
        threads=threads,
        command=command,
        exe=f"/usr/bin/{command}",
        cwd="/srv",
        state="alive",
        memory_pages=pages,
        memory_bytes=pages * 4096,
        vmas=12,
    )


@pytest.fixture
def sample() -> Inspection:
    # Listed out of tree order on purpose: rendering must follow parentage.
    processes = (
        _proc(100, 0, "server", pages=16384, threads=4),
        _proc(102, 101, "grandchild"),
        _proc(101, 100, "worker"),
        _proc(103, 100, "<script>"),
    )
    files = (
        FileInfo(pid=100, fd=0, kind="file", description="/dev/null"),
        FileInfo(pid=100, fd=3, kind="file", description="/tmp/a&b.txt (deleted)"),
        FileInfo(pid=100, fd=4, kind="tcp", description="tcp 127.0.0.1:8080 LISTEN"),
        FileInfo(pid=101, fd=5, kind="pipe", description="pipe:[4242] (read end)"),
    )
    sockets = (
        SocketInfo(
            family="inet",
            type="stream",
            protocol="tcp",
            state="LISTEN",
            local="127.0.0.1:8080",
            remote="",
            inode=777,
        ),
        SocketInfo(
            family="unix",
            type="stream",
            state="ESTABLISHED",
            local="",
            remote="",
            inode=778,
            peer_inode=779,
        ),
    )
    pages = sum(p.memory_pages for p in processes)
    return Inspection(
        processes=processes,
        files=files,
        sockets=sockets,
        memory_pages=pages,
        memory_bytes=pages * 4096,
        images_bytes=70 * MiB,
    )


def test_to_dict_is_json_and_complete(sample: Inspection) -> None:
    """to_dict() survives a JSON round trip and carries every record and total."""
    data = json.loads(json.dumps(sample.to_dict()))
    assert [p["pid"] for p in data["processes"]] == [100, 102, 101, 103]
    assert data["processes"][0] == {
        "pid": 100,
        "ppid": 0,
        "pgid": 100,
        "sid": 100,
        "threads": 4,
        "command": "server",
        "exe": "/usr/bin/server",
        "cwd": "/srv",
        "state": "alive",
        "memory_pages": 16384,
        "memory_bytes": 64 * MiB,
        "vmas": 12,
    }
    assert data["files"][2] == {
        "pid": 100,
        "fd": 4,
        "kind": "tcp",
        "description": "tcp 127.0.0.1:8080 LISTEN",
    }
    assert data["sockets"][1]["peer_inode"] == 779
    assert data["threads"] == 7
    assert data["memory_pages"] == 17152
    assert data["memory_bytes"] == 17152 * 4096
    assert data["images_bytes"] == 70 * MiB
    assert data["skipped"] == []


def test_format_text_indents_the_tree_by_parentage(sample: Inspection) -> None:
    """The process table lists parents before children, each level indented further,
    with memory in human units."""
    lines = sample.format_text().splitlines()
    start = lines.index("Processes")
    table = lines[start + 1 : lines.index("", start)]
    assert table[0].split() == [
        "PID",
        "PPID",
        "THREADS",
        "MEMORY",
        "VMAS",
        "STATE",
        "COMMAND",
        "EXECUTABLE",
    ]
    rows = table[1:]
    assert [int(r.split()[0]) for r in rows] == [100, 101, 102, 103]
    column = table[0].index("COMMAND")
    commands = [r[column:].split("  /usr/bin")[0].rstrip() for r in rows]
    assert commands == ["server", "  \\_ worker", "      \\_ grandchild", "  \\_ <script>"]
    assert "64.0 MiB" in rows[0]
    assert "1.0 MiB" in rows[1]


def test_format_text_sections(sample: Inspection) -> None:
    """The text has a summary line, then open files per process and the sockets."""
    text = sample.format_text()
    first = text.splitlines()[0]
    assert first.startswith("4 processes, 7 threads, 67.0 MiB of memory (17,152 pages)")
    assert first.endswith("images 70.0 MiB")
    assert text.index("Processes") < text.index("Open files") < text.index("Sockets")
    files = text[text.index("Open files") : text.index("Sockets")]
    assert "/tmp/a&b.txt (deleted)" in files
    assert "pipe:[4242] (read end)" in files
    assert any(ln.split()[:3] == ["101", "worker", "5"] for ln in files.splitlines())
    sockets = text[text.index("Sockets") :]
    assert "127.0.0.1:8080" in sockets
    assert "(unnamed)" in sockets
    assert "inode 779" in sockets


def test_format_text_of_an_empty_inspection() -> None:
    """Sections with nothing in them say so instead of printing a bare header."""
    info = Inspection(
        processes=(_proc(1, 0, "init"),),
        files=(),
        sockets=(),
        memory_pages=256,
        memory_bytes=MiB,
        images_bytes=2048,
        skipped=("files.img: not a CRIU image pycriu can decode (bad magic)",),
    )
    text = info.format_text()
    assert text.count("(none)") == 2
    assert "images 2.0 KiB" in text
    assert "1 process, 1 thread," in text
    assert "files.img: not a CRIU image" in text


def test_repr_html_escapes_everything(sample: Inspection) -> None:
    """The notebook rendering is HTML tables in which every text is escaped: a command
    named <script> and a path with & in it come out as entities."""
    page = sample._repr_html_()
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "/tmp/a&amp;b.txt (deleted)" in page
    assert page.count("<table>") == 3
    assert page.startswith('<div class="cedana-inspection">')
    for command in ("server", "worker", "grandchild"):
        assert f">{command}</td>" in page
    # deeper in the tree, further indented
    assert page.index("padding-left:0.5em") < page.index("padding-left:2em")
    assert 'padding-left:3.5em">grandchild' in page


def test_repr_html_escapes_skipped_reasons() -> None:
    """Reasons for skipped images are escaped too."""
    info = Inspection(
        processes=(),
        files=(),
        sockets=(),
        memory_pages=0,
        memory_bytes=0,
        images_bytes=0,
        skipped=("core-1.img: <bad & broken>",),
    )
    page = info._repr_html_()
    assert "<bad" not in page
    assert html.escape("core-1.img: <bad & broken>") in page


# --- decoding, with a fake image loader --------------------------------------------------


def _words(packed: bytes) -> list[int]:
    """Addresses as CRIU stores them: the raw bytes read as native u32 words."""
    return [w for (w,) in struct.iter_unpack("=I", packed)]


@pytest.fixture
def fake_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Write placeholder files and serve their decoded form from a dict."""
    decoded: dict[str, dict[str, Any]] = {}

    def add(name: str, magic: str, entries: list[dict[str, Any]] | None) -> None:
        (tmp_path / name).write_bytes(b"x" * 10)
        if entries is not None:
            decoded[name] = {"magic": magic, "entries": entries}

    def fake_load(path: Path, *, payload: bool = False) -> dict[str, Any]:
        assert not payload
        if path.name not in decoded:
            raise ValueError(f"{path.name}: not a CRIU image pycriu can decode (bad magic)")
        return decoded[path.name]

    monkeypatch.setattr(inspect_mod, "load_image", fake_load)
    add.root = tmp_path  # type: ignore[attr-defined]
    return add


def test_decodes_legacy_socket_images(fake_images: Any) -> None:
    """Images from before files.img (inetsk.img, unixsk.img, reg-files.img) are read
    as a fallback, with IPv6 addresses and abstract unix names rendered."""
    lo6 = _words(socket.inet_pton(socket.AF_INET6, "::1"))
    fake_images("pstree.img", "PSTREE", [{"pid": 7, "ppid": 0, "pgid": 7, "sid": 7}])
    fake_images("ids-7.img", "IDS", [{"files_id": 3}])
    fake_images(
        "fdinfo-3.img",
        "FDINFO",
        [
            {"id": 1, "type": "INETSK", "fd": 4, "flags": 0},
            {"id": 2, "type": "UNIXSK", "fd": 5, "flags": 0},
            {"id": 3, "type": "REG", "fd": 6, "flags": 0},
            {"id": 9, "type": "SIGNALFD", "fd": 7, "flags": 0},
        ],
    )
    fake_images(
        "inetsk.img",
        "INETSK",
        [
            {
                "id": 1,
                "ino": 500,
                "family": 10,
                "type": 1,
                "proto": 6,
                "state": 1,
                "src_port": 8443,
                "dst_port": 40000,
                "src_addr": lo6,
                "dst_addr": lo6,
            }
        ],
    )
    fake_images(
        "unixsk.img",
        "UNIXSK",
        [{"id": 2, "ino": 600, "type": 2, "state": 7, "peer": 0, "name": "=00my-name"}],
    )
    fake_images("reg-files.img", "REG_FILES", [{"id": 3, "name": "/var/log/app.log"}])
    info = inspect_images(fake_images.root)

    descriptions = {f.fd: (f.kind, f.description) for f in info.files}
    assert descriptions[4] == ("tcp", "tcp [::1]:8443 -> [::1]:40000 ESTABLISHED")
    assert descriptions[5] == ("unix", "unix @my-name dgram CLOSE")
    assert descriptions[6] == ("file", "/var/log/app.log")
    assert descriptions[7] == ("signalfd", "signalfd (not described in the images)")
    assert [(s.family, s.local, s.inode) for s in info.sockets] == [
        ("inet6", "[::1]:8443", 500),
        ("unix", "@my-name", 600),
    ]


def test_decodes_files_memory_and_deleted_files(fake_images: Any) -> None:
    """files.img entries, remap-fpath ghost and linked remaps (flagged deleted), and the
    pagemap sum (header entry excluded) are decoded into the inspection."""
    lo = _words(socket.inet_aton("127.0.0.1"))
    fake_images(
        "pstree.img",
        "PSTREE",
        [
            {"pid": 10, "ppid": 0, "pgid": 10, "sid": 10, "threads": [10, 11]},
            {"pid": 12, "ppid": 10, "pgid": 10, "sid": 10, "threads": [12]},
        ],
    )
    fake_images("core-10.img", "CORE", [{"tc": {"comm": "srv", "task_state": 1}}])
    fake_images("core-12.img", "CORE", [{"tc": {"comm": "kid", "task_state": 6}}])
    fake_images("mm-10.img", "MM", [{"exe_file_id": 1, "vmas": [{}, {}, {}]}])
    fake_images("fs-10.img", "FS", [{"cwd_id": 5, "root_id": 6}])
    fake_images(
        "pagemap-10.img",
        "PAGEMAP",
        [
            {"pages_id": 1},
            {"vaddr": 4096, "nr_pages": 3, "flags": 4},
            {"vaddr": 65536, "compat_nr_pages": 5, "flags": 4},
        ],
    )
    fake_images("ids-10.img", "IDS", [{"files_id": 2}])
    fake_images("ids-12.img", "IDS", [{"files_id": 2}])  # shares the fd table
    fake_images(
        "fdinfo-2.img",
        "FDINFO",
        [
            {"id": 4, "type": "REG", "fd": 9},
            {"id": 2, "type": "REG", "fd": 3},
            {"id": 3, "type": "REG", "fd": 4},
            {"id": 7, "type": "INETSK", "fd": 5},
            {"id": 8, "type": "EVENTPOLL", "fd": 6},
            {"id": 9, "type": "NS", "fd": 7},
        ],
    )
    fake_images(
        "files.img",
        "FILES",
        [
            {"type": "REG", "id": 1, "reg": {"id": 1, "name": "/usr/bin/srv"}},
            {"type": "REG", "id": 2, "reg": {"id": 2, "name": "/tmp/ghost"}},
            {"type": "REG", "id": 3, "reg": {"id": 3, "name": "/tmp/linked"}},
            {"type": "REG", "id": 4, "reg": {"id": 4, "name": "/etc/hosts"}},
            {"type": "REG", "id": 5, "reg": {"id": 5, "name": "/srv"}},
            {
                "type": "INETSK",
                "id": 7,
                "isk": {
                    "id": 7,
                    "ino": 900,
                    "family": 2,
                    "type": 2,
                    "proto": 17,
                    "state": 7,
                    "src_port": 53,
                    "dst_port": 0,
                    "src_addr": lo,
                    "dst_addr": [0],
                },
            },
            {"type": "EVENTPOLL", "id": 8, "epfd": {"id": 8, "tfd": [{"tfd": 5}, {"tfd": 4}]}},
            {"type": "NS", "id": 9, "nsf": {"id": 9, "ns_cflag": 0x40000000}},
        ],
    )
    fake_images(
        "remap-fpath.img",
        "REMAP_FPATH",
        [
            {"orig_id": 2, "remap_id": 1, "remap_type": "GHOST"},
            {"orig_id": 3, "remap_id": 11},  # no remap_type: a linked remap
        ],
    )
    page = os.sysconf("SC_PAGE_SIZE")
    info = inspect_images(fake_images.root)

    srv, kid = info.processes
    assert (srv.command, srv.state, srv.threads, srv.vmas) == ("srv", "alive", 2, 3)
    assert (srv.exe, srv.cwd) == ("/usr/bin/srv", "/srv")
    assert (srv.memory_pages, srv.memory_bytes) == (8, 8 * page)
    assert (kid.command, kid.state, kid.memory_pages, kid.exe) == ("kid", "zombie", 0, "")
    assert (info.memory_pages, info.memory_bytes) == (8, 8 * page)
    assert info.images_bytes == 10 * len(list(fake_images.root.iterdir()))

    srv_files = [(f.fd, f.kind, f.description) for f in info.files if f.pid == 10]
    assert srv_files == [
        (3, "file", "/tmp/ghost (deleted)"),
        (4, "file", "/tmp/linked (deleted)"),
        (5, "udp", "udp 127.0.0.1:53"),
        (6, "epoll", "epoll (2 watched fds)"),
        (7, "other", "net namespace"),
        (9, "file", "/etc/hosts"),
    ]
    assert [f.fd for f in info.files if f.pid == 12] == [3, 4, 5, 6, 7, 9]
    assert info.skipped == ()


def test_undecodable_optional_images_are_skipped_and_listed(fake_images: Any) -> None:
    """An optional image that cannot be decoded, or holds the wrong kind of image, is
    skipped and listed; the inspection goes on."""
    fake_images("pstree.img", "PSTREE", [{"pid": 5, "ppid": 0, "pgid": 5, "sid": 5}])
    fake_images("core-5.img", "CORE", None)  # undecodable
    fake_images("mm-5.img", "PSTREE", [{"pid": 5}])  # wrong magic
    info = inspect_images(fake_images.root)
    (proc,) = info.processes
    assert (proc.pid, proc.command, proc.state, proc.vmas) == (5, "?", "unknown", 0)
    assert info.skipped == (
        "core-5.img: not a CRIU image pycriu can decode (bad magic)",
        "mm-5.img: holds a PSTREE image, not MM",
    )


def test_missing_pstree_raises(tmp_path: Path) -> None:
    """A directory without pstree.img is refused as not a CRIU images directory."""
    (tmp_path / "inventory.img").write_bytes(b"")
    with pytest.raises(ArtifactCorrupt, match="not a CRIU images directory"):
        inspect_images(tmp_path)


def test_undecodable_pstree_raises(fake_images: Any) -> None:
    """A pstree.img that does not decode makes the directory unusable, not half-shown."""
    fake_images("pstree.img", "PSTREE", None)
    with pytest.raises(ArtifactCorrupt, match="not a CRIU images directory"):
        inspect_images(fake_images.root)
