"""Process checkpoint/restore against real CRIU: each workload's state is checked after restore."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import blake3
import pytest
import zstandard

import cedana
from cedana import procfs
from cedana.artifact import signing
from tests.capabilities import integration, requires_tool
from tests.conftest import Workloads, reap_zombie_children, wait_for
from tests.helpers import popen_in_session, read_until, tmpfs

pytestmark = integration


def numbers(log: Path, prefix: str = "") -> list[int]:
    """The integers of lines starting with ``prefix`` (the last field of each)."""
    out = []
    for line in log.read_text().splitlines():
        if line.startswith(prefix) and line.split() and line.split()[-1].isdigit():
            out.append(int(line.split()[-1]))
    return out


def wait_count(log: Path, at_least: int, prefix: str = "", timeout: float = 20) -> None:
    wait_for(
        lambda: len(numbers(log, prefix)) >= at_least,
        timeout,
        f"{at_least} lines {prefix!r} in {log.name}",
    )


def assert_continues(log: Path, before: list[int], prefix: str = "", more: int = 5) -> None:
    """After restore, the lines go on from the last value before the checkpoint, by one."""
    wait_count(log, len(before) + more, prefix)
    after = numbers(log, prefix)[len(before) :]
    assert after[:more] == list(range(before[-1] + 1, before[-1] + 1 + more)), (before[-3:], after)


def assert_gone(pid: int) -> None:
    reap_zombie_children()
    try:
        wait_for(lambda: procfs.holder_of(pid) is None, 10, f"pid {pid} to go")
    except pytest.fail.Exception as exc:  # say who holds it: ours, or a reused pid
        pytest.fail(f"{exc}; held by {procfs.holder_of(pid)}")


COUNTER = """
    import time
    n = 0
    while True:
        n += 1
        print("count", n, flush=True)
        time.sleep(0.02)
"""


def test_counter_continues(workloads: Workloads, tmp_path: Path) -> None:
    """A counter held only in memory goes on from where it was, in the same pid."""
    proc, log = workloads.python(COUNTER)
    wait_count(log, 10)
    ckpt = proc.checkpoint(tmp_path / "c.tar.zst")
    assert not proc.running
    before = numbers(log)
    assert ckpt.manifest.tree[0].pid == proc.pid
    restored = cedana.restore(tmp_path / "c.tar.zst")
    workloads.track(restored.pid)
    assert restored.pid == proc.pid
    assert_continues(log, before)
    assert restored.running


def test_big_buffer_checksum_unchanged(workloads: Workloads, tmp_path: Path) -> None:
    """A 256 MiB buffer (128 MiB random, 128 MiB zeros) has the same sha256 after restore."""
    proc, log = workloads.python(
        """
        import hashlib, os, signal, time
        buf = bytearray(os.urandom(128 << 20)) + bytearray(128 << 20)
        buf[-1] = 7
        def report(*_):
            print("sum", hashlib.sha256(buf).hexdigest(), flush=True)
        signal.signal(signal.SIGUSR1, report)
        report()
        n = 0
        while True:
            n += 1
            print("tick", n, flush=True)
            time.sleep(0.05)
        """
    )
    wait_count(log, 2, "tick", timeout=60)
    original = [ln.split()[1] for ln in log.read_text().splitlines() if ln.startswith("sum")]
    proc.checkpoint(tmp_path / "big.tar.zst")
    restored = cedana.restore(tmp_path / "big.tar.zst")
    workloads.track(restored.pid)
    restored.signal(signal.SIGUSR1)
    wait_for(lambda: log.read_text().count("sum ") == 2, 30, "second checksum")
    sums = [ln.split()[1] for ln in log.read_text().splitlines() if ln.startswith("sum")]
    assert sums == original * 2


def test_process_tree_with_grandchild(workloads: Workloads, tmp_path: Path) -> None:
    """A parent, two children and a grandchild all come back, under their pids, and go on."""
    proc, log = workloads.python(
        """
        import os, time
        def count(role):
            n = 0
            while True:
                n += 1
                print(role, os.getpid(), n, flush=True)
                time.sleep(0.05)
        if os.fork() == 0:
            if os.fork() == 0:
                count("grandchild")
            count("child1")
        if os.fork() == 0:
            count("child2")
        count("parent")
        """
    )
    roles = ("parent", "child1", "child2", "grandchild")
    for role in roles:
        wait_count(log, 3, role)
    tree = proc.tree()
    assert len(tree) == 4
    ckpt = proc.checkpoint(tmp_path / "tree.tar.zst")
    assert {e.pid for e in ckpt.manifest.tree} == {p.pid for p in tree}
    before = {role: numbers(log, role) for role in roles}
    restored = cedana.restore(ckpt.path)
    workloads.track(restored.pid)
    assert {p.pid for p in restored.tree()} == {p.pid for p in tree}
    for role in roles:
        assert_continues(log, before[role], role, more=3)


def test_threads(workloads: Workloads, tmp_path: Path) -> None:
    """Each of several threads keeps its own counter going after restore."""
    proc, log = workloads.python(
        """
        import threading, time
        def count(name):
            n = 0
            while True:
                n += 1
                print(name, n, flush=True)
                time.sleep(0.03)
        for i in range(3):
            threading.Thread(target=count, args=(f"thread{i}",), daemon=True).start()
        count("main")
        """
    )
    names = ("main", "thread0", "thread1", "thread2")
    for name in names:
        wait_count(log, 3, name)
    proc.checkpoint(tmp_path / "t.tar.zst")
    before = {name: numbers(log, name) for name in names}
    restored = cedana.restore(tmp_path / "t.tar.zst")
    workloads.track(restored.pid)
    status = Path(f"/proc/{restored.pid}/status").read_text()
    assert "Threads:\t4" in status
    for name in names:
        assert_continues(log, before[name], name, more=3)


def test_pipe_between_processes(workloads: Workloads, tmp_path: Path) -> None:
    """A pipe from parent to child carries the sequence on, with nothing lost or repeated."""
    proc, log = workloads.python(
        """
        import os, time
        r, w = os.pipe()
        if os.fork() == 0:
            os.close(w)
            f = os.fdopen(r)
            for line in f:
                print("got", line.strip(), flush=True)
        os.close(r)
        n = 0
        while True:
            n += 1
            os.write(w, f"{n}\\n".encode())
            time.sleep(0.02)
        """
    )
    wait_count(log, 10, "got")
    proc.checkpoint(tmp_path / "p.tar.zst")
    before = numbers(log, "got")
    restored = cedana.restore(tmp_path / "p.tar.zst")
    workloads.track(restored.pid)
    assert_continues(log, before, "got")


def test_unix_socketpair(workloads: Workloads, tmp_path: Path) -> None:
    """A unix socketpair between parent and child keeps its ping-pong going."""
    proc, log = workloads.python(
        """
        import os, socket, time
        a, b = socket.socketpair()
        if os.fork() == 0:
            a.close()
            while True:
                n = int(b.recv(64))
                b.sendall(str(n + 1).encode())
        b.close()
        n = 0
        while True:
            a.sendall(str(n).encode())
            n = int(a.recv(64))
            print("pong", n, flush=True)
            time.sleep(0.02)
        """
    )
    wait_count(log, 10, "pong")
    proc.checkpoint(tmp_path / "u.tar.zst")
    before = numbers(log, "pong")
    restored = cedana.restore(tmp_path / "u.tar.zst")
    workloads.track(restored.pid)
    assert_continues(log, before, "pong")


TCP_ECHO = """
    import socket, time
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    n = 0
    while True:
        cli.sendall(f"{n}\\n".encode())
        n = int(conn.recv(64)) + 1
        conn.sendall(f"{n}\\n".encode())
        n = int(cli.recv(64))
        print("echo", n, flush=True)
        time.sleep(0.02)
"""


def test_established_tcp_on_loopback(workloads: Workloads, tmp_path: Path) -> None:
    """An established loopback TCP connection keeps carrying data after restore."""
    proc, log = workloads.python(TCP_ECHO)
    wait_count(log, 10, "echo")
    ckpt = proc.checkpoint(tmp_path / "tcp.tar.zst", tcp_established=True)
    assert ckpt.manifest.options["tcp_established"] is True
    before = numbers(log, "echo")
    restored = cedana.restore(tmp_path / "tcp.tar.zst")
    workloads.track(restored.pid)
    assert_continues(log, before, "echo")  # each line is one round trip over the connection


def test_established_tcp_without_option_is_refused_before_freezing(
    workloads: Workloads, tmp_path: Path
) -> None:
    """Without tcp_established the error names the option, and the workload never stopped."""
    proc, log = workloads.python(TCP_ECHO)
    wait_count(log, 5, "echo")
    with pytest.raises(cedana.NotCheckpointable, match="tcp_established=True"):
        proc.checkpoint(tmp_path / "tcp.tar.zst")
    assert proc.running
    assert not (tmp_path / "tcp.tar.zst").exists()
    n = len(numbers(log, "echo"))
    wait_count(log, n + 5, "echo")


def test_file_lock(workloads: Workloads, tmp_path: Path) -> None:
    """A lock held before the checkpoint is held by the restored process."""
    lockfile = tmp_path / "lock"
    lockfile.write_text("x")
    proc, log = workloads.python(
        f"""
        import fcntl, time
        f = open({str(lockfile)!r}, "r+")
        fcntl.lockf(f, fcntl.LOCK_EX)
        n = 0
        while True:
            n += 1
            print("locked", n, flush=True)
            time.sleep(0.05)
        """
    )
    wait_count(log, 3, "locked")
    proc.checkpoint(tmp_path / "l.tar.zst", file_locks=True)
    with open(lockfile, "r+") as f:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free while nobody runs
        fcntl.lockf(f, fcntl.LOCK_UN)
    restored = cedana.restore(tmp_path / "l.tar.zst")
    workloads.track(restored.pid)
    assert f" {restored.pid} " in Path("/proc/locks").read_text()
    with open(lockfile, "r+") as f, pytest.raises(OSError):
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_open_deleted_file(workloads: Workloads, tmp_path: Path) -> None:
    """An open file that was deleted still reads back its contents after restore."""
    proc, log = workloads.python(
        """
        import os, time
        f = open("scratch", "w+")
        f.write("precious")
        f.flush()
        os.unlink("scratch")
        n = 0
        while True:
            n += 1
            f.seek(0)
            print(f.read(), n, flush=True)
            time.sleep(0.05)
        """
    )
    wait_count(log, 3, "precious")
    proc.checkpoint(tmp_path / "d.tar.zst")
    before = numbers(log, "precious")
    restored = cedana.restore(tmp_path / "d.tar.zst")
    workloads.track(restored.pid)
    assert_continues(log, before, "precious", more=3)
    assert not (tmp_path / "scratch").exists()


def test_leave_running(workloads: Workloads, tmp_path: Path) -> None:
    """With leave_running the original goes on; once stopped, the copy restores at the checkpoint."""
    proc, log = workloads.python(COUNTER)
    wait_count(log, 5)
    low = numbers(log)[-1]
    proc.checkpoint(tmp_path / "lr.tar.zst", leave_running=True)
    high = numbers(log)[-1]  # the dump happened between low and high
    assert proc.running
    wait_count(log, len(numbers(log)) + 5)  # the original keeps counting
    proc.kill()
    assert_gone(proc.pid)
    mark = len(numbers(log))
    restored = cedana.restore(tmp_path / "lr.tar.zst")
    workloads.track(restored.pid)
    wait_count(log, mark + 3)
    first, *rest = numbers(log)[mark : mark + 3]
    assert low < first <= high + 1, "the copy resumes from the checkpoint, not from 1"
    assert rest == [first + 1, first + 2]


def test_ten_cycles(workloads: Workloads, tmp_path: Path) -> None:
    """Ten checkpoint/restore cycles in a row, the count continuing across all of them."""
    proc, log = workloads.python(COUNTER)
    wait_count(log, 3)
    current: cedana.Process = proc
    for i in range(10):
        path = tmp_path / f"cycle{i}.tar.zst"
        current.checkpoint(path)
        before = numbers(log)
        current = cedana.restore(path)
        workloads.track(current.pid)
        assert_continues(log, before, more=2)
    assert current.pid == proc.pid


def test_started_with_pipes_from_subprocess(workloads: Workloads, tmp_path: Path) -> None:
    """A child of this Python with pipes as stdio (not a session leader) restores, its output
    going to the file given at restore."""
    script = tmp_path / "piped.py"
    script.write_text(textwrap.dedent(COUNTER))
    popen, pid = popen_in_session(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    workloads.track(popen.pid)
    assert popen.stdout is not None
    first = read_until(popen.stdout.fileno(), b"count 3\n").splitlines()
    assert first[2].startswith(b"count")
    ckpt = cedana.Process(pid).checkpoint(tmp_path / "piped.tar.zst")
    popen.wait(10)
    assert ckpt.manifest.workload["shell_job"] is True
    assert {e["fd"] for e in ckpt.manifest.workload["external"]} == {0, 1, 2}
    out = tmp_path / "restored.out"
    restored = cedana.restore(ckpt.path, stdout=out)
    workloads.track(restored.pid)
    wait_count(out, 5)
    assert numbers(out)[0] > 3


# --- bad input ------------------------------------------------------------------------


def test_no_such_pid(tmp_path: Path) -> None:
    """A pid nobody has gives ProcessNotFound (a ProcessLookupError) and writes nothing."""
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while procfs.holder_of(pid) is not None:
        pid -= 1
    with pytest.raises(ProcessLookupError, match=str(pid)):
        cedana.Process(pid).checkpoint(tmp_path / "x.tar.zst")
    assert not list(tmp_path.iterdir())


def test_kernel_thread_is_refused(tmp_path: Path) -> None:
    """kthreadd (pid 2) is refused with a clear error."""
    with pytest.raises(cedana.NotCheckpointable, match="kernel thread"):
        cedana.Process(2).checkpoint(tmp_path / "k.tar.zst")


@requires_tool("unshare")
def test_session_led_from_outside_the_pid_namespace_is_refused(tmp_path: Path) -> None:
    """A process whose session leader is outside its pid namespace (sid 0, as under an init
    that never starts sessions) is refused before anything is frozen, naming the fix."""
    code = textwrap.dedent(
        """
        import subprocess, sys, cedana
        child = subprocess.Popen(["sleep", "60"])
        try:
            cedana.Process(child.pid).checkpoint(sys.argv[1])
        except cedana.NotCheckpointable as exc:
            print(exc)
            sys.exit(3 if child.poll() is None else 4)
        finally:
            child.kill()
        """
    )
    out = tmp_path / "x.tar.zst"
    result = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code, str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "outside this pid namespace" in result.stdout
    assert "start_new_session=True" in result.stdout
    assert not out.exists()


#: Imports as root what the code run as nobody needs (nobody cannot read this interpreter's
#: tree), then drops to nobody and runs it.
_AS_NOBODY = """
import os, sys
import cedana, cedana.artifact, pycriu.images, pycriu.rpc_pb2
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
exec(sys.argv.pop(1))
"""


def as_nobody(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run python ``code`` as the unprivileged user nobody, in a fresh interpreter (forking
    this threaded one could deadlock the child on a lock another thread held)."""
    return subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_not_root_is_refused(workloads: Workloads, tmp_path: Path) -> None:
    """An unprivileged caller gets NotPermitted; the workload is untouched."""
    proc, log = workloads.python(COUNTER)
    wait_count(log, 3)
    code = textwrap.dedent(
        """
        import sys, cedana
        try:
            cedana.Process(int(sys.argv[1])).checkpoint(sys.argv[2])
        except cedana.NotPermitted as exc:
            print(exc)
            sys.exit(42)
        """
    )
    result = as_nobody(code, str(proc.pid), str(tmp_path / "nr.tar.zst"))
    assert result.returncode == 42, result.stdout + result.stderr
    assert proc.running
    assert not (tmp_path / "nr.tar.zst").exists()


@pytest.fixture
def good_checkpoint(workloads: Workloads, tmp_path: Path) -> tuple[Path, int, Path]:
    proc, log = workloads.python(COUNTER)
    wait_count(log, 3)
    path = tmp_path / "good.tar.zst"
    proc.checkpoint(path)
    assert_gone(proc.pid)
    return path, proc.pid, log


def _rewrite(src: Path, dest: Path, extra: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    raw = zstandard.ZstdDecompressor().stream_reader(src.open("rb")).read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tin, tarfile.open(fileobj=buf, mode="w") as tout:
        for m in tin.getmembers():
            tout.addfile(m, tin.extractfile(m))
        for info, data in extra:
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    dest.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))


def _assert_refused(path: Path, pid: int, error: type[Exception], **options: Any) -> None:
    with pytest.raises(error):
        cedana.restore(path, **options)
    assert procfs.holder_of(pid) is None, "nothing may be restored from a bad artifact"


def test_truncated_artifact_restores_nothing(good_checkpoint, tmp_path: Path) -> None:
    """A truncated artifact is refused before CRIU runs; the good one still restores."""
    path, pid, _ = good_checkpoint
    data = path.read_bytes()
    bad = tmp_path / "truncated.tar.zst"
    bad.write_bytes(data[: len(data) // 2])
    _assert_refused(bad, pid, cedana.ArtifactCorrupt)
    restored = cedana.restore(path)
    assert restored.pid == pid
    restored.kill()


def test_flipped_byte_restores_nothing(good_checkpoint, tmp_path: Path) -> None:
    """One flipped byte anywhere past the manifest is caught; nothing is restored."""
    path, pid, _ = good_checkpoint
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0x01
    bad = tmp_path / "flipped.tar.zst"
    bad.write_bytes(bytes(data))
    _assert_refused(bad, pid, cedana.ArtifactError)


def _as_format_2(src: Path, dest: Path) -> None:
    """Rewrite a checkpoint as cedana wrote them in format version 2: the manifest first
    with sha256 digests, signed by this host's key, then the members, zstd-compressed."""
    ckpt = cedana.open(src)
    members = {}
    for member in ckpt.manifest.members:
        members[member.name] = ckpt.read_member(member.name)
    old = attrs.evolve(
        ckpt.manifest,
        format_version=2,
        members=tuple(
            cedana.artifact.Member(
                name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest()
            )
            for name, data in sorted(members.items())
        ),
    )
    body = old.to_json()
    signature = signing.signing_key(None).sign(body).to_json()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [
            ("manifest.json", body),
            ("manifest.sig", signature),
            *sorted(members.items()),
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    dest.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(out.getvalue()))


def test_format_2_checkpoint_still_restores(workloads: Workloads, tmp_path: Path) -> None:
    """A checkpoint in format version 2 (sha256 digests, members sorted after the
    manifest) opens, verifies and restores; its counter goes on."""
    proc, log = workloads.python(COUNTER)
    wait_count(log, 3)
    new = tmp_path / "v3.tar.zst"
    proc.checkpoint(new)
    assert_gone(proc.pid)
    old = tmp_path / "v2.tar.zst"
    _as_format_2(new, old)
    opened = cedana.open(old)  # verifies every member's sha256
    assert opened.manifest.format_version == 2
    assert all(m.algorithm == "sha256" for m in opened.manifest.members)
    n = len(numbers(log))
    restored = cedana.restore(old)
    try:
        wait_count(log, n + 3)
    finally:
        restored.kill()


@pytest.mark.parametrize("leave_running", [True, False])
def test_checkpoint_reports_criu_dump_stats(
    workloads: Workloads, tmp_path: Path, leave_running: bool
) -> None:
    """The checkpoint a call returns carries CRIU's own account of the dump (how long the
    tree was frozen, the pages written), in both modes, and its summary lists it."""
    proc, log = workloads.python(COUNTER)
    wait_count(log, 3)
    ckpt = proc.checkpoint(tmp_path / "s.tar.zst", leave_running=leave_running)
    stats = ckpt.dump_stats
    assert stats is not None
    assert stats["frozen_time"] > 0 and stats["pages_written"] > 0
    assert ckpt.summary()["dump_stats"] == stats
    assert cedana.open(ckpt.path).dump_stats is None  # not a fact of the file
    if leave_running:
        proc.kill()


def test_damaged_page_member_restores_nothing(good_checkpoint, tmp_path: Path) -> None:
    """A page member whose bytes changed inside a well-formed zstd stream (the frames' own
    checksums recomputed, as a rewrite would) is caught by its BLAKE3 digest while being
    unpacked, before CRIU runs; nothing is restored and the unpack dir is gone."""
    path, pid, _ = good_checkpoint
    raw = zstandard.ZstdDecompressor().stream_reader(path.open("rb"), read_across_frames=True)
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(raw.read())) as tin,
        tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tout,
    ):
        for m in tin.getmembers():
            data = bytearray(tin.extractfile(m).read())  # type: ignore[union-attr]
            if m.name.startswith("pages-"):
                data[len(data) // 2] ^= 0x01
            tout.addfile(m, io.BytesIO(bytes(data)))
    bad = tmp_path / "pages-damaged.tar.zst"
    bad.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(buf.getvalue()))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(cedana.ArtifactCorrupt, match=r"pages-\d+\.img' does not match its blake3"):
        cedana.restore(bad, work_dir=work)
    assert procfs.holder_of(pid) is None, "nothing may be restored from a bad artifact"
    assert list(work.iterdir()) == []


def test_added_member_restores_nothing(good_checkpoint, tmp_path: Path) -> None:
    """A member not in the manifest is refused."""
    path, pid, _ = good_checkpoint
    bad = tmp_path / "added.tar.zst"
    _rewrite(path, bad, [(tarfile.TarInfo("extra.img"), b"sneaky")])
    _assert_refused(bad, pid, cedana.ArtifactCorrupt)


def test_path_traversal_member_restores_nothing(good_checkpoint, tmp_path: Path) -> None:
    """A member that would land outside the images directory is refused, and not written."""
    path, pid, _ = good_checkpoint
    bad = tmp_path / "traversal.tar.zst"
    _rewrite(path, bad, [(tarfile.TarInfo("../../escaped"), b"x")])
    work = tmp_path / "work"  # images unpack to work/.cedana-restore-*/images
    work.mkdir()
    _assert_refused(bad, pid, cedana.UnsafeArtifact, work_dir=work)
    assert not (tmp_path.parent / "escaped").exists()
    assert not (work / "escaped").exists()
    assert list(work.iterdir()) == [], "the refused restore leaves no scratch behind"


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "8m") as mnt:
        yield mnt


BIG_RANDOM = """
    import os, time
    buf = os.urandom(48 << 20)
    n = 0
    while True:
        n += 1
        print("count", n, flush=True)
        time.sleep(0.02)
"""


@pytest.mark.parametrize("stage_on_small", [False, True], ids=["artifact-full", "images-full"])
def test_full_filesystem_leaves_workload_running(
    workloads: Workloads, small_tmpfs: Path, tmp_path: Path, stage_on_small: bool
) -> None:
    """ENOSPC while writing the artifact (or CRIU's images) is a NoSpace (a CedanaError and
    an OSError with errno ENOSPC) naming the path, what filled it and what to do; the
    workload keeps running, thawed, and nothing is left on the full filesystem."""
    proc, log = workloads.python(BIG_RANDOM)
    wait_count(log, 3)
    dest = small_tmpfs / "full.tar.zst"
    filler = small_tmpfs / "filler"
    if stage_on_small:  # the pages go to the artifact: fill the images' disk beforehand
        dest = tmp_path / "full.tar.zst"
        with filler.open("wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(bytes(1 << 20))
                f.flush()
    with pytest.raises(cedana.NoSpace) as info:
        proc.checkpoint(dest, work_dir=small_tmpfs if stage_on_small else None)
    filler.unlink(missing_ok=True)
    assert not dest.exists()
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert message.startswith(f"no space left on device in {small_tmpfs}: ")
    if stage_on_small:
        assert "CRIU's images" in message and "work_dir=" in message
        # CRIU's own image writes, or the pagemaps the page server writes, ran out first.
        assert isinstance(info.value.__cause__, cedana.DumpFailed | OSError)
    else:
        assert f"the artifact {dest} filled its filesystem" in message
        assert "write the checkpoint to another destination" in message
    assert proc.running
    assert procfs.proc_info(proc.pid).state != "T"
    n = len(numbers(log))
    wait_count(log, n + 5)  # still counting: not frozen
    assert list(small_tmpfs.iterdir()) == []


@requires_tool("tar", "zstd")
def test_artifact_is_listable_and_private(workloads: Workloads, tmp_path: Path) -> None:
    """`tar --zstd -tf` lists the artifact with manifest.json first; the file is 0600."""
    proc, log = workloads.python(COUNTER)
    wait_count(log, 3)
    path = tmp_path / "l.tar.zst"
    ckpt = proc.checkpoint(path, leave_running=True)
    names = subprocess.run(
        ["tar", "--zstd", "-tf", str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert names[0] == "manifest.json"
    assert "pstree.img" in names
    assert path.stat().st_mode & 0o777 == 0o600
    opened = cedana.open(path)
    assert opened.manifest == ckpt.manifest
    member = opened.manifest.members[0]
    assert member.blake3 is not None and len(member.blake3) == 64
    assert blake3.blake3(opened.read_member(member.name)).hexdigest() == member.blake3
    info = opened.inspect()
    assert info.processes[0].pid == proc.pid


def test_pid_in_use_names_the_holder(workloads: Workloads, tmp_path: Path) -> None:
    """Restoring while the original still runs fails with PidInUse naming who holds the pid."""
    proc, log = workloads.python(COUNTER)
    wait_count(log, 3)
    proc.checkpoint(tmp_path / "p.tar.zst", leave_running=True)
    with pytest.raises(cedana.PidInUse, match=f"pid {proc.pid}"):
        cedana.restore(tmp_path / "p.tar.zst")
    assert proc.running


def test_terminal_job(workloads: Workloads, tmp_path: Path) -> None:
    """A process on a terminal is dumped as a shell job; restoring without a terminal is a
    clear error, and restoring from a terminal continues it on that terminal."""
    import pty

    script = tmp_path / "tty.py"
    script.write_text(textwrap.dedent(COUNTER))
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the workload
        os.execv(sys.executable, [sys.executable, str(script)])
    workloads.track(pid)
    assert b"count 5" in read_until(master, b"count 5")
    ckpt = cedana.Process(pid).checkpoint(tmp_path / "tty.tar.zst")
    assert ckpt.manifest.workload["terminal"] is True
    os.close(master)
    assert_gone(pid)
    with pytest.raises(cedana.RestoreFailed, match="terminal"):
        cedana.restore(ckpt.path)
    assert procfs.holder_of(pid) is None
    restorer, term = pty.fork()
    if restorer == 0:  # pragma: no cover - restores from its own terminal, in a fresh
        # interpreter (this one's other threads may hold locks a forked child would wait on)
        code = "import sys, cedana; cedana.restore(sys.argv[1])"
        os.execv(sys.executable, [sys.executable, "-c", code, str(ckpt.path)])
    out = read_until(term, b"\n", timeout=15)
    out += read_until(term, b"count", timeout=15)
    _, status = os.waitpid(restorer, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out  # a failed restore's traceback
    assert procfs.holder_of(pid) is not None
    assert b"count" in out
    out += read_until(term, b"\n", timeout=15)
    resumed = [int(n) for n in re.findall(rb"count (\d+)", out)]
    assert resumed, out
    assert resumed[0] > 5, "it went on from its count at the checkpoint, not from 1"
    os.close(term)


def test_inspect_needs_no_root(workloads: Workloads, tmp_path: Path) -> None:
    """The owner of an artifact inspects it without root: an unprivileged user reads the
    process tree, memory and files from a checkpoint it owns."""
    import shutil
    import tempfile

    proc, log = workloads.python(COUNTER)
    wait_count(log, 3)
    ckpt = proc.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    shared = Path(tempfile.mkdtemp(prefix="cedana-inspect-test-"))
    try:
        shared.chmod(0o755)
        mine = shared / "c.tar.zst"
        shutil.copyfile(ckpt.path, mine)
        os.chown(mine, 65534, 65534)
        mine.chmod(0o600)
        code = textwrap.dedent(
            """
            import sys, cedana
            # root's key signed it, which this user does not trust; inspecting runs nothing
            info = cedana.open(sys.argv[1], trust="any").inspect()
            fds = sorted(f.fd for f in info.files if f.pid == info.processes[0].pid)
            print(info.processes[0].pid, info.memory_bytes, fds[:3])
            """
        )
        result = as_nobody(code, str(mine))
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout.strip()
        pid, memory, files = out.split(maxsplit=2)
        assert files == "[0, 1, 2]", "stdin, stdout and stderr are among its open files"
        assert int(pid) == proc.pid
        assert int(memory) > 1 << 20
    finally:
        shutil.rmtree(shared, ignore_errors=True)
