"""Shared fixtures: the machine report header, strict capability checks, workloads."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import cedana

from tests.capabilities import STRICT, criu_version, runtime_version

PR_SET_CHILD_SUBREAPER = 36


def pytest_report_header(config: pytest.Config) -> list[str]:
    crv = criu_version()
    return [
        f"kernel: {platform.release()}  arch: {platform.machine()}  root: {os.geteuid() == 0}",
        f"criu: {'.'.join(map(str, crv)) if crv else 'not found'}",
        f"runc: {runtime_version('runc')}; containerd: {runtime_version('containerd')}",
        f"qemu: {runtime_version('qemu-system-x86_64')}",
        f"strict capabilities (CI): {STRICT}",
    ]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "missing_capability(reason): fails under CI")
    config.addinivalue_line("markers", "capabilities_met: what the test needs is here")
    # Restored trees are orphaned by CRIU; as subreaper this process adopts and can reap them
    # (this machine's init does not reap orphans, and a zombie holds the pid a restore needs).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("missing_capability"):
        pytest.fail(f"CI=true and a needed capability is missing: {marker.args[0]}")


def reap_zombie_children() -> None:
    """Reap every zombie whose parent is this process (adopted orphans included)."""
    from cedana import procfs
    from cedana.errors import ProcessNotFound

    for pid in procfs.children(os.getpid()):
        with contextlib.suppress(ProcessNotFound, ChildProcessError):
            if procfs.proc_info(pid).state == "Z":
                os.waitpid(pid, os.WNOHANG)


@pytest.fixture(scope="session", autouse=True)
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """cedana's config dir (host signing key, trusted keys) for the whole run: a temporary
    one, so no test writes /etc/cedana or the user's own (one test checks that default on
    purpose). Subprocesses (the command line) inherit it."""
    from cedana.artifact.signing import CONFIG_DIR_ENV

    path = tmp_path_factory.mktemp("config") / "cedana"
    before = os.environ.get(CONFIG_DIR_ENV)
    os.environ[CONFIG_DIR_ENV] = str(path)
    yield path
    if before is None:
        os.environ.pop(CONFIG_DIR_ENV, None)
    else:
        os.environ[CONFIG_DIR_ENV] = before


@pytest.fixture(autouse=True)
def _reap_after_test() -> Iterator[None]:
    yield
    reap_zombie_children()


class Workloads:
    """Starts python workloads checkpoint-ready and kills every pid it saw at teardown."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.pids: list[int] = []
        self._n = 0

    def python(self, code: str, *, log: Path | None = None) -> tuple[cedana.Process, Path]:
        import cedana

        self._n += 1
        script = self.tmp / f"workload{self._n}.py"
        script.write_text(textwrap.dedent(code))
        log = log or self.tmp / f"workload{self._n}.log"
        # Unbuffered stdio writes a line in pieces, which interleave between processes.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        proc = cedana.spawn([sys.executable, str(script)], log=log, cwd=self.tmp, env=env)
        self.pids.append(proc.pid)
        return proc, log

    def track(self, pid: int) -> None:
        self.pids.append(pid)

    def kill_all(self) -> None:
        import signal

        from cedana import procfs

        for pid in self.pids:
            with contextlib.suppress(Exception):
                for info in reversed(procfs.tree(pid)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(info.pid, signal.SIGKILL)
        time.sleep(0.05)
        reap_zombie_children()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """``sleep 60`` in a session of its own, stdio on /dev/null: a tree to plan and dump."""
    p = subprocess.Popen(
        ["sleep", "60"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
    )
    yield p
    p.kill()
    p.wait()


@pytest.fixture
def workloads(tmp_path: Path) -> Iterator[Workloads]:
    w = Workloads(tmp_path)
    try:
        yield w
    finally:
        w.kill_all()


def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"
) -> object:
    """Poll ``predicate`` until truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The cross-runtime restore matrix, when its tests ran (which pairs pass)."""
    module = sys.modules.get("tests.integration.test_cross_runtime")
    lines = module.matrix_lines() if module is not None else []
    if lines:
        terminalreporter.section("cross-runtime restore matrix")
        for line in lines:
            terminalreporter.write_line(line)
