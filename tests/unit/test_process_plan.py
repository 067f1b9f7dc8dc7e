"""The Process layer without root or CRIU: what plan_dump decides from /proc, and the
checkpoint orchestration against a fake CRIU backend."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import cedana
from cedana.process import CheckpointOptions, checkpoint_tree, plan_dump
from tests.conftest import wait_for
from tests.fakes import FakeCriu
from tests.helpers import popen_in_session, read_until


def test_session_leader_needs_no_shell_job(sleeper) -> None:
    """A session leader with stdio on /dev/null: no shell-job, nothing external."""
    plan = plan_dump(sleeper.pid, CheckpointOptions())
    assert plan.shell_job is False
    assert plan.external == ()
    assert plan.criu["pid"] == sleeper.pid
    assert plan.criu["leave_running"] is False


def test_piped_child_is_shell_job_with_external_stdio() -> None:
    """A child of ours with pipes as stdio is a shell job whose three pipes lead outside."""
    p, pid = popen_in_session(
        ["sleep", "60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        plan = plan_dump(pid, CheckpointOptions())
        assert plan.shell_job is True
        assert sorted(e["fd"] for e in plan.external) == [0, 1, 2]
        assert all(e["key"].startswith("pipe:[") for e in plan.external)
        assert [e["writable"] for e in sorted(plan.external, key=lambda e: e["fd"])] == [
            False,
            True,
            True,
        ]
    finally:
        os.kill(pid, signal.SIGKILL)
        p.wait()


def test_pipe_inside_the_tree_is_not_external() -> None:
    """Both ends of a pipe held within the tree are CRIU's business, not external."""
    code = "import os,time\nr,w=os.pipe()\nif os.fork()==0:\n    time.sleep(60)\ntime.sleep(60)\n"
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: len(cedana.Process(p.pid).tree()) >= 2, 5, "the forked child")
        plan = plan_dump(p.pid, CheckpointOptions())
        assert len(plan.tree) == 2
        assert plan.external == ()
    finally:
        cedana.Process(p.pid).kill()


def test_established_tcp_refused_with_the_option_named() -> None:
    """Established connections without tcp_established: NotCheckpointable naming the option."""
    code = (
        "import socket,time\ns=socket.socket();s.bind(('127.0.0.1',0));s.listen()\n"
        "c=socket.create_connection(s.getsockname());a,_=s.accept();print('ok',flush=True)\n"
        "time.sleep(60)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert p.stdout is not None
        assert read_until(p.stdout.fileno(), b"\n").strip() == b"ok"
        with pytest.raises(cedana.NotCheckpointable, match="tcp_established=True"):
            plan_dump(p.pid, CheckpointOptions())
        plan = plan_dump(p.pid, CheckpointOptions(tcp_established=True))
        assert plan.criu["tcp_established"] is True
    finally:
        p.kill()
        p.wait()


def test_kernel_thread_and_self_refused() -> None:
    """kthreadd and our own process are refused with a clear reason."""
    with pytest.raises(cedana.NotCheckpointable, match="kernel thread"):
        plan_dump(2, CheckpointOptions())
    with pytest.raises(cedana.NotCheckpointable, match="itself"):
        plan_dump(os.getpid(), CheckpointOptions())


def test_escape_hatch_passes_criu_options(sleeper) -> None:
    """criu= options reach CRIU unchanged and win over derived ones."""
    plan = plan_dump(
        sleeper.pid, CheckpointOptions(criu={"ghost_limit": 1 << 24, "shell_job": True})
    )
    assert plan.criu["ghost_limit"] == 1 << 24
    assert plan.criu["shell_job"] is True


def test_artifact_complete_before_the_kill(sleeper, tmp_path: Path) -> None:
    """Without leave_running, the artifact exists and verifies before CRIU is let kill."""
    dest = tmp_path / "a.tar.zst"
    fake = FakeCriu(artifact=dest)
    plan = plan_dump(sleeper.pid, CheckpointOptions())
    seen = []

    def add(images: Path) -> None:
        seen.append(fake.calls[:])

    ckpt = checkpoint_tree(
        plan, dest, CheckpointOptions(), kind="process", backend=fake, add_members=add
    )
    assert seen == [["dumped"]]
    assert fake.calls == ["dumped", "killed"]
    assert fake.verified_before_kill
    assert {m.name for m in ckpt.manifest.members} == {"pstree.img", "pages-1.img"}
    cedana.open(dest).verify()


def test_failed_write_thaws_and_leaves_nothing(sleeper, tmp_path: Path) -> None:
    """An error while writing makes the callback fail (CRIU thaws); no artifact is left."""
    fake = FakeCriu()
    plan = plan_dump(sleeper.pid, CheckpointOptions())
    dest = tmp_path / "a.tar.zst"

    def broken(images: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        checkpoint_tree(
            plan, dest, CheckpointOptions(), kind="process", backend=fake, add_members=broken
        )
    assert fake.calls == ["dumped"]
    assert list(tmp_path.iterdir()) == []


def test_existing_output_refused_before_dumping(sleeper, tmp_path: Path) -> None:
    """An existing artifact path is refused before CRIU is asked for anything."""
    fake = FakeCriu()
    dest = tmp_path / "a.tar.zst"
    dest.write_text("keep me")
    plan = plan_dump(sleeper.pid, CheckpointOptions())
    with pytest.raises(cedana.ArtifactExists):
        checkpoint_tree(plan, dest, CheckpointOptions(), kind="process", backend=fake)
    assert fake.calls == []
    assert dest.read_text() == "keep me"


def test_directory_that_is_not_a_checkpoint_refused_before_dumping(sleeper, tmp_path: Path) -> None:
    """overwrite=True onto a directory that is not a checkpoint is refused before CRIU is
    asked for anything (the tree is never frozen for a write that cannot happen)."""
    fake = FakeCriu()
    dest = tmp_path / "home"
    dest.mkdir()
    plan = plan_dump(sleeper.pid, CheckpointOptions())
    with pytest.raises(cedana.ArtifactExists, match="not a cedana checkpoint"):
        checkpoint_tree(plan, dest, CheckpointOptions(overwrite=True), kind="process", backend=fake)
    assert fake.calls == []
    assert dest.is_dir()


def test_layer_options_sit_between_detection_and_the_caller(sleeper) -> None:
    """A layer's options override what /proc suggests; shell_job= and criu= override the
    layer; the plan's shell_job always says what CRIU will be told."""
    layer = {"shell_job": True, "root": "/rootfs"}
    plan = plan_dump(sleeper.pid, CheckpointOptions(), layer=layer)
    assert plan.criu["shell_job"] is True
    assert plan.shell_job is True
    assert plan.criu["root"] == "/rootfs"
    plan = plan_dump(sleeper.pid, CheckpointOptions(shell_job=False), layer=layer)
    assert plan.shell_job is False
    plan = plan_dump(sleeper.pid, CheckpointOptions(criu={"root": "/mine"}), layer=layer)
    assert plan.criu["root"] == "/mine"
    plan = plan_dump(sleeper.pid, CheckpointOptions(criu={"shell_job": True}))
    assert plan.shell_job is True
