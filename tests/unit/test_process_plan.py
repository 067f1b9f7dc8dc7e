"""The Process layer without root or CRIU: what plan_dump decides from /proc, and the
checkpoint orchestration against a fake CRIU backend."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import attrs
import pytest

import cedana
from cedana import procfs
from cedana.criu import CriuRequest
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
        # CRIU's tcp_close dumps them too (restored closed): not refused either.
        plan = plan_dump(p.pid, CheckpointOptions(criu={"tcp_close": True}))
        assert plan.criu["tcp_close"] is True
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

    with pytest.raises(cedana.NoSpace, match="no space left on device"):
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


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ({"level": 0}, "zstd level must be 1"),
        ({"level": 99}, "zstd level must be 1"),
        ({"level": True}, "level must be an integer"),
        ({"threads": -1}, "threads must be 0"),
        ({"compress": "gzip"}, "compress must be 'zstd' or 'none'"),
        ({"directory": True, "compress": "none"}, "pass one of them"),
        ({"compress": "none", "level": 9}, "compresses nothing"),
        ({"directory": True, "level": 9}, "compresses nothing"),
    ],
)
def test_bad_options_refused_when_made(given: dict[str, object], why: str) -> None:
    """A bad value or combination is an InvalidOption (a CedanaError and a ValueError) with
    one line saying what is wrong, raised when the options are made, and by evolve too."""
    with pytest.raises(cedana.InvalidOption, match=why) as caught:
        CheckpointOptions(**given)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert len(str(caught.value).splitlines()) == 1
    with pytest.raises(cedana.InvalidOption, match=why):
        attrs.evolve(CheckpointOptions(), **given)  # type: ignore[arg-type]


def test_bad_level_refused_before_planning(sleeper, tmp_path: Path) -> None:
    """checkpoint(level=0) fails before the tree is looked at or CRIU asked for anything."""
    fake = FakeCriu()
    with pytest.raises(cedana.InvalidOption, match="level"):
        cedana.Process(sleeper.pid, backend=fake).checkpoint(tmp_path / "a.tar.zst", level=0)
    assert fake.calls == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "given", "hint"),
    [
        ("a.tar.zst", {"compress": "none"}, "name it {dir}/a.tar, or pass compress='zstd'"),
        ("a.zst", {"compress": "none"}, "name it {dir}/a.tar, or pass compress='zstd'"),
        ("b.tar.zst", {"directory": True}, "name it {dir}/b, or drop directory=True"),
    ],
)
def test_name_that_lies_about_the_form_refused_before_dumping(
    sleeper, tmp_path: Path, name: str, given: dict[str, object], hint: str
) -> None:
    """A .zst name for an uncompressed artifact (a plain tar, a directory) is refused before
    CRIU is asked for anything, saying what to name it or what to pass; the right name works."""
    fake = FakeCriu()
    opts = CheckpointOptions(**given)  # type: ignore[arg-type]
    plan = plan_dump(sleeper.pid, opts)
    with pytest.raises(cedana.InvalidOption) as caught:
        checkpoint_tree(plan, tmp_path / name, opts, kind="process", backend=fake)
    assert hint.format(dir=tmp_path) in str(caught.value)
    assert fake.calls == []
    assert list(tmp_path.iterdir()) == []
    fixed = hint.format(dir=tmp_path).split()[2].rstrip(",")
    checkpoint_tree(plan, Path(fixed), opts, kind="process", backend=FakeCriu(kill=True))
    cedana.open(fixed).verify()


def test_leave_running_with_tcp_established_warns(
    sleeper, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """leave_running with tcp_established issues a LiveConnectionsWarning (a CedanaWarning)
    and logs it at WARNING; either option alone warns of nothing."""
    opts = CheckpointOptions(leave_running=True, tcp_established=True)
    plan = plan_dump(sleeper.pid, opts)
    with (
        caplog.at_level(logging.WARNING, logger="cedana.process"),
        pytest.warns(cedana.LiveConnectionsWarning, match="stay live in the original"),
    ):
        checkpoint_tree(plan, tmp_path / "a.tar.zst", opts, kind="process", backend=FakeCriu())
    assert any(
        r.levelno == logging.WARNING and "stay live in the original" in r.getMessage()
        for r in caplog.records
    )
    assert issubclass(cedana.LiveConnectionsWarning, cedana.CedanaWarning)
    for alone in (CheckpointOptions(leave_running=True), CheckpointOptions(tcp_established=True)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", cedana.CedanaWarning)
            checkpoint_tree(
                plan_dump(sleeper.pid, alone),
                tmp_path / f"{alone.leave_running}.tar.zst",
                alone,
                kind="process",
                backend=FakeCriu(kill=True),  # the last one dumps without leave_running
            )


_TRACE_ME = (
    "import ctypes, sys, time\n"
    "assert ctypes.CDLL(None, use_errno=True).ptrace(0, 0, 0, 0) == 0\n"  # PTRACE_TRACEME
    "print('traced', flush=True)\n"
    "time.sleep(60)\n"
)


def test_traced_process_refused_before_freezing() -> None:
    """A process another one ptraces (here: this test, its tracer) is refused before anything
    is frozen, naming the tracer and saying to wait."""
    p = subprocess.Popen(
        [sys.executable, "-c", _TRACE_ME], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert p.stdout is not None
        assert read_until(p.stdout.fileno(), b"\n").strip() == b"traced"
        with pytest.raises(cedana.NotCheckpointable) as caught:
            plan_dump(p.pid, CheckpointOptions())
        assert f"pid {p.pid} is being checkpointed or traced by another process" in str(
            caught.value
        )
        assert f"(pid {os.getpid()}, " in str(caught.value)
        assert "wait for it to finish" in str(caught.value)
    finally:
        p.kill()
        p.wait()


def test_leftovers_of_a_killed_checkpoint_go_before_the_dump(sleeper, tmp_path: Path) -> None:
    """A temporary artifact that a killed checkpoint left beside the destination is removed
    before CRIU dumps (it may be what would fill the disk), not only when writing."""
    gone = subprocess.Popen(["true"])
    started = procfs.proc_info(gone.pid).start_time
    gone.wait()
    left = tmp_path / f".a.tar.zst.tmp-{gone.pid}-{started}-0123456789ab"
    left.write_bytes(b"x" * 4096)
    seen: list[bool] = []

    class Looking(FakeCriu):
        def dump(self, request: CriuRequest) -> None:
            seen.append(left.exists())
            super().dump(request)

    opts = CheckpointOptions(leave_running=True)
    checkpoint_tree(
        plan_dump(sleeper.pid, opts),
        tmp_path / "a.tar.zst",
        opts,
        kind="process",
        backend=Looking(),
    )
    assert seen == [False]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.zst"]
