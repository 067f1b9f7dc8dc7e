"""The command line end to end, as a user runs it (``python -m cedana``), against real CRIU."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest

from tests.capabilities import integration, requires_tool
from tests.conftest import Workloads, reap_zombie_children, wait_for
from tests.helpers import run_cedana

pytestmark = integration

COUNTER = """
    import time
    n = 0
    while True:
        n += 1
        print(n, flush=True)
        time.sleep(0.02)
"""


def count(log: Path) -> int:
    return len(log.read_text().split())


NOBODY = 65534


def run_cedana_as(uid: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m cedana ARGS`` as an unprivileged user (no capabilities at all)."""
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return subprocess.run(
        [*drop, sys.executable, "-m", "cedana", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
    )


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory others may enter (pytest's tmp_path is under a 0700 one), removed after."""
    path = Path(tempfile.mkdtemp(prefix="cedana-cli-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_check_json() -> None:
    """`cedana check --json` is one JSON object saying CRIU is usable here."""
    out = run_cedana("check", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["usable"] is True
    assert data["check"] is True
    assert data["version"].startswith("4.")
    assert "mem_track" in data["features"]


def test_checkpoint_inspect_restore(workloads: Workloads, tmp_path: Path) -> None:
    """checkpoint -> inspect --json -> restore --json round trip; the counter goes on."""
    proc, log = workloads.python(COUNTER)
    wait_for(lambda: count(log) > 5, what="counter")
    artifact = tmp_path / "c.tar.zst"
    out = run_cedana("checkpoint", str(proc.pid), "-o", str(artifact), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["kind"] == "process"
    reap_zombie_children()  # the workload was our child; its zombie would hold the pid
    seen = count(log)

    out = run_cedana("inspect", str(artifact), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["images"]["processes"][0]["pid"] == proc.pid
    text = run_cedana("inspect", str(artifact))
    assert str(proc.pid) in text.stdout

    out = run_cedana("restore", str(artifact), "--json")
    assert out.returncode == 0, out.stderr
    pid = json.loads(out.stdout)["pid"]
    workloads.track(pid)
    assert pid == proc.pid
    wait_for(lambda: count(log) > seen + 5, what="restored counter")
    numbers = [int(x) for x in log.read_text().split()]
    assert numbers[seen] == numbers[seen - 1] + 1


def test_errors_are_one_line_and_nonzero(tmp_path: Path) -> None:
    """Bad targets, missing pids and missing files: exit 1, one line on stderr, no traceback."""
    for args in (
        ["checkpoint", "notapid", "-o", str(tmp_path / "x")],
        ["checkpoint", "999999999", "-o", str(tmp_path / "x")],
        ["restore", str(tmp_path / "missing.tar.zst")],
        ["inspect", str(tmp_path / "missing.tar.zst")],
    ):
        out = run_cedana(*args)
        assert out.returncode == 1, args
        assert out.stderr.startswith("cedana: error: "), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "Traceback" not in out.stderr


def test_restore_of_a_bad_artifact(tmp_path: Path) -> None:
    """A file that is not a checkpoint is refused with a clear line."""
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(b"not a checkpoint at all")
    out = run_cedana("restore", str(bad))
    assert out.returncode == 1
    assert "checkpoint" in out.stderr
    assert out.stderr.startswith("cedana: error: "), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


STEP = re.compile(r" *\d+\.\d{3}s cedana(\.\w+)*: .*")


def test_verbose_shows_the_criu_dump_and_its_time(workloads: Workloads, tmp_path: Path) -> None:
    """`cedana -v checkpoint` shows each step on stderr as `  0.123s cedana.criu: ...`, the
    CRIU dump among them with its duration; without -v, a successful checkpoint and inspect
    write nothing to stderr."""
    proc, log = workloads.python(COUNTER)
    wait_for(lambda: count(log) > 2, what="counter")
    artifact = tmp_path / "v.tar.zst"
    out = run_cedana("-v", "checkpoint", str(proc.pid), "-o", str(artifact), "--leave-running")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines, "-v showed no step"
    assert all(STEP.fullmatch(line) for line in lines), out.stderr
    assert any(
        re.fullmatch(r" *\d+\.\d{3}s cedana\.criu: criu dump: complete in \d+\.\d{3}s", line)
        for line in lines
    ), out.stderr
    assert out.stdout.startswith("checkpointed ")

    quiet = run_cedana("checkpoint", str(proc.pid), "-o", str(tmp_path / "q.tar.zst"),
                       "--leave-running")  # fmt: skip
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    shown = run_cedana("inspect", str(artifact))
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr == ""


def test_inspect_shows_the_parent_the_checkpoint_view_shows(
    workloads: Workloads, tmp_path: Path
) -> None:
    """The root's PPID is the same in `inspect` (decoded from CRIU's images, which record 0
    for it) and in the checkpoint's own view (the manifest): the real parent, this test."""
    proc, log = workloads.python(COUNTER)
    wait_for(lambda: count(log) > 2, what="counter")
    artifact = tmp_path / "p.tar.zst"
    out = run_cedana("checkpoint", str(proc.pid), "-o", str(artifact), "--leave-running", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["processes"][0] == {"pid": proc.pid, "ppid": os.getpid(), "command": ANY}

    out = run_cedana("inspect", str(artifact), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    (root,) = [p for p in info["images"]["processes"] if p["pid"] == proc.pid]
    assert root["ppid"] == os.getpid() == info["checkpoint"]["processes"][0]["ppid"]
    text = run_cedana("inspect", str(artifact)).stdout
    row = next(line.split() for line in text.splitlines() if line.split()[:1] == [str(proc.pid)])
    assert row[1] == str(os.getpid()), text


def test_json_errors_end_to_end(tmp_path: Path) -> None:
    """With --json an error is one JSON object on stdout, nothing on stderr, exit status 1."""
    for args, kind in (
        (["checkpoint", "notapid", "-o", str(tmp_path / "x"), "--json"], "CedanaError"),
        (["checkpoint", "999999999", "-o", str(tmp_path / "x"), "--json"], "ProcessNotFound"),
        (["inspect", str(tmp_path / "missing.tar.zst"), "--json"], "FileNotFoundError"),
    ):
        out = run_cedana(*args)
        assert out.returncode == 1, args
        assert out.stderr == "", out.stderr
        assert len(out.stdout.splitlines()) == 1, out.stdout
        data = json.loads(out.stdout)
        assert data["type"] == kind, data
        assert data["error"], data


@requires_tool("setpriv")
def test_inspect_needs_no_root_for_the_owner(workloads: Workloads, public_dir: Path) -> None:
    """An artifact (mode 0600) inspects as an unprivileged user who owns it; another
    unprivileged user is refused with one line."""
    proc, log = workloads.python(COUNTER)
    wait_for(lambda: count(log) > 2, what="counter")
    artifact = public_dir / "o.tar.zst"
    out = run_cedana("checkpoint", str(proc.pid), "-o", str(artifact), "--leave-running")
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(artifact.stat().st_mode) == 0o600
    os.chown(artifact, NOBODY, NOBODY)
    owner = run_cedana_as(NOBODY, "inspect", str(artifact))
    assert owner.returncode == 0, owner.stderr
    assert str(proc.pid) in owner.stdout
    other = run_cedana_as(NOBODY + 1, "inspect", str(artifact))
    assert other.returncode == 1
    assert other.stderr.startswith("cedana: error: "), other.stderr
    assert len(other.stderr.splitlines()) == 1, other.stderr
