"""CRIU's own zdtm static tests, checkpointed and restored through cedana: a short subset
of ``nox -s zdtm`` (docs/zdtm.rst).

Each zdtm static test sets up some kernel state, waits for a checkpoint and a restore,
then checks that the state survived and writes PASS or FAIL. The subset covers what
cedana's process layer got wrong (ptys of the tree's own taken for a terminal; pipes
half closed or with an end in flight in a unix socket taken for pipes leading
outside, their data lost or handed to CRIU twice) plus a few plain ones. Every test runs through ``python -m tests.zdtm`` (zdtm_ct's fresh
namespaces are only reachable from a new process), once each, through cedana only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.capabilities import integration, requires_tool, requires_zdtm, zdtm_source

ROOT = Path(__file__).resolve().parents[2]

#: pty00/pty01/tty02: ptys inside the tree (not a controlling terminal from outside);
#: scm00/scm09: descriptors in flight over unix sockets; fd_from_pidfd: a descriptor
#: taken from another process with pidfd_getfd; xids00: uids, gids and groups;
#: pipe00, env00, sockets00: plain pipes, the environment, unix sockets.
SUBSET = [
    "pty00",
    "pty01",
    "tty02",
    "scm00",
    "scm09",
    "fd_from_pidfd",
    "xids00",
    "pipe00",
    "env00",
    "sockets00",
]

pytestmark = [*integration, requires_zdtm, requires_tool("make", "unshare")]


@pytest.fixture(scope="session")
def zdtm_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CRIU source tree, with zdtm's library and the subset's tests built (once)."""
    from tests.zdtm.suite import build, locked

    source = zdtm_source()
    assert source is not None  # requires_zdtm
    log = tmp_path_factory.mktemp("zdtm-build") / "build.log"
    with locked(source / "test" / "zdtm" / "static"):
        build(source, SUBSET, log)
    missing = [n for n in SUBSET if not (source / "test" / "zdtm" / "static" / n).is_file()]
    assert not missing, f"{', '.join(missing)} did not build; see {log}"
    return source


@pytest.mark.parametrize("name", SUBSET)
def test_zdtm_static_test_passes_through_cedana(zdtm_tree: Path, name: str, tmp_path: Path):
    """zdtm's ``name``, started as zdtm.py starts it, checkpointed with
    ``cedana.Process(pid).checkpoint`` and restored with ``cedana.restore``, still finds
    its state intact: its own check writes PASS."""
    results = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.zdtm",
            "--only",
            name,
            "--mode",
            "cedana",
            "--no-build",
            "--src",
            str(zdtm_tree),
            "--results",
            str(results),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert results.is_file(), f"the runner wrote no results: {done.stderr.strip()[-2000:]}"
    (entry,) = json.loads(results.read_text())["tests"]
    assert entry["skip"] is None, f"{name} was skipped: {entry['skip']}"
    outcome = entry["cedana"]
    assert outcome["status"] == "pass", (
        f"{name} failed through cedana at {outcome['step']}: {outcome['reason']}"
    )
