"""Scratch directories for images never outlive their use, nor their owner."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from cedana import procfs, staging
from cedana.errors import CedanaError, CriuError, NoSpace


def test_scratch_dir_is_private_and_removed(tmp_path: Path) -> None:
    """The scratch dir is 0700 and gone afterwards, on success and on error."""
    with staging.scratch_dir(".t-", parent=tmp_path) as work:
        assert work.stat().st_mode & 0o777 == 0o700
        (work / "f").write_text("x")
    assert not work.exists()
    with pytest.raises(RuntimeError), staging.scratch_dir(".t-", parent=tmp_path) as work2:
        raise RuntimeError("boom")
    assert not work2.exists()


def test_scratch_dir_keeps_the_criu_log_an_error_names(tmp_path: Path) -> None:
    """A CRIU error pointing at a log inside the scratch dir gets a copy that survives."""
    with pytest.raises(CriuError) as info, staging.scratch_dir(".t-", parent=tmp_path) as work:
        (work / "dump.log").write_text("Error (criu/x.c:1): it broke\n")
        raise CriuError("dump failed", log_path=str(work / "dump.log"))
    kept = Path(info.value.log_path or "")
    assert not kept.is_relative_to(tmp_path)
    assert "it broke" in kept.read_text()
    kept.unlink()


def test_scratch_left_by_a_dead_process_is_swept(tmp_path: Path) -> None:
    """A scratch dir whose owner is gone (killed mid-checkpoint) is removed by the next one;
    a live owner's and unrelated directories are left alone."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".cedana-dump-{dead.pid}-abc123"
    (stale / "images").mkdir(parents=True)
    live = tmp_path / ".cedana-dump-1-keep"
    live.mkdir()
    other = tmp_path / ".cedana-notes"
    other.mkdir()
    with staging.scratch_dir(".cedana-dump-", parent=tmp_path) as work:
        assert work.name.startswith(".cedana-dump-")
    assert not stale.exists()
    assert live.exists()
    assert other.exists()


def test_scratch_dir_never_points_at_a_missing_log(tmp_path: Path) -> None:
    """An error naming a CRIU log that was never written (CRIU did not run) points at none."""
    with pytest.raises(CriuError) as info, staging.scratch_dir(".t-", parent=tmp_path) as work:
        raise CriuError("runc failed first", log_path=str(work / "restore.log"))
    assert info.value.log_path is None


def test_scratch_of_a_reused_pid_is_swept(tmp_path: Path, sleeper) -> None:
    """A scratch dir named for a pid that is alive now but started at another time than its
    owner did (the pid was reused) is removed; the live owner's, and this process's own
    concurrent one, stay."""
    started = procfs.proc_info(sleeper.pid).start_time
    reused = tmp_path / f".cedana-dump-{sleeper.pid}-{started + 1}-abc123"
    live = tmp_path / f".cedana-dump-{sleeper.pid}-{started}-abc123"
    mine = tmp_path / f".cedana-dump-{staging.owner_tag()}-abc123"
    for path in (reused, live, mine):
        path.mkdir()
    with staging.scratch_dir(".cedana-dump-", parent=tmp_path) as work:
        assert work.name.startswith(f".cedana-dump-{staging.owner_tag()}-")
    assert not reused.exists()
    assert live.exists()
    assert mine.exists()


def test_kept_criu_logs_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CRIU logs kept for failed runs' errors stay at the newest KEPT_LOGS: the oldest go, the
    one just kept stays, other files are left alone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old = []
    for i in range(staging.KEPT_LOGS + 5):
        log = tmp_path / f"cedana-criu-old{i:02d}.log"
        log.write_text(f"run {i}\n")
        os.utime(log, (1_000_000 + i, 1_000_000 + i))
        old.append(log)
    other = tmp_path / "cedana-criu-notes.txt"
    other.write_text("mine")
    with pytest.raises(CriuError) as info, staging.scratch_dir(".t-", parent=tmp_path) as work:
        (work / "dump.log").write_text("Error (criu/x.c:1): it broke\n")
        raise CriuError("dump failed", log_path=str(work / "dump.log"))
    kept = Path(info.value.log_path or "")
    assert kept.parent == tmp_path and "it broke" in kept.read_text()
    logs = sorted(tmp_path.glob("cedana-criu-*.log"))
    assert len(logs) == staging.KEPT_LOGS
    assert kept in logs
    assert [log.exists() for log in old] == [False] * 6 + [True] * (staging.KEPT_LOGS - 1)
    assert other.exists()


def test_full_work_dir_is_no_space(tmp_path: Path) -> None:
    """ENOSPC inside a scratch dir that says what it holds (ours, or CRIU's as its log tells)
    is a NoSpace (an OSError with the errno) naming the directory, what filled it and
    work_dir=; without ``fills`` the error passes as it was."""
    with (
        pytest.raises(NoSpace) as info,
        staging.scratch_dir(".t-", parent=tmp_path, fills="CRIU's images"),
    ):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    message = str(info.value)
    assert f"no space left on device in {tmp_path}: CRIU's images" in message
    assert "free space there, or pass work_dir=" in message
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path)
    with pytest.raises(OSError) as raw, staging.scratch_dir(".t-", parent=tmp_path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert not isinstance(raw.value, CedanaError)

    with (
        pytest.raises(NoSpace) as criu,
        staging.scratch_dir(".t-", parent=tmp_path, fills="CRIU's images") as work,
    ):
        (work / "dump.log").write_text("Error (criu/image.c:1): write: No space left on device\n")
        raise CriuError(
            "CRIU dump failed: see the log",
            log_tail="Error (criu/image.c:1): write: No space left on device",
            log_path=str(work / "dump.log"),
        )
    assert isinstance(criu.value.__cause__, CriuError)
    kept = criu.value.__cause__.log_path
    assert kept is not None and f"CRIU's log: {kept}" in str(criu.value)
    Path(kept).unlink()
    assert list(tmp_path.iterdir()) == []
