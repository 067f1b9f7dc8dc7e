"""Restoring under taken pids, against real CRIU: waiting for the tree's own zombies, new pid
namespaces held by cedana's init (restored into, spawned into, checkpointed from), and what
the workload and the caller see there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest

import cedana
from cedana import pidns, procfs
from tests.capabilities import integration
from tests.conftest import Workloads, wait_for
from tests.helpers import run_cedana

pytestmark = integration

#: A root and two children, each counting in memory into the log (opened for appending).
TREE = """
    import os, sys, time
    log = open(sys.argv[1], "a")
    def count(role):
        n = 0
        while True:
            n += 1
            log.write(f"{role} {n}\\n")
            log.flush()
            time.sleep(0.03)
    for role in ("child1", "child2"):
        if os.fork() == 0:
            count(role)
    count("root")
"""

#: Runs ARGV as its child in a session of its own, adopts the orphans of its tree
#: (a subreaper, like a machine's init) and reaps nothing until it reads a line.
SLOW_REAPER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
child = subprocess.Popen(sys.argv[1:], start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
sys.stdin.readline()
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
sys.stdin.readline()
"""


def counts(log: Path, role: str) -> list[int]:
    """The counts ``role`` wrote to ``log`` (none before the log exists)."""
    text = log.read_text() if log.exists() else ""
    return [int(ln.split()[1]) for ln in text.splitlines() if ln.split()[0] == role]


def wait_counts(log: Path, role: str, at_least: int) -> None:
    wait_for(lambda: len(counts(log, role)) >= at_least, 20, f"{at_least} {role} lines")


def proc_of(pid: int) -> list[str]:
    """What the process sees in its /proc: the pids listed there."""
    return sorted(n for n in os.listdir(f"/proc/{pid}/root/proc") if n.isdigit())


def test_restored_straight_after_checkpoint_waits_for_its_own_zombies(
    workloads: Workloads, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tree checkpointed without leave_running leaves zombies under its original pids
    until its parent reaps them (this machine's init takes about 1.5 s, a container's init
    may never): a restore at once is refused with pid_wait=0, naming the zombie, and
    succeeds, under the original pids, when it waits for them."""
    log = tmp_path / "tree.log"
    script = tmp_path / "tree.py"
    script.write_text(textwrap.dedent(TREE))
    reaper = subprocess.Popen(
        [sys.executable, "-c", SLOW_REAPER, sys.executable, str(script), str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert reaper.stdin is not None and reaper.stdout is not None
    try:
        root = int(reaper.stdout.readline())
        workloads.track(root)
        for role in ("root", "child1", "child2"):
            wait_counts(log, role, 3)
        tree = {p.pid for p in cedana.Process(root).tree()}
        assert len(tree) == 3
        ckpt = cedana.Process(root).checkpoint(tmp_path / "tree.tar.zst")
        before = counts(log, "root")
        assert all(procfs.proc_info(pid).state == "Z" for pid in tree)
        with pytest.raises(cedana.PidInUse, match="zombie"):
            cedana.restore(ckpt.path, pid_wait=0)

        restored: list[cedana.Process] = []
        errors: list[BaseException] = []

        def restore() -> None:
            try:
                restored.append(cedana.restore(ckpt.path, pid_wait=60))
            except BaseException as exc:  # reported below
                errors.append(exc)

        caplog.set_level("INFO", logger="cedana.pidns")
        waiter = threading.Thread(target=restore)
        waiter.start()
        wait_for(lambda: "held by the tree's own zombies" in caplog.text, 20, "the wait")
        reaper.stdin.write(b"reap\n")
        reaper.stdin.flush()
        waiter.join(60)
        assert not errors, errors
        assert "zombies were reaped after" in caplog.text
        workloads.track(restored[0].pid)
        assert restored[0].pid == root
        assert {p.pid for p in restored[0].tree()} == tree
        wait_for(lambda: counts(log, "root")[-1] > before[-1] + 3, 20, "the count going on")
        assert counts(log, "root")[len(before)] == before[-1] + 1
    finally:
        reaper.kill()
        reaper.wait()


def test_restore_twice_at_once_into_new_pid_namespaces(
    workloads: Workloads, tmp_path: Path
) -> None:
    """With the original still running (every pid taken), two restores of one artifact run
    at the same time with pid_namespace="new": both trees come back under their original
    pids inside their namespaces, go on counting from the checkpoint's memory, see their
    own namespace in /proc (cedana's init as pid 1, their parent), and the caller gets
    host pids it can signal and wait on for the exit status."""
    log = tmp_path / "tree.log"
    proc, _ = workloads.python(TREE.replace("sys.argv[1]", repr(str(log))))
    for role in ("root", "child1", "child2"):
        wait_counts(log, role, 3)
    original = [p.pid for p in proc.tree()]
    ckpt = proc.checkpoint(tmp_path / "tree.tar.zst", leave_running=True)
    at = counts(log, "root")[-1]

    restored: list[cedana.Process] = []
    errors: list[BaseException] = []

    def restore() -> None:
        try:
            restored.append(cedana.restore(ckpt.path, pid_namespace="new"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=restore) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for r in restored:
        workloads.track(r.pid)
    a, b = restored
    assert len({proc.pid, a.pid, b.pid}) == 3
    for r in restored:
        assert r.namespace is not None
        assert r.ns_pid == proc.pid
        assert sorted(pidns.ns_pids(p.pid)[-1] for p in r.tree()) == sorted(original)
        init = procfs.proc_info(r.pid).ppid
        assert init == r.namespace.init
        assert pidns.ns_pids(init)[-1] == 1
        assert proc_of(r.pid) == sorted(["1", *map(str, original)])
    # Each count after the checkpoint is written three times: the original and both copies.
    wait_for(
        lambda: Counter(counts(log, "root"))[at + 5] == 3, 20, "three counters going on from it"
    )
    a.signal(signal.SIGTERM)
    assert a.wait(10) == -signal.SIGTERM
    b.kill()
    assert b.wait(10) == -signal.SIGKILL
    assert proc.running


def test_auto_uses_a_new_namespace_only_when_a_pid_is_taken(
    workloads: Workloads, tmp_path: Path
) -> None:
    """pid_namespace="auto" restores in the caller's namespace when the pids are free, and
    into a new one when the original still holds them."""
    proc, _ = workloads.python(TREE.replace("sys.argv[1]", repr(str(tmp_path / "t.log"))))
    wait_counts(tmp_path / "t.log", "root", 3)
    ckpt = proc.checkpoint(tmp_path / "tree.tar.zst", leave_running=True)
    beside = cedana.restore(ckpt.path, pid_namespace="auto")
    workloads.track(beside.pid)
    assert beside.namespace is not None and beside.ns_pid == proc.pid
    proc.kill()
    beside.kill()
    wait_for(lambda: procfs.holder_of(proc.pid) is None, 10, "the original's pid to be free")
    here = cedana.restore(ckpt.path, pid_namespace="auto")
    workloads.track(here.pid)
    assert here.namespace is None and here.pid == proc.pid


def test_spawn_in_a_pid_namespace(workloads: Workloads, tmp_path: Path) -> None:
    """spawn(pid_namespace=True) starts the workload as pid 2 under cedana's init; its
    checkpoint records the namespace's pids and restores into a new namespace by default
    (twice, beside each other, where pid 2 is never free in the caller's namespace); a
    tree restored so checkpoints again; signals to the handle, and to the holder, reach the
    workload, and wait() gives its exit status."""
    log = tmp_path / "ns.log"
    script = tmp_path / "tree.py"
    script.write_text(textwrap.dedent(TREE))
    proc = cedana.spawn([sys.executable, str(script), str(log)], pid_namespace=True)
    workloads.track(proc.pid)
    assert proc.namespace is not None
    assert proc.ns_pid == 2
    for role in ("root", "child1", "child2"):
        wait_counts(log, role, 3)
    assert proc_of(proc.pid) == ["1", "2", "3", "4"]
    ckpt = proc.checkpoint(tmp_path / "ns.tar.zst")
    assert ckpt.manifest.workload["pid_namespace"] == "own"
    assert ckpt.manifest.workload["root_pid"] == 2
    assert sorted((e.pid, e.ppid) for e in ckpt.manifest.tree) == [(2, 1), (3, 2), (4, 2)]
    assert not proc.running  # CRIU killed it once the artifact was complete
    assert proc.wait(0) == -signal.SIGKILL
    before = counts(log, "root")

    first = cedana.restore(ckpt.path)
    second = cedana.restore(ckpt.path)
    for r in (first, second):
        workloads.track(r.pid)
        assert r.namespace is not None and r.ns_pid == 2
    wait_for(lambda: Counter(counts(log, "root"))[before[-1] + 3] == 2, 20, "both going on")

    again = first.checkpoint(tmp_path / "again.tar.zst", leave_running=True)
    assert sorted(e.pid for e in again.manifest.tree) == [2, 3, 4]
    third = cedana.restore(again.path)
    workloads.track(third.pid)
    assert third.ns_pid == 2 and third.running

    first.signal(signal.SIGTERM)
    assert first.wait(10) == -signal.SIGTERM
    assert second.namespace is not None
    second.namespace.holder.send_signal(signal.SIGUSR1)  # the holder passes it on
    assert second.wait(10) == -signal.SIGUSR1
    third.kill()
    assert not third.running


def test_spawned_exit_status_comes_through(tmp_path: Path) -> None:
    """The workload's exit code is what wait() gives, through the init and the holder."""
    proc = cedana.spawn(["sh", "-c", "exit 7"], pid_namespace=True)
    assert proc.wait(10) == 7


def test_command_line_restores_into_a_new_pid_namespace(
    workloads: Workloads, tmp_path: Path
) -> None:
    """``cedana restore --new-pidns --json`` restores beside the running original and says
    both pids: the host pid to signal, and the original one it has inside."""
    proc, _ = workloads.python(TREE.replace("sys.argv[1]", repr(str(tmp_path / "t.log"))))
    wait_counts(tmp_path / "t.log", "root", 3)
    ckpt = proc.checkpoint(tmp_path / "tree.tar.zst", leave_running=True)
    done = run_cedana("restore", str(ckpt.path), "--new-pidns", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    workloads.track(data["pid"])
    assert data["ns_pid"] == proc.pid != data["pid"]
    assert pidns.ns_pids(data["pid"]) == (data["pid"], proc.pid)
    done = run_cedana("restore", str(ckpt.path), "--pid-namespace", "current")
    assert done.returncode != 0
    assert "--new-pidns" in done.stderr


FAKE_INIT = """\
import os, subprocess, sys
# In a user and mount namespace of its own (unshare -U -m): the user's to change.
subprocess.run(["mount", "--bind", sys.argv[1], sys.argv[2]], check=True)
child = os.fork()
if child == 0:
    os.setsid()
    os.execv("/bin/sleep", ["sleep", "120"])
with open(sys.argv[3], "w") as f:
    f.write("ready")
os.waitpid(child, 0)
"""


def test_a_namespace_only_named_like_cedanas_is_not_entered(tmp_path: Path) -> None:
    """A checkpoint of a tree in a pid namespace runs CRIU inside the tree's mount
    namespace only when cedana's init holds it. Anyone can name an init ``_pidinit.py``
    in a user and mount namespace of their own, where they may bind their own program
    over CRIU's path: such a namespace is not taken for cedana's, so that program is
    never run (as root) and the checkpoint fails without it."""
    from cedana.criu import SwrkCriu

    criu = SwrkCriu()._binary()
    marker, ready = tmp_path / "ran-as-root", tmp_path / "ready"
    fake = tmp_path / "fake-criu"
    fake.write_text(f"#!/bin/sh\necho $(id -u) > {marker}\n")
    fake.chmod(0o755)
    script = tmp_path / "fake_pidinit.py"
    script.write_text(FAKE_INIT)
    holder = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--mount-proc",
         sys.executable, str(script), str(fake), criu, str(ready)],
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:

        def sleepers() -> list[int]:
            tree = procfs.tree(holder.pid)
            return [p.pid for p in tree if Path(f"/proc/{p.pid}/comm").read_text() == "sleep\n"]

        wait_for(lambda: ready.exists() and sleepers(), 10, "the fake init and its child")
        sleeper = sleepers()[0]
        assert pidns.cedana_init_of(sleeper) is None
        with pytest.raises(cedana.CedanaError):
            cedana.Process(sleeper).checkpoint(tmp_path / "out.tar.zst", leave_running=True)
        assert not marker.exists()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(10)
