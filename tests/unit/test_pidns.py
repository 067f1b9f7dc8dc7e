"""Restoring under other pids, as planned without root: the pid_namespace and pid_wait
options, which namespace a checkpoint restores into by default, waiting only for pids held
by the tree's own zombies, and the init's argument parsing.

The namespaces themselves need root: tests/integration/test_pidns.py makes them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import cedana
from cedana import pidns, procfs
from cedana.artifact import HostInfo, Manifest, ProcessEntry
from cedana.pidns import _own_zombie, await_pids_free, check_pids_free, pid_namespace_mode
from tests.conftest import wait_for


def manifest(workload: dict[str, object], tree: list[ProcessEntry] | None = None) -> Manifest:
    return Manifest(
        host=HostInfo(kernel="6.18", arch="x86_64", criu_version="4.2.1", hostname="h"),
        kind="process",
        options={},
        tree=tree or [ProcessEntry(pid=2, ppid=1, command="sleep 100")],
        workload={"external": [], **workload},
    )


@pytest.mark.parametrize("value", ["host", "New", "", 1])
def test_bad_pid_namespace_is_refused(value: object) -> None:
    """An unknown pid_namespace is an InvalidOption naming the three values."""
    with pytest.raises(cedana.InvalidOption, match="'current'.*'new'.*'auto'"):
        cedana.RestoreOptions(pid_namespace=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, "5", True])
def test_bad_pid_wait_is_refused(value: object) -> None:
    """pid_wait takes seconds, 0 or more."""
    with pytest.raises(cedana.InvalidOption, match="pid_wait"):
        cedana.RestoreOptions(pid_wait=value)  # type: ignore[arg-type]


def test_default_namespace_follows_the_checkpoint() -> None:
    """By default a checkpoint taken in its own pid namespace restores into a new one (its
    pids are low, always taken here); any other into the caller's; asked wins."""
    own = manifest({"pid_namespace": "own"})
    plain = manifest({})
    assert pid_namespace_mode(None, own) == "new"
    assert pid_namespace_mode(None, plain) == "current"
    assert pid_namespace_mode("current", own) == "current"
    assert pid_namespace_mode("auto", plain) == "auto"


def test_a_live_holder_is_not_waited_for() -> None:
    """A pid held by a live process is taken at once, whatever pid_wait says."""
    entry = ProcessEntry(pid=os.getpid(), ppid=1, command="python")
    free, waited = await_pids_free([entry], timeout=60)
    assert not free
    assert waited < 60
    with pytest.raises(cedana.PidInUse, match="pid_namespace='new' \\(--new-pidns\\)"):
        check_pids_free([entry])


def test_own_zombies_are_waited_for_until_reaped(tmp_path: Path) -> None:
    """A pid held by a zombie of the same command, whose parent (not this process) has not
    reaped it yet, is waited for; once the parent reaps it the pids count as free."""
    # The shell's child exits at once and stays a zombie: the shell waits for nothing
    # until it reads a line, then reaps it.
    shell = subprocess.Popen(
        ["sh", "-c", "sleep 0 & read line; wait; sleep 30"],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    assert shell.stdin is not None
    try:
        kids = wait_for(lambda: procfs.children(shell.pid), what="the shell's child")
        assert isinstance(kids, list)
        zombie = kids[0]
        wait_for(lambda: procfs.proc_info(zombie).state == "Z", what="a zombie")
        entry = ProcessEntry(pid=zombie, ppid=shell.pid, command="sleep 0")
        assert not await_pids_free([entry], timeout=0)[0]
        result: list[tuple[bool, float]] = []
        waiter = threading.Thread(target=lambda: result.append(await_pids_free([entry], 60)))
        waiter.start()
        time.sleep(0.1)
        shell.stdin.write(b"go\n")
        shell.stdin.flush()
        waiter.join(30)
        assert result and result[0][0], result
    finally:
        shell.kill()
        shell.wait()


def test_an_unrelated_zombie_is_not_waited_for() -> None:
    """A zombie that is not of the recorded command is not the tree's own: no waiting."""
    shell = subprocess.Popen(
        ["sh", "-c", "sleep 0 & read line; sleep 30"], stdin=subprocess.PIPE, start_new_session=True
    )
    try:
        kids = wait_for(lambda: procfs.children(shell.pid), what="the shell's child")
        assert isinstance(kids, list)
        wait_for(lambda: procfs.proc_info(kids[0]).state == "Z", what="a zombie")
        entry = ProcessEntry(pid=kids[0], ppid=1, command="python3 train.py")
        free, _ = await_pids_free([entry], timeout=60)
        assert not free
    finally:
        shell.kill()
        shell.wait()


def test_ns_pids_of_a_process_in_our_namespace() -> None:
    """A process of our own namespace has one pid, and no cedana init holds it."""
    assert pidns.ns_pids(os.getpid()) == (os.getpid(),)
    assert pidns.cedana_init_of(os.getpid()) is None
    with pytest.raises(cedana.ProcessNotFound):
        pidns.ns_pids(4194304 + 1)


def test_init_refuses_a_command_line_without_its_separator() -> None:
    """The init's command line needs ``--`` before the command; without, it says how."""
    done = subprocess.run(
        [sys.executable, "-I", str(pidns.INIT_SCRIPT), "--spawn", "sleep"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "usage" in done.stderr


def test_a_script_run_by_its_interpreter_is_its_own_zombie() -> None:
    """A script started through its #! line has comm = the script's name while its command
    line starts with the interpreter: its zombie is still recognised as the tree's own."""
    script = "import os, time\nif os.fork() == 0:\n    os._exit(0)\ntime.sleep(30)\n"
    holder = subprocess.Popen(
        [sys.executable, "-c", script], start_new_session=True, stdin=subprocess.DEVNULL
    )
    try:
        kids = wait_for(lambda: procfs.children(holder.pid), what="the child")
        assert isinstance(kids, list)
        wait_for(lambda: procfs.proc_info(kids[0]).state == "Z", what="a zombie")
        comm = procfs.proc_info(kids[0]).comm
        entry = ProcessEntry(pid=kids[0], ppid=holder.pid, command=f"/usr/bin/env {comm} x")
        assert _own_zombie(entry)
        assert not _own_zombie(ProcessEntry(pid=kids[0], ppid=1, command="other thing"))
    finally:
        holder.kill()
        holder.wait()


def test_a_pid_reaped_since_it_was_seen_taken_counts_as_freeing_itself() -> None:
    """A zombie reaped between seeing its pid taken and looking at it again is no reason to
    stop waiting (the restore went on without the wait's account before): its pid is free."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert _own_zombie(ProcessEntry(pid=gone.pid, ppid=1, command="true"))


@pytest.mark.parametrize(
    ("tree", "root"),
    [([5, 6], 7), ([1, 5], 1), ([5, 6], "5"), ([5, True], 5), ([5, 6], -5)],
)
def test_a_root_pid_outside_the_tree_is_refused(tree: list[object], root: object) -> None:
    """The root pid the init waits on (and whose exit ends the namespace) must be one of
    the tree's own pids, above the init's 1: a crafted manifest naming another is refused
    before any namespace is made."""
    from cedana.errors import UnsafeArtifact
    from cedana.pidns import PidNamespace

    with pytest.raises(UnsafeArtifact, match="root pid"):
        PidNamespace.for_restore(tree, root)  # type: ignore[arg-type]
