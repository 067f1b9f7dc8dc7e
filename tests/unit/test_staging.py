"""Scratch directories for images never outlive their use, nor their owner."""

from __future__ import annotations

from pathlib import Path

import pytest

from cedana import staging
from cedana.errors import CriuError


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
