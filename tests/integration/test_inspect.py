"""Inspecting real CRIU dumps: each test starts a workload, dumps it with the ``criu``
command line (leaving it running), and checks what :func:`inspect_images` reads back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cedana.artifact import FileInfo, Inspection, inspect_images
from cedana.errors import ArtifactCorrupt
from tests.capabilities import criu_binary, integration

pytestmark = integration

MiB = 1 << 20

# Every workload script starts with this: ready() publishes what the test must know
# (fds, ports, paths) atomically, then parks the process.
PRELUDE = """
import json, os, sys, time
WORK = sys.argv[2]
def ready(**info):
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.rename(tmp, sys.argv[1])
    while True:
        time.sleep(3600)
"""


Workload = Callable[[str], tuple[int, dict[str, Any]]]


@pytest.fixture
def workload(tmp_path: Path) -> Iterator[Workload]:
    """Start Python workloads in their own sessions; kill and reap them afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    work = tmp_path / "work"
    work.mkdir()

    def start(script: str) -> tuple[int, dict[str, Any]]:
        ready = tmp_path / f"ready-{len(procs)}.json"
        proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(script), str(ready), str(work)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(proc)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None:
                pytest.fail(f"workload exited early with status {proc.returncode}")
            if time.monotonic() > deadline:
                pytest.fail("workload did not become ready within 30s")
            time.sleep(0.05)
        return proc.pid, json.loads(ready.read_text())

    try:
        yield start
    finally:
        for proc in procs:
            # The workload leads its own process group: this takes its children too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def dump(tmp_path: Path) -> Callable[..., Path]:
    """Dump a running tree with the criu CLI, leaving it running; return the images dir."""
    counter = iter(range(1000))

    def run(pid: int, *extra: str) -> Path:
        images = tmp_path / f"images-{next(counter)}"
        images.mkdir()
        criu = criu_binary()
        assert criu is not None  # requires_criu
        cmd = [criu, "dump", "-t", str(pid), "-D", str(images), "--leave-running"]
        cmd += ["-o", "dump.log", "-v4", *extra]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            log = (images / "dump.log").read_text(errors="replace").splitlines()[-20:]
            pytest.fail(f"criu dump failed ({result.returncode}):\n" + "\n".join(log))
        return images

    return run


def _fd(info: Inspection, pid: int, fd: int) -> FileInfo:
    matches = [f for f in info.files if f.pid == pid and f.fd == fd]
    assert len(matches) == 1, f"fd {fd} of {pid} not found once in {info.files}"
    return matches[0]


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_memory_of_a_64mib_buffer(workload: Workload, dump: Callable[..., Path]) -> None:
    """A process holding 64 MiB of written memory shows >= 64 MiB from its pagemap,
    with its comm, executable, state and mappings read from the images."""
    pid, _ = workload(
        """
        buf = b"\\x01" * (64 << 20)
        ready()
        """
    )
    images = dump(pid)
    info = inspect_images(images)

    (proc,) = info.processes
    assert proc.pid == pid
    assert proc.memory_bytes >= 64 * MiB
    assert proc.memory_bytes == proc.memory_pages * os.sysconf("SC_PAGE_SIZE")
    assert info.memory_bytes == proc.memory_bytes
    assert info.memory_pages == proc.memory_pages
    assert info.images_bytes >= 64 * MiB  # the pages themselves are in the directory
    assert proc.command == _comm(pid)
    assert proc.exe == os.readlink(f"/proc/{pid}/exe")
    assert proc.state == "alive"
    assert proc.vmas > 10
    assert proc.threads == 1
    assert (proc.pgid, proc.sid) == (pid, pid)
    assert info.skipped == ()
    json.dumps(info.to_dict())


def test_process_tree(workload: Workload, dump: Callable[..., Path]) -> None:
    """A parent with two children is decoded as a tree: parentage, group and session,
    and each child's own command."""
    pid, data = workload(
        """
        import subprocess
        kids = [subprocess.Popen(["sleep", "1000"]) for _ in range(2)]
        ready(kids=[k.pid for k in kids])
        """
    )
    info = inspect_images(dump(pid))

    by_pid = {p.pid: p for p in info.processes}
    assert set(by_pid) == {pid, *data["kids"]}
    assert by_pid[pid].ppid == 0  # CRIU records the root of the tree without a parent
    for kid in data["kids"]:
        assert by_pid[kid].ppid == pid
        assert by_pid[kid].command == "sleep"
        assert (by_pid[kid].pgid, by_pid[kid].sid) == (pid, pid)
        assert by_pid[kid].memory_pages > 0
    assert info.memory_pages == sum(p.memory_pages for p in info.processes)


def test_threads(workload: Workload, dump: Callable[..., Path]) -> None:
    """A process with three extra threads is counted as four threads."""
    pid, _ = workload(
        """
        import threading
        for _ in range(3):
            threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
        ready()
        """
    )
    info = inspect_images(dump(pid))
    assert [p.threads for p in info.processes] == [4]
    assert info.threads == 4


def test_regular_and_deleted_files(workload: Workload, dump: Callable[..., Path]) -> None:
    """An open regular file shows its path; an open file that was unlinked shows its
    path flagged "(deleted)"."""
    pid, data = workload(
        """
        kept = open(os.path.join(WORK, "kept.txt"), "w")
        kept.write("hello")
        kept.flush()
        gone_path = os.path.join(WORK, "gone.txt")
        gone = open(gone_path, "w")
        gone.write("bye")
        gone.flush()
        os.unlink(gone_path)
        ready(kept=kept.fileno(), gone=gone.fileno(), work=WORK)
        """
    )
    info = inspect_images(dump(pid))
    work = data["work"]

    kept = _fd(info, pid, data["kept"])
    assert (kept.kind, kept.description) == ("file", f"{work}/kept.txt")
    gone = _fd(info, pid, data["gone"])
    assert (gone.kind, gone.description) == ("file", f"{work}/gone.txt (deleted)")
    assert _fd(info, pid, 0).description == "/dev/null"


def test_pipe(workload: Workload, dump: Callable[..., Path]) -> None:
    """Both ends of a pipe show as pipe:[ino] with the kernel's pipe inode."""
    pid, data = workload(
        """
        r, w = os.pipe()
        ready(r=r, w=w)
        """
    )
    link = os.readlink(f"/proc/{pid}/fd/{data['r']}")  # "pipe:[12345]"
    info = inspect_images(dump(pid))

    read_end, write_end = _fd(info, pid, data["r"]), _fd(info, pid, data["w"])
    assert read_end.kind == write_end.kind == "pipe"
    assert read_end.description == f"{link} (read end)"
    assert write_end.description == f"{link} (write end)"


def test_unix_sockets(workload: Workload, dump: Callable[..., Path]) -> None:
    """A socketpair shows two unnamed connected unix sockets, each naming the other as
    its peer; a bound listening unix socket shows its path."""
    pid, data = workload(
        """
        import socket
        a, b = socket.socketpair()
        path = os.path.join(WORK, "srv.sock")
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen()
        ready(a=a.fileno(), b=b.fileno(), srv=srv.fileno(), path=path)
        """
    )
    inodes = {
        name: int(os.readlink(f"/proc/{pid}/fd/{data[name]}")[len("socket:[") : -1])
        for name in ("a", "b", "srv")
    }
    info = inspect_images(dump(pid))

    for name in ("a", "b"):
        f = _fd(info, pid, data[name])
        assert f.kind == "unix"
        assert f.description.startswith("unix (unnamed) stream ESTABLISHED")
    socks = {s.inode: s for s in info.sockets}
    a, b = socks[inodes["a"]], socks[inodes["b"]]
    assert (a.family, a.type, a.state, a.local) == ("unix", "stream", "ESTABLISHED", "")
    assert (a.peer_inode, b.peer_inode) == (inodes["b"], inodes["a"])
    srv = socks[inodes["srv"]]
    assert (srv.state, srv.local) == ("LISTEN", data["path"])
    assert _fd(info, pid, data["srv"]).description == f"unix {data['path']} stream LISTEN"


def test_listening_tcp_socket(workload: Workload, dump: Callable[..., Path]) -> None:
    """A listening TCP socket shows "tcp 127.0.0.1:PORT LISTEN" and as a socket entry."""
    pid, data = workload(
        """
        import socket
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        ready(fd=srv.fileno(), port=srv.getsockname()[1])
        """
    )
    info = inspect_images(dump(pid))

    port = data["port"]
    f = _fd(info, pid, data["fd"])
    assert (f.kind, f.description) == ("tcp", f"tcp 127.0.0.1:{port} LISTEN")
    (sock,) = info.sockets
    assert (sock.family, sock.type, sock.protocol) == ("inet", "stream", "tcp")
    assert (sock.state, sock.local, sock.remote) == ("LISTEN", f"127.0.0.1:{port}", "")


def test_established_tcp_connection(workload: Workload, dump: Callable[..., Path]) -> None:
    """Both ends of an established loopback connection (dumped with --tcp-established)
    show local -> remote addresses and ESTABLISHED."""
    pid, data = workload(
        """
        import socket
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        client = socket.create_connection(srv.getsockname())
        server_side, _ = srv.accept()
        ready(
            client=client.fileno(),
            server=server_side.fileno(),
            port=srv.getsockname()[1],
            client_port=client.getsockname()[1],
        )
        """
    )
    info = inspect_images(dump(pid, "--tcp-established"))

    port, cport = data["port"], data["client_port"]
    client = _fd(info, pid, data["client"])
    assert client.kind == "tcp"
    assert client.description == f"tcp 127.0.0.1:{cport} -> 127.0.0.1:{port} ESTABLISHED"
    server = _fd(info, pid, data["server"])
    assert server.description == f"tcp 127.0.0.1:{port} -> 127.0.0.1:{cport} ESTABLISHED"
    states = sorted(s.state for s in info.sockets)
    assert states == ["ESTABLISHED", "ESTABLISHED", "LISTEN"]


def test_renderings_mention_the_commands(workload: Workload, dump: Callable[..., Path]) -> None:
    """format_text() and _repr_html_() of a real tree name every process and its command,
    with the children indented under their parent in the text."""
    pid, data = workload(
        """
        import subprocess
        kids = [subprocess.Popen(["sleep", "1000"]) for _ in range(2)]
        ready(kids=[k.pid for k in kids])
        """
    )
    info = inspect_images(dump(pid))
    root_comm = _comm(pid)

    text = info.format_text()
    lines = text.splitlines()
    root_line = next(ln for ln in lines if ln.lstrip().startswith(f"{pid} "))
    assert root_comm in root_line
    for kid in data["kids"]:
        kid_line = next(ln for ln in lines if ln.lstrip().startswith(f"{kid} "))
        assert "\\_ sleep" in kid_line
        assert lines.index(kid_line) > lines.index(root_line)
    assert "Open files" in text
    assert "/dev/null" in text

    page = info._repr_html_()
    assert page.count("<table>") >= 2
    process_table = page.split("<h4>Open files</h4>")[0]
    assert f">{root_comm}<" in process_table
    assert process_table.count(">sleep<") == 2


def test_undecodable_optional_images_are_skipped(
    workload: Workload, dump: Callable[..., Path]
) -> None:
    """A garbled files.img and a missing core image do not stop the inspection: the tree
    and memory are still shown, and the garbled image is listed as skipped."""
    pid, _ = workload("ready()\n")
    images = dump(pid)
    (images / "files.img").write_bytes(b"\x00garbage, not an image\xff" * 8)
    (images / f"core-{pid}.img").unlink()

    info = inspect_images(images)
    (proc,) = info.processes
    assert proc.pid == pid
    assert proc.memory_pages > 0
    assert proc.command == "?"
    assert proc.state == "unknown"
    assert [s.split(":")[0] for s in info.skipped] == ["files.img"]
    assert "files.img" in info.format_text()
    assert {f.description for f in info.files} == {"reg (not described in the images)"}


def test_missing_pstree_is_not_an_images_directory(
    workload: Workload, dump: Callable[..., Path]
) -> None:
    """Without pstree.img a dump directory is refused as not a CRIU images directory."""
    pid, _ = workload("ready()\n")
    images = dump(pid)
    (images / "pstree.img").unlink()
    with pytest.raises(ArtifactCorrupt, match="not a CRIU images directory"):
        inspect_images(images)
