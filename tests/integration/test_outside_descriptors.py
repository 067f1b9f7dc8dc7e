"""Descriptors that lead outside the tree, with real CRIU: every checkpoint that kills its
workload restores it, and nothing buffered in the tree's own pipes is lost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import cedana
from cedana import procfs
from tests.capabilities import integration
from tests.conftest import Workloads, reap_zombie_children, wait_for
from tests.helpers import read_until

pytestmark = integration

#: A parent and three children, each printing "NAME N" with N counting up from 1.
FAMILY = """
    import os, sys, time
    def count(name, stream):
        n = 0
        while True:
            n += 1
            print(name, n, file=stream, flush=True)
            time.sleep(0.05)
    for i in range(3):
        if os.fork() == 0:
            count(f"child{i}", sys.stdout)
    count("parent", sys.stdout)
"""

#: One process printing "out N" to stdout and "err N" to stderr; with an argument, also
#: "dup N" to fd 5, a copy of stdout.
OUT_AND_ERR = """
    import os, sys, time
    dup = os.fdopen(os.dup2(1, 5), "w") if len(sys.argv) > 1 else None
    n = 0
    while True:
        n += 1
        print("out", n, flush=True)
        print("err", n, file=sys.stderr, flush=True)
        if dup:
            print("dup", n, file=dup, flush=True)
        time.sleep(0.05)
"""


def script(tmp: Path, code: str) -> Path:
    path = tmp / "workload.py"
    path.write_text(textwrap.dedent(code))
    return path


def start(argv: list[str], workloads: Workloads, **popen: Any) -> subprocess.Popen[bytes]:
    """``argv`` as our child in a session of its own, with the stdio given."""
    p: subprocess.Popen[bytes] = subprocess.Popen(argv, start_new_session=True, **popen)
    workloads.track(p.pid)
    return p


def names_counting(log: Path) -> dict[str, list[int]]:
    """Each name's numbers in a log of "NAME N" lines."""
    out: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        name, _, n = line.partition(" ")
        if n.isdigit():
            out.setdefault(name, []).append(int(n))
    return out


def wait_names(log: Path, names: set[str], past: int = 0) -> dict[str, list[int]]:
    """Wait until every name of ``names`` printed a number above ``past``."""

    def seen() -> bool:
        counts = names_counting(log)
        return all(counts.get(n) and max(counts[n]) > past for n in names)

    wait_for(seen, 20, f"{sorted(names)} past {past} in {log.name}")
    return names_counting(log)


def killed(popen: subprocess.Popen[bytes], tree: list[int]) -> None:
    """Wait until the checkpointed tree is gone and its pids are free again."""
    popen.wait(10)
    reap_zombie_children()
    for pid in tree:
        wait_for(lambda: procfs.holder_of(pid) is None, 10, f"pid {pid} to go")  # noqa: B023


def out_and_err_checkpoint(
    workloads: Workloads, tmp_path: Path, *args: str, stderr: int, until: bytes
) -> cedana.Checkpoint:
    """OUT_AND_ERR with stdout a pipe to this process (stderr as given), checkpointed once
    it printed ``until``; returns once the killed process's pid is free again."""
    p = start(
        [sys.executable, str(script(tmp_path, OUT_AND_ERR)), *args],
        workloads,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    assert p.stdout is not None
    read_until(p.stdout.fileno(), until)
    ckpt = cedana.Process(p.pid).checkpoint(tmp_path / "out-and-err.tar.zst")
    killed(p, [p.pid])
    return ckpt


def test_family_sharing_one_outside_pipe(workloads: Workloads, tmp_path: Path) -> None:
    """A parent and three children whose stdout and stderr are one pipe to this process
    (``Popen(stdout=PIPE, stderr=STDOUT)``): the checkpoint records the pipe once per holder,
    and all four restore, writing to the file given as stdout."""
    p = start(
        [sys.executable, str(script(tmp_path, FAMILY))],
        workloads,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert p.stdout is not None
    read_until(p.stdout.fileno(), b"child2 2")
    tree = [info.pid for info in procfs.tree(p.pid)]
    assert len(tree) == 4
    ckpt = cedana.Process(p.pid).checkpoint(tmp_path / "family.tar.zst")
    external = ckpt.manifest.workload["external"]
    assert {(e["pid"], e["fd"]) for e in external} == {(pid, fd) for pid in tree for fd in (1, 2)}
    assert len({e["key"] for e in external}) == 1
    killed(p, tree)
    out = tmp_path / "restored.out"
    restored = cedana.restore(ckpt.path, stdout=out)
    workloads.track(restored.pid)
    assert sorted(info.pid for info in restored.tree()) == sorted(tree)
    wait_names(out, {"parent", "child0", "child1", "child2"}, past=2)


def test_stdout_and_stderr_one_pipe(workloads: Workloads, tmp_path: Path) -> None:
    """A process whose stdout and stderr are one pipe restores onto one file object given as
    both stdout and stderr."""
    ckpt = out_and_err_checkpoint(workloads, tmp_path, stderr=subprocess.STDOUT, until=b"err 2")
    out = tmp_path / "out.log"
    with open(out, "ab") as f:
        restored = cedana.restore(ckpt.path, stdout=f, stderr=f)
    workloads.track(restored.pid)
    counts = wait_names(out, {"out", "err"}, past=2)
    assert min(counts["out"]) > 2, "it went on from where it was"


def test_one_pipe_goes_to_one_destination(workloads: Workloads, tmp_path: Path) -> None:
    """One pipe at stdout and stderr stays one pipe: given separate stdout and stderr at
    restore, both streams go to the stdout given (the pipe's lowest fd decides)."""
    ckpt = out_and_err_checkpoint(workloads, tmp_path, stderr=subprocess.STDOUT, until=b"err 2")
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    restored = cedana.restore(ckpt.path, stdout=out, stderr=err)
    workloads.track(restored.pid)
    wait_names(out, {"out", "err"}, past=2)
    assert err.read_text() == ""


def test_same_file_object_for_stdout_and_stderr(workloads: Workloads, tmp_path: Path) -> None:
    """Two outside pipes (stdout, stderr) restored onto one file object given twice."""
    ckpt = out_and_err_checkpoint(workloads, tmp_path, stderr=subprocess.PIPE, until=b"out 2")
    assert len({e["key"] for e in ckpt.manifest.workload["external"]}) == 2
    log = tmp_path / "both.log"
    with open(log, "ab") as f:
        restored = cedana.restore(ckpt.path, stdout=f, stderr=f)
    workloads.track(restored.pid)
    wait_names(log, {"out", "err"}, past=2)


def test_same_pipe_at_several_fds(workloads: Workloads, tmp_path: Path) -> None:
    """One outside pipe at fds 1, 2 and 5 of one process: all three reach the new stdout."""
    ckpt = out_and_err_checkpoint(
        workloads, tmp_path, "dup", stderr=subprocess.STDOUT, until=b"dup 2"
    )
    assert {e["fd"] for e in ckpt.manifest.workload["external"]} == {1, 2, 5}
    out = tmp_path / "out.log"
    restored = cedana.restore(ckpt.path, stdout=out)
    workloads.track(restored.pid)
    wait_names(out, {"out", "err", "dup"}, past=2)


#: Echoes each line of stdin to its log as "got LINE"; "ready" first.
ECHO = """
    import sys
    print("ready", flush=True)
    for line in sys.stdin:
        print("got", line.strip(), flush=True)
    print("eof", flush=True)
"""


def test_pipe_from_a_live_process_outside(workloads: Workloads, tmp_path: Path) -> None:
    """stdin is a pipe whose writer is another live process, not in the tree: it leads
    outside, and restore reattaches it to the stdin given."""
    r, w = os.pipe()
    log = tmp_path / "echo.log"
    with open(log, "ab") as f:
        p = start([sys.executable, str(script(tmp_path, ECHO))], workloads, stdin=r, stdout=f)
    os.close(r)
    writer = start(["sleep", "60"], workloads, stdin=subprocess.DEVNULL, stdout=w)
    os.write(w, b"one\n")
    os.close(w)
    wait_for(lambda: "got one" in log.read_text(), 10, "the first line")
    ckpt = cedana.Process(p.pid).checkpoint(tmp_path / "echo.tar.zst")
    assert [e["fd"] for e in ckpt.manifest.workload["external"]] == [0]
    killed(p, [p.pid])
    writer.kill()
    writer.wait()
    r2, w2 = os.pipe()
    try:
        restored = cedana.restore(ckpt.path, stdin=r2, stdout=log)
        workloads.track(restored.pid)
        os.write(w2, b"two\n")
    finally:
        os.close(r2)
        os.close(w2)
    wait_for(lambda: "eof" in log.read_text(), 10, "the restored copy to read it")
    assert log.read_text().splitlines()[-2:] == ["got two", "eof"]


#: Waits for a file to appear, then copies stdin to its log.
DRAIN_LATER = """
    import os, sys, time
    print("ready", flush=True)
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.02)
    print("read", repr(sys.stdin.read()), flush=True)
"""


def test_half_closed_pipe_keeps_its_data(workloads: Workloads, tmp_path: Path) -> None:
    """stdin is a pipe with data in it whose writer is closed: it is the tree's own (no live
    process holds the other end), so CRIU restores it with its data instead of /dev/null."""
    r, w = os.pipe()
    os.write(w, b"buffered before the checkpoint\n")
    os.close(w)
    log = tmp_path / "drain.log"
    go = tmp_path / "go"
    with open(log, "ab") as f:
        p = start(
            [sys.executable, str(script(tmp_path, DRAIN_LATER)), str(go)],
            workloads,
            stdin=r,
            stdout=f,
        )
    os.close(r)
    wait_for(lambda: "ready" in log.read_text(), 10, "the workload to start")
    ckpt = cedana.Process(p.pid).checkpoint(tmp_path / "drain.tar.zst")
    assert list(ckpt.manifest.workload["external"]) == []
    killed(p, [p.pid])
    restored = cedana.restore(ckpt.path, stdout=log)
    workloads.track(restored.pid)
    go.touch()
    wait_for(lambda: "read '" in log.read_text(), 10, "the restored copy to read")
    assert "read 'buffered before the checkpoint\\n'" in log.read_text()


def test_socket_to_outside_is_refused_and_keeps_running(
    workloads: Workloads, tmp_path: Path
) -> None:
    """stdout is a unix stream socket whose peer is this process: CRIU cannot dump half a
    connection, so the checkpoint fails with an error that says so, and the workload runs on,
    not frozen."""
    mine, theirs = socket.socketpair()
    with mine:
        p = start(
            [sys.executable, str(script(tmp_path, OUT_AND_ERR))],
            workloads,
            stdout=theirs,
            stderr=subprocess.DEVNULL,
        )
        theirs.close()
        read_until(mine.fileno(), b"out 2")
        with pytest.raises(cedana.CedanaError, match=r"unix stream socket.*outside"):
            cedana.Process(p.pid).checkpoint(tmp_path / "sk.tar.zst")
        assert not (tmp_path / "sk.tar.zst").exists()
        assert procfs.proc_info(p.pid).state not in ("T", "t", "Z")
        later = read_until(mine.fileno(), b"out 40", timeout=20)
        assert b"out 40" in later, "it kept running after the refusal"
