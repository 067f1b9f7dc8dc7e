"""The command line end to end, as a user runs it (``python -m cedana``), against real CRIU."""

from __future__ import annotations

import json
from pathlib import Path

from tests.capabilities import integration
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
