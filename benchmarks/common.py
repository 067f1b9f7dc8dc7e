"""Helpers shared by the benchmarks: timing, reaping, tables."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def arguments(name: str, doc: str | None, *, mib: int) -> argparse.ArgumentParser:
    """The options every benchmark takes; a benchmark adds its own."""
    p = argparse.ArgumentParser(prog=f"benchmarks.{name}", description=doc)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mib", type=int, default=mib, help="workload memory in MiB")
    p.add_argument("--level", type=int, default=3, help="zstd level (cedana, and zstd peers)")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where to write")
    return p


def container_workload(mib: int, fs_mib: int) -> str:
    """A container shell holding ``mib`` MiB (half random as base64, half a pattern) after
    writing ``fs_mib`` MiB of random files; it says ``ready`` in /tmp/ready."""
    half = (mib << 20) // 2
    return (
        f"dd if=/dev/urandom of=/data/blob bs=1M count={fs_mib} 2>/dev/null; "
        f"a=$(head -c {half * 3 // 4} /dev/urandom | base64 -w0); "
        f"b=$(yes abcdefghijklmno | head -c {half}); "
        "echo ready > /tmp/ready; while true; do sleep 1; done"
    )


def become_subreaper() -> None:
    """Adopt orphans (restored trees) so they can be reaped and their pids freed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap() -> None:
    """Reap every finished child (adopted ones included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_and_wait(pid: int, timeout: float = 10) -> None:
    """SIGKILL ``pid`` and wait until it is gone (reaped if it was ours)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap()
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.01)
    raise RuntimeError(f"pid {pid} did not go away")


def settle() -> None:
    """Start every method on the same footing: nothing dirty, nothing cached.

    Without it, whichever method runs after a big write pays for the writeback, and
    later rounds pay for memory the page cache holds (seen here as 3x slower rounds).
    """
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(fn: Callable[[], object], *, settled: bool = True) -> float:
    """Seconds ``fn`` takes, after :func:`settle` unless ``settled`` is False (for the
    second half of one method timed in two calls)."""
    if settled:
        settle()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(cmd: Sequence[str]) -> None:
    """Run a peer command; its output is shown only when it fails."""
    done = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def wait_until(ready: Callable[[], object], what: str, timeout: float = 300) -> None:
    """Poll ``ready`` until true; a workload that never gets ready ends the run clearly."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def scratch(parent: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bench-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def table(title: str, rows: list[tuple[str, list[float], int | None]], baseline: str) -> str:
    """Median times, sizes and the ratio of each row to ``baseline``."""
    med = {name: statistics.median(times) for name, times, _ in rows}
    base = med[baseline]
    lines = [
        title,
        f"  {'method':44} {'median s':>9} {'min s':>7} {'size MiB':>9} {'vs ' + baseline[:18]:>22}",
    ]
    for name, times, size in rows:
        size_s = f"{size / 2**20:9.1f}" if size is not None else f"{'':9}"
        lines.append(
            f"  {name:44} {med[name]:9.3f} {min(times):7.3f} {size_s} {med[name] / base:21.2f}x"
        )
    return "\n".join(lines)
