"""Helpers shared by the benchmarks: timing, peak memory, CRIU's dump statistics, reaping,
tables.

What a measurement holds (:class:`Sample`): the wall-clock seconds of one method, the peak
resident memory (``VmHWM``) of the processes it ran, and CRIU's own account of how long the
workload was frozen, from the ``stats-dump`` image CRIU leaves beside its images.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

PR_SET_CHILD_SUBREAPER = 36
MiB = 2**20


def arguments(name: str, doc: str | None, *, mib: int) -> argparse.ArgumentParser:
    """The options every benchmark takes; a benchmark adds its own."""
    p = argparse.ArgumentParser(prog=f"benchmarks.{name}", description=doc)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mib", type=int, default=mib, help="workload memory in MiB")
    p.add_argument(
        "--level", type=int, default=None, help="cedana's zstd level (default: cedana's default)"
    )
    p.add_argument(
        "--peer-level",
        type=int,
        default=1,
        help="zstd level of the tar | zstd -T0 one-liners (default 1, as the fast path's targets)",
    )
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where to write")
    return p


def level_flags(level: int | None) -> list[str]:
    """cedana's command-line ``--level``, none at all for cedana's own default (the API takes
    ``level=None`` for that)."""
    return [] if level is None else ["--level", str(level)]


def cedana_level(level: int | None) -> str:
    """How a table's title says which zstd level cedana used."""
    return "cedana's default zstd level" if level is None else f"cedana zstd level {level}"


def cedana_cli(*args: str) -> list[str]:
    """``python -m cedana ARGS``: the command line a user runs, as a process of its own; a
    checkpoint with ``--json``, whose report carries CRIU's statistics of the dump."""
    json_flag = ["--json"] if args[:1] == ("checkpoint",) else []
    return [sys.executable, "-m", "cedana", *args, *json_flag]


def busybox_image_tar(path: Path, who: str) -> None:
    """busybox-static's tree as a tar, for ``docker import`` / ``podman import``: there is
    no registry to pull an image from. ``who`` names the benchmark in the error."""
    busybox = shutil.which("busybox", path="/bin:/usr/bin")
    if busybox is None:
        raise SystemExit(f"benchmarks.{who}: needs busybox-static (run scripts/provision)")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    with tarfile.open(path, "w") as tar:

        def add(name: str, kind: bytes, data: bytes = b"", mode: int = 0o755, link: str = ""):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for d in ("bin", "etc", "proc", "sys", "dev", "root", "data"):
            add(d, tarfile.DIRTYPE)
        add("tmp", tarfile.DIRTYPE, mode=0o1777)
        add("bin/busybox", tarfile.REGTYPE, Path(busybox).read_bytes())
        for applet in applets.stdout.split():
            if applet != "busybox":
                add(f"bin/{applet}", tarfile.SYMTYPE, link="busybox", mode=0o777)
        add("etc/passwd", tarfile.REGTYPE, b"root:x:0:0:root:/root:/bin/sh\n", mode=0o644)


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


# -- peak memory ------------------------------------------------------------------------------


@attrs.frozen
class ProcSeen:
    """What the sampler saw of one process: its name, its parent's name when first seen (a
    process may exec another program later: bash its last command), peak RSS (bytes)."""

    comm: str
    parent: str
    hwm: int


def _status(pid: int) -> tuple[str, int | None] | None:
    """Name and ``VmHWM`` of ``pid`` (None for a zombie: no memory); None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    hwm = fields.get("VmHWM")
    return fields["Name"].strip(), int(hwm.split()[0]) * 1024 if hwm is not None else None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [
                    int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                ]
    return found


class TreeSampler:
    """Polls the peak RSS (``VmHWM``, which only grows) of ``root`` and every descendant,
    every ``interval`` seconds on a thread, keeping the largest value seen per pid.

    ``VmHWM`` is the kernel's own high-water mark of a process's resident memory, so a
    sample taken any time before the process exits holds every earlier peak; what can be
    missed is growth in its last ``interval``, and a child that lives less than that.
    """

    def __init__(self, root: int, interval: float = 0.01):
        self.root = root
        self.interval = interval
        self.seen: dict[int, ProcSeen] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        todo: list[tuple[int, str]] = [(self.root, "")]
        while todo:
            pid, parent = todo.pop()
            now = _status(pid)
            if now is None:
                continue
            comm, hwm = now
            old = self.seen.get(pid)
            if hwm is not None and (old is None or hwm > old.hwm):
                self.seen[pid] = ProcSeen(comm, old.parent if old else parent, hwm)
            todo += [(child, comm) for child in _children(pid)]


def peaks(seen: Mapping[int, ProcSeen], root: int) -> dict[str, int]:
    """Peak RSS per role, from what a :class:`TreeSampler` saw under ``root``.

    ``"self"`` is ``root`` itself; ``"criu"`` the largest CRIU process whose parent is not a
    CRIU process (CRIU's restore forks children that become the restored tree and hold its
    memory: they are the workload, not CRIU); every other process counts under its name
    (``tar``, ``zstd``...), the largest of that name. Restored processes, being children of
    CRIU, are left out.
    """
    out: dict[str, int] = {}

    def put(key: str, value: int) -> None:
        out[key] = max(out.get(key, 0), value)

    for pid, p in seen.items():
        under_criu = p.parent == "criu"
        if pid == root:
            put("self", p.hwm)
            if p.comm == "criu":
                put("criu", p.hwm)
        elif p.comm == "criu" and not under_criu:
            put("criu", p.hwm)
        elif not under_criu:
            put(p.comm, p.hwm)
    return out


def reset_own_peak() -> None:
    """Reset this process's ``VmHWM`` to its current RSS (``clear_refs`` 5), so the next
    reading is the peak of what runs in between."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5\n")


# -- CRIU's dump statistics --------------------------------------------------------------------


@attrs.frozen
class DumpStats:
    """CRIU's ``stats-dump``, in microseconds: how long freezing the tree took, how long it
    then stayed frozen (until thawed or killed), and the memory dump's share."""

    freezing_us: int
    frozen_us: int
    memdump_us: int | None = None
    memwrite_us: int | None = None

    @property
    def stopped_s(self) -> float:
        """Seconds the workload did not run: freezing plus frozen time."""
        return (self.freezing_us + self.frozen_us) / 1e6


def decode_dump_stats(data: bytes) -> DumpStats | None:
    """Decode a ``stats-dump`` image (pycriu, as cedana reads every image); None when it is
    not one or holds no dump entry."""
    import io

    from pycriu import images

    try:
        image: dict[str, Any] = images.load(io.BytesIO(data), pretty=False)
        dump = image["entries"][0]["dump"]
        return DumpStats(
            freezing_us=int(dump["freezing_time"]),
            frozen_us=int(dump["frozen_time"]),
            memdump_us=int(dump["memdump_time"]) if "memdump_time" in dump else None,
            memwrite_us=int(dump["memwrite_time"]) if "memwrite_time" in dump else None,
        )
    except Exception:  # pycriu raises bare Exceptions
        return None


def stats_in_dir(images: Path) -> DumpStats | None:
    """The ``stats-dump`` raw CRIU (and runc) leave in the images directory."""
    try:
        return decode_dump_stats((images / "stats-dump").read_bytes())
    except OSError:
        return None


def stats_from_cedana(stats: Mapping[str, Any] | None) -> DumpStats | None:
    """DumpStats from cedana's report of the dump (``Checkpoint.dump_stats``, or
    ``"dump_stats"`` in ``cedana checkpoint --json``): CRIU's ``stats-dump``, decoded."""
    if not stats or "frozen_time" not in stats:
        return None
    return DumpStats(
        freezing_us=int(stats.get("freezing_time", 0)),
        frozen_us=int(stats["frozen_time"]),
        memdump_us=stats.get("memdump_time"),
        memwrite_us=stats.get("memwrite_time"),
    )


# -- measuring one method ----------------------------------------------------------------------


@attrs.frozen
class Sample:
    """One timed run of one method."""

    seconds: float
    peaks: Mapping[str, int] = attrs.field(factory=dict)  # see peaks()
    stats: DumpStats | None = None


def measure_command(
    cmd: Sequence[str],
    *,
    log: Path | None = None,
    settled: bool = True,
    tmpdir: Path | None = None,
) -> Sample:
    """Run ``cmd`` as a process of its own, after :func:`settle`; its seconds and the peak
    RSS of it and its descendants (:func:`peaks`). Its output goes to ``log`` (or nowhere),
    never to a pipe: a restored workload may inherit it. ``tmpdir`` is its ``TMPDIR``. A
    ``cedana ... --json`` command's stdout goes to a file of its own instead, and CRIU's
    statistics are read from its ``"dump_stats"``. Raises on a non-zero exit."""
    if settled:
        settle()
    env = {**os.environ, "TMPDIR": str(tmpdir)} if tmpdir is not None else None
    err = open(log, "ab") if log is not None else open(os.devnull, "wb")  # noqa: SIM115
    report = tempfile.TemporaryFile() if "--json" in cmd else None  # noqa: SIM115
    with err, report if report is not None else contextlib.nullcontext():
        start = time.perf_counter()
        child = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=report if report is not None else err,
            stderr=err,
            env=env,
        )
        with TreeSampler(child.pid) as sampler:
            _, status, _ = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        said: dict[str, Any] = {}
        if report is not None:
            report.seek(0)
            with contextlib.suppress(ValueError):
                said = json.loads(report.read() or b"{}")
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
        raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}): {tail}")
    return Sample(
        seconds, peaks(sampler.seen, child.pid), stats_from_cedana(said.get("dump_stats"))
    )


def measure_call(
    fn: Callable[[], object], *, settled: bool = True, tmpdir: Path | None = None
) -> Sample:
    """Time ``fn`` in this process, after :func:`settle`; ``self`` is this process's peak
    RSS during the call (``VmHWM`` reset first), ``criu`` that of the CRIU it ran, and the
    commands it ran count under their names. ``tmpdir`` is the temp dir during the call.
    When ``fn`` returns a checkpoint, CRIU's statistics are its ``dump_stats``."""
    if settled:
        settle()
    reset_own_peak()
    me = os.getpid()
    saved = tempfile.tempdir
    try:
        if tmpdir is not None:
            tempfile.tempdir = str(tmpdir)
        with TreeSampler(me) as sampler:
            start = time.perf_counter()
            result = fn()
            seconds = time.perf_counter() - start
    finally:
        tempfile.tempdir = saved
    stats = stats_from_cedana(getattr(result, "dump_stats", None))
    return Sample(seconds, peaks(sampler.seen, me), stats)


@attrs.define
class Method:
    """One row of a table: a method's samples over the rounds.

    ``own`` names the process whose peak RSS the row shows as the method's own: ``"self"``
    (the process the method is: cedana, or this benchmark for the in-process API), or
    process names (``("tar", "zstd")``: the largest of them).
    """

    label: str
    own: tuple[str, ...] = ("self",)
    samples: list[Sample] = attrs.field(factory=list)
    size: int | None = None

    @property
    def times(self) -> list[float]:
        return [s.seconds for s in self.samples]

    def add(self, sample: Sample, stats: DumpStats | None = None) -> Sample:
        if stats is not None:
            sample = attrs.evolve(sample, stats=stats)
        self.samples.append(sample)
        return sample

    def median(self) -> float:
        return statistics.median(self.times)

    def stopped(self) -> float | None:
        """Median seconds the workload was frozen (CRIU's stats), None without stats."""
        values = [s.stats.stopped_s for s in self.samples if s.stats is not None]
        return statistics.median(values) if values else None

    def peak(self, role: str | tuple[str, ...] | None = None) -> int | None:
        """Largest peak RSS over the rounds of ``role`` (default: the method's own)."""
        roles = (role,) if isinstance(role, str) else (role or self.own)
        values = [s.peaks[r] for s in self.samples for r in roles if r in s.peaks]
        return max(values) if values else None


Row = tuple[str, list[float], int | None] | Method


def _as_method(row: Row) -> Method:
    if isinstance(row, Method):
        return row
    label, times, size = row
    return Method(label, samples=[Sample(t) for t in times], size=size)


def _mib(value: int | None) -> str:
    return f"{value / MiB:.0f}" if value is not None else "-"


def table(title: str, rows: Sequence[Row], baseline: str, *, one_liner: str | None = None) -> str:
    """One phase's table: median, min and max seconds, size, the ratio of each median to
    ``baseline``'s (and to ``one_liner``'s), and, when measured, the frozen time (CRIU's
    freezing + frozen time, median) and peak RSS of the method's own process and of CRIU.

    ``rows`` are :class:`Method` or plain ``(label, times, size_or_None)`` tuples.
    """
    methods = [_as_method(r) for r in rows]
    by_label = {m.label: m for m in methods}
    base = by_label[baseline].median()
    liner = by_label[one_liner].median() if one_liner is not None else None
    frozen = any(m.stopped() is not None for m in methods)
    memory = any(m.samples and m.samples[0].peaks for m in methods)
    width = max(44, *(len(m.label) for m in methods))
    head = f"  {'method':{width}} {'median s':>9} {'min s':>7} {'max s':>7} {'size MiB':>9} {'x base':>7}"
    if liner is not None:
        head += f" {'x 1-liner':>9}"
    if frozen:
        head += f" {'frozen s':>8}"
    if memory:
        head += f" {'peak MiB':>8} {'criu MiB':>8}"
    lines = [title, head]
    for m in methods:
        med = m.median()
        size = f"{m.size / MiB:9.1f}" if m.size is not None else f"{'':9}"
        line = (
            f"  {m.label:{width}} {med:9.3f} {min(m.times):7.3f} {max(m.times):7.3f} {size}"
            f" {med / base:6.2f}x"
        )
        if liner is not None:
            line += f" {med / liner:8.2f}x"
        if frozen:
            stopped = m.stopped()
            line += f" {stopped:8.3f}" if stopped is not None else f" {'-':>8}"
        if memory:
            line += f" {_mib(m.peak()):>8} {_mib(m.peak('criu')):>8}"
        lines.append(line.rstrip())
    legend = f"  x base: median / median of {baseline!r}"
    if one_liner is not None:
        legend += f"; x 1-liner: / median of {one_liner!r}"
    lines.append(legend)
    if frozen:
        lines.append("  frozen: CRIU's stats-dump freezing + frozen time (median)")
    if memory:
        lines.append(
            "  peak: VmHWM of the method's own process, criu: of CRIU (largest over the rounds)"
        )
    return "\n".join(lines)


@attrs.frozen
class Target:
    """A goal to check a measured ratio or size against: ``value <= limit``."""

    what: str
    value: float | None
    limit: float
    unit: str = "x"


def targets(title: str, checks: Sequence[Target]) -> str:
    """Each check on one line: the measured value, the limit, and whether it is met."""
    width = max(len(c.what) for c in checks)
    lines = [title]
    for c in checks:
        if c.value is None:
            lines.append(f"  {c.what:{width}} {'n/a':>9}  target <= {c.limit:g}{c.unit}")
            continue
        verdict = "met" if c.value <= c.limit else "MISSED"
        lines.append(
            f"  {c.what:{width}} {c.value:8.2f}{c.unit}  target <= {c.limit:g}{c.unit}  {verdict}"
        )
    return "\n".join(lines)


def ratio(a: Method, b: Method) -> float:
    """Median of ``a`` over median of ``b``."""
    return a.median() / b.median()
