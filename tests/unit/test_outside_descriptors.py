"""Which descriptors lead outside a tree (from /proc, no CRIU), and how restore hands them
to CRIU: one inherit_fd entry per pipe, each on a descriptor of its own."""

from __future__ import annotations

import os
import pty
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cedana.descriptors import Inherit, inherit_plan, inherited_fds
from cedana.process import CheckpointOptions, plan_dump
from tests.conftest import wait_for

#: Sleeps until killed; with "pty", first opens a pty pair of its own and keeps both ends.
SLEEPER = """
import os, sys, time
if sys.argv[1:] == ["pty"]:
    master, slave = os.openpty()
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def start() -> Iterator[object]:
    started: list[subprocess.Popen[bytes]] = []

    def run(*args: str, **popen: Any) -> subprocess.Popen[bytes]:
        popen.setdefault("stdin", subprocess.DEVNULL)
        popen.setdefault("stdout", subprocess.PIPE)
        p: subprocess.Popen[bytes] = subprocess.Popen(
            [sys.executable, "-c", SLEEPER, *args], start_new_session=True, **popen
        )
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        started.append(p)
        return p

    yield run
    for p in started:
        p.kill()
        p.wait()


def test_pipe_whose_writer_is_closed_is_the_trees_own(start) -> None:
    """stdin is a pipe with data and no writer left anywhere: not external, so CRIU keeps
    its data (it used to be reattached to /dev/null, losing the data)."""
    r, w = os.pipe()
    os.write(w, b"data")
    os.close(w)
    try:
        p = start(stdin=r)
    finally:
        os.close(r)
    plan = plan_dump(p.pid, CheckpointOptions())
    assert [e["fd"] for e in plan.external] == [1], "only stdout, whose reader is this process"


def test_pipe_whose_other_end_is_held_outside_is_external(start) -> None:
    """stdin is a pipe whose writer this process still holds: it leads outside."""
    r, w = os.pipe()
    try:
        p = start(stdin=r)
        plan = plan_dump(p.pid, CheckpointOptions())
    finally:
        os.close(r)
        os.close(w)
    assert sorted(e["fd"] for e in plan.external) == [0, 1]


def test_same_direction_held_outside_does_not_make_it_external(start) -> None:
    """Outside holders of the same end (another reader) do not connect the tree to anyone."""
    r, w = os.pipe()
    os.close(w)
    try:
        p = start(stdin=r)  # this process keeps a second read end
        plan = plan_dump(p.pid, CheckpointOptions())
    finally:
        os.close(r)
    assert 0 not in [e["fd"] for e in plan.external]


def test_own_pty_pair_is_no_terminal(start) -> None:
    """A pty pair the tree opened for itself is dumped by CRIU like a pipe: no shell job,
    no terminal needed at restore."""
    p = start("pty", stdout=subprocess.PIPE)
    plan = plan_dump(p.pid, CheckpointOptions())
    assert plan.terminal is False
    assert plan.shell_job is False


def test_pty_slave_whose_master_is_outside_is_a_terminal() -> None:
    """A process on a pty whose master this process holds is on a terminal."""
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(
            [sys.executable, "-c", SLEEPER],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        try:
            os.close(slave)
            assert os.read(master, 100).startswith(b"ready")
            assert plan_dump(p.pid, CheckpointOptions()).terminal is True
        finally:
            p.kill()
            p.wait()
    finally:
        os.close(master)


def test_inherit_plan_is_one_entry_per_pipe() -> None:
    """Four processes holding one pipe at fds 1 and 2 make one entry, sent to stdout; a
    second pipe at fd 0 goes to stdin."""
    external = [
        {"pid": pid, "fd": fd, "key": "pipe:[7]", "writable": True}
        for pid in (14, 11, 12, 13)
        for fd in (2, 1)
    ]
    external.append({"pid": 11, "fd": 0, "key": "pipe:[8]", "writable": False})
    assert inherit_plan(external, (100, 101, 102)) == [
        Inherit(key="pipe:[8]", fd=100, tree_writes=False),
        Inherit(key="pipe:[7]", fd=101, tree_writes=True),
    ]


def test_inherited_fds_never_share_a_descriptor() -> None:
    """Two pipes restored onto one descriptor (``stdout=f, stderr=f``) get one each, because
    CRIU closes every inherited descriptor it takes; the dups are closed afterwards."""
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        plan = [Inherit(key=f"pipe:[{n}]", fd=fd, tree_writes=True) for n in (1, 2)]
        with inherited_fds(plan) as pairs:
            fds = [f for _, f in pairs]
            assert fds[0] == fd and fds[1] != fd
            assert os.path.samestat(os.fstat(fds[0]), os.fstat(fds[1]))
        with pytest.raises(OSError):
            os.fstat(fds[1])
    finally:
        os.close(fd)


def test_regular_file_is_relayed_through_a_pipe(tmp_path: Path) -> None:
    """CRIU would reopen an inherited file at offset 0 for every holder, overwriting it:
    a file target gets a pipe whose data a detached cat appends to the file."""
    log = tmp_path / "out.log"
    log.write_bytes(b"kept\n")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        with inherited_fds([Inherit(key="pipe:[1]", fd=fd, tree_writes=True)]) as pairs:
            ((_, given),) = pairs
            assert stat.S_ISFIFO(os.fstat(given).st_mode)
            os.write(given, b"relayed\n")
    finally:
        os.close(fd)
    wait_for(lambda: log.read_bytes() == b"kept\nrelayed\n", 10, "cat to append the data")
