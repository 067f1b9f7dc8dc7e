"""What a new user trips over, against real CRIU: what a killed checkpoint leaves, bad options,
a tree that is already being checkpointed, a file that grew after a leave_running checkpoint,
a full work dir on restore, and a Popen parent's view of its checkpointed child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import cedana
from cedana import procfs
from cedana.process import CheckpointOptions, checkpoint_tree, plan_dump
from tests.capabilities import integration
from tests.conftest import Workloads, wait_for
from tests.helpers import read_until, run_cedana, tmpfs
from tests.integration.test_process import COUNTER, assert_gone, numbers, wait_count

pytestmark = integration

#: A counter holding 256 MiB of random bytes: its artifact takes a moment to write.
BIG = """
    import os, time
    buf = os.urandom(256 << 20)
    n = 0
    while True:
        n += 1
        print("count", n, flush=True)
        time.sleep(0.02)
"""


def assert_counting(log: Path) -> None:
    """The workload is running, not frozen: it keeps adding lines."""
    wait_count(log, len(numbers(log)) + 5)


def _artifact_being_written(pid: int, directory: Path) -> int:
    """The size of the anonymous file ``pid`` is writing in ``directory`` (0 if none yet)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(f"{directory}/#") and target.endswith(" (deleted)"):
            try:
                return os.stat(fd).st_size
            except OSError:
                return 0
    return 0


def test_killed_checkpoint_leaves_nothing_for_the_next(
    workloads: Workloads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cedana checkpoint` SIGKILLed while CRIU streams the pages into the artifact leaves
    nothing beside the destination (the artifact is an anonymous file until complete), and
    the workload runs on, thawed (CRIU's next send fails and it rolls back). Its scratch
    dirs stay, and the next checkpoint removes them."""
    proc, log = workloads.python(BIG)
    wait_count(log, 3, timeout=60)
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    cli = subprocess.Popen(
        [sys.executable, "-m", "cedana", "checkpoint", str(proc.pid), "-o", str(out / "a.tar.zst")],
        env={**os.environ, "TMPDIR": str(work)},  # its scratch dirs and CRIU log go there
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Mid-stream: pages have reached the artifact, and there are more to come.
        wait_for(lambda: _artifact_being_written(cli.pid, out) > 8 << 20, 60, "pages streaming")
    finally:
        cli.kill()
        cli.wait()
    assert list(out.iterdir()) == [], "SIGKILL leaves nothing beside the destination"
    assert any(p.name.startswith(f".cedana-dump-{cli.pid}-") for p in work.iterdir())
    wait_for(lambda: procfs.proc_info(proc.pid).state != "T", 30, "the workload thawed")
    assert proc.running
    assert_counting(log)

    monkeypatch.setattr(tempfile, "tempdir", str(work))  # where the CLI's CRIU log dir is
    proc.checkpoint(out / "b.tar.zst", leave_running=True, work_dir=work)
    assert sorted(p.name for p in out.iterdir()) == ["b.tar.zst"]
    assert list(work.iterdir()) == []
    assert_counting(log)


def test_bad_options_are_one_line_before_anything_runs(
    workloads: Workloads, tmp_path: Path
) -> None:
    """--level 0, --level 99 and --compress none to a .tar.zst name fail with one line saying
    what to pass (no traceback, where --level 0 used to fail after CRIU had dumped), nothing
    is written, and the workload runs on."""
    proc, log = workloads.python(COUNTER)
    wait_count(log, 3)
    dest = tmp_path / "x.tar.zst"
    for args, said in (
        (["--level", "0"], "zstd level must be 1 (fastest) to 22"),
        (["--level", "99"], "zstd level must be 1 (fastest) to 22"),
        (["--compress", "none"], f"name it {tmp_path / 'x.tar'}, or pass compress='zstd'"),
    ):
        result = run_cedana("checkpoint", str(proc.pid), "-o", str(dest), *args)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("cedana: error: ") and said in result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not dest.exists() and not list(tmp_path.glob(".x.tar*"))
    assert proc.running
    assert_counting(log)


_SEIZE = textwrap.dedent(
    """
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(0x4206, int(sys.argv[1]), 0, 0) != 0:  # PTRACE_SEIZE: traced, not stopped
        sys.exit(ctypes.get_errno())
    print("seized", flush=True)
    sys.stdin.read()  # trace until the test closes our stdin
    """
)


@pytest.fixture
def tracer() -> Iterator[object]:
    """Starts a helper that ptraces (seizes) a pid until the test ends."""
    helpers: list[subprocess.Popen[bytes]] = []

    def seize(pid: int) -> subprocess.Popen[bytes]:
        helper = subprocess.Popen(
            [sys.executable, "-c", _SEIZE, str(pid)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        helpers.append(helper)
        assert helper.stdout is not None
        assert read_until(helper.stdout.fileno(), b"\n").strip() == b"seized"
        return helper

    yield seize
    for helper in helpers:
        helper.kill()
        helper.wait()


def test_traced_tree_is_refused_before_freezing(
    workloads: Workloads, tmp_path: Path, tracer
) -> None:
    """A workload another process ptraces is refused before anything is frozen, naming the
    tracer; once the tracer lets go, the checkpoint works."""
    proc, log = workloads.python(COUNTER)
    wait_count(log, 3)
    helper = tracer(proc.pid)
    with pytest.raises(cedana.NotCheckpointable) as caught:
        proc.checkpoint(tmp_path / "t.tar.zst")
    message = str(caught.value)
    assert f"pid {proc.pid} is being checkpointed or traced by another process" in message
    assert f"(pid {helper.pid}, " in message and "wait for it to finish" in message
    assert proc.running and procfs.proc_info(proc.pid).state != "T"
    assert_counting(log)
    helper.kill()
    helper.wait()
    wait_for(lambda: procfs.tracer_of(proc.pid) == 0, what="the tracer to let go")
    proc.checkpoint(tmp_path / "t.tar.zst", leave_running=True)


def test_second_checkpoint_of_a_tree_being_checkpointed(
    workloads: Workloads, tmp_path: Path
) -> None:
    """Two real checkpoints of one pid at once: the second, started while CRIU holds the tree
    for the first (from inside its post-dump callback), fails with one line naming CRIU as the
    tracer; the first completes and the workload runs on."""
    proc, log = workloads.python(COUNTER)
    wait_count(log, 3)
    second: list[subprocess.CompletedProcess[str]] = []

    def meanwhile(images: Path) -> None:
        second.append(run_cedana("checkpoint", str(proc.pid), "-o", str(tmp_path / "2.tar.zst")))

    opts = CheckpointOptions(leave_running=True)
    checkpoint_tree(
        plan_dump(proc.pid, opts),
        tmp_path / "1.tar.zst",
        opts,
        kind="process",
        add_members=meanwhile,
    )
    result = second[0]
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"cedana: error: pid {proc.pid} is being checkpointed or traced by another process (pid "
    ), result.stderr
    assert ", criu)" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "2.tar.zst").exists()
    cedana.open(tmp_path / "1.tar.zst").verify()
    assert_counting(log)


def test_tracer_arriving_after_the_check_is_explained(
    workloads: Workloads, tmp_path: Path, tracer
) -> None:
    """When the race is lost inside CRIU (a tracer arrives between planning and CRIU's
    seize), the DumpFailed says what CRIU's log means instead of 'Unable to detach'; the
    workload runs on."""
    proc, log = workloads.python(COUNTER)
    wait_count(log, 3)
    opts = CheckpointOptions()
    plan = plan_dump(proc.pid, opts)
    helper = tracer(proc.pid)
    with pytest.raises(cedana.DumpFailed) as caught:
        checkpoint_tree(plan, tmp_path / "r.tar.zst", opts, kind="process")
    first = str(caught.value).splitlines()[0]
    assert first.startswith(
        f"CRIU dump failed: pid {proc.pid} is being checkpointed or traced by another process "
        f"(pid {helper.pid}, "
    ), first
    assert "wait for it to finish" in first
    assert "Unable to interrupt task" in caught.value.log_tail
    assert not (tmp_path / "r.tar.zst").exists()
    assert proc.running
    assert_counting(log)


def test_file_grown_after_leave_running_is_explained(workloads: Workloads, tmp_path: Path) -> None:
    """A file the workload writes with `>` (not appending) that grew after a leave_running
    checkpoint makes CRIU refuse the restore; the RestoreFailed names the file (with its
    leading slash), both sizes, why, and what to do; truncating it back as told restores."""
    job = tmp_path / "job"
    job.mkdir()
    out = job / "out.log"
    proc, log = workloads.python(
        f"""
        import time
        out = open({str(out)!r}, "w")  # O_TRUNC, not O_APPEND: CRIU checks its size
        n = 0
        while True:
            n += 1
            out.write(f"line {{n}}\\n")
            out.flush()
            print("count", n, flush=True)
            time.sleep(0.02)
        """
    )
    wait_count(log, 5)
    ckpt = proc.checkpoint(tmp_path / "grown.tar.zst", leave_running=True)
    wait_count(log, len(numbers(log)) + 5)  # the original writes on
    proc.kill()
    assert_gone(proc.pid)
    with pytest.raises(cedana.RestoreFailed) as caught:
        cedana.restore(ckpt.path)
    first = str(caught.value).splitlines()[0]
    grown = out.stat().st_size
    found = first.split(f"{out} is {grown} bytes now but was ", 1)
    assert len(found) == 2, first
    size = int(found[1].split()[0])
    assert size < grown
    assert "the original kept running" in first
    assert f"truncate -s {size} {out}" in first
    assert "restore the file from a copy taken at checkpoint time" in first
    assert "checkpoint without leave_running" in first
    assert_gone(proc.pid)  # nothing is left half-restored
    os.truncate(out, size)
    restored = cedana.restore(ckpt.path)
    workloads.track(restored.pid)
    assert restored.pid == proc.pid
    wait_for(lambda: out.stat().st_size > size, 20, "the restored workload to write on")


def test_full_work_dir_on_restore_is_no_space(workloads: Workloads, tmp_path: Path) -> None:
    """Unpacking the images into a work dir too small for them is a NoSpace naming it and
    work_dir=; nothing is restored and the work dir is left empty."""
    proc, log = workloads.python(BIG)
    wait_count(log, 3, timeout=60)
    ckpt = proc.checkpoint(tmp_path / "big.tar.zst")
    assert_gone(proc.pid)
    with tmpfs(tmp_path / "small", "8m") as small:
        with pytest.raises(cedana.NoSpace) as caught:
            cedana.restore(ckpt.path, work_dir=small)
        assert str(caught.value).startswith(f"no space left on device in {small}: CRIU's images")
        assert "work_dir=" in str(caught.value)
        assert list(small.iterdir()) == []
    assert procfs.holder_of(proc.pid) is None


def test_popen_parent_sees_the_kill(tmp_path: Path) -> None:
    """A process this program started with subprocess.Popen and checkpointed (so killed) is
    left for its Popen to reap: poll()/wait() report -9 (SIGKILL), not 0. A restore before
    it is reaped names the zombie and tells this process to wait() on it; after, it works."""
    script = tmp_path / "counter.py"
    script.write_text(textwrap.dedent(COUNTER))
    log = tmp_path / "counter.log"
    with log.open("ab") as sink:
        child = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    try:
        wait_count(log, 3)
        ckpt = cedana.Process(child.pid).checkpoint(tmp_path / "popen.tar.zst")
        assert procfs.proc_info(child.pid).state == "Z", "cedana did not reap it"
        with pytest.raises(cedana.PidInUse) as caught:
            cedana.restore(ckpt.path)
        message = str(caught.value)
        assert f"cannot restore pid {child.pid}" in message
        assert f"whose parent is this very process (pid {os.getpid()})" in message
        assert "call wait() on it" in message
        assert child.wait(timeout=10) == -signal.SIGKILL
        restored = cedana.restore(ckpt.path)
        try:
            assert restored.pid == child.pid
            wait_count(log, len(numbers(log)) + 3)
        finally:
            restored.kill()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
