"""Restoring into a new pid namespace: what cedana's init costs, beside raw CRIU.

Workload: a Python root with two children, sleeping (a small tree: what is measured is the
namespace, not the memory). In the same run, round after round:

- restore, every method from the same artifact (or, for raw CRIU, its unpacked images):
  ``criu restore -d`` in this pid namespace (the baseline; the pids are free); raw CRIU
  in a new pid namespace the way one would script it (``unshare -p -f --kill-child
  --mount-proc sh -c 'criu restore -d ...; exec sleep'``, timed until CRIU has returned);
  ``cedana.restore(pid_namespace="current")``; ``cedana.restore(pid_namespace="new")``
  (the init, its namespace and /proc, CRIU run inside). Each restored tree is killed
  and reaped before the next;
- spawn: ``cedana.spawn`` beside ``cedana.spawn(pid_namespace=True)``, timed until the
  call returns (the workload is running), and the resident memory the namespace adds
  (the holder and the init, ``VmRSS``);
- straight after a checkpoint that killed the tree: how long the restore waits for the
  tree's own zombies when this machine's pid 1 is the one to reap them (this process is
  not made a subreaper for that phase), beside ``pid_namespace="new"``, which needs no
  waiting.

Run with ``python -m benchmarks.pidns [--rounds N] [--dir DIR]`` (as root).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cedana
from benchmarks.common import arguments, become_subreaper, kill_and_wait, reap, table
from cedana import procfs

TREE = """
import os, time
for _ in range(2):
    if os.fork() == 0:
        while True:
            time.sleep(1)
while True:
    time.sleep(1)
"""

PR_SET_CHILD_SUBREAPER = 36


def _kill_tree(pid: int) -> None:
    try:
        pids = [p.pid for p in procfs.tree(pid)]
    except cedana.ProcessNotFound:
        return
    for p in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    for p in pids:
        kill_and_wait(p)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _raw_in_new_namespace(images: Path, log: Path) -> tuple[float, subprocess.Popen[bytes]]:
    started = time.monotonic()
    # --kill-child: when unshare is killed, so is the namespace's pid 1, and all inside.
    holder = subprocess.Popen(
        [
            "unshare", "-p", "-f", "--kill-child", "--mount-proc", "sh", "-c",
            f"criu restore -d -D {images} -o {log} && echo restored; exec sleep 1000",
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    assert holder.stdout is not None
    line = holder.stdout.readline()
    took = time.monotonic() - started
    if b"restored" not in line:
        holder.kill()
        holder.wait()
        raise RuntimeError(f"raw CRIU restore in a new pid namespace failed; see {log}")
    return took, holder


def restore_phase(rounds: int, work: Path) -> str:
    proc = cedana.spawn([sys.executable, "-c", TREE])
    time.sleep(0.5)
    art = work / "tree.tar.zst"
    ckpt = proc.checkpoint(art, leave_running=True)
    proc.kill()
    images = work / "images"
    ckpt.extract(images)
    rows: dict[str, list[float]] = {k: [] for k in ("raw", "raw-new", "current", "new")}
    for _ in range(rounds):
        started = time.monotonic()
        subprocess.run(
            ["criu", "restore", "-d", "-D", str(images), "-o", str(work / "r.log")], check=True
        )
        rows["raw"].append(time.monotonic() - started)
        _kill_tree(proc.pid)
        reap()

        took, holder = _raw_in_new_namespace(images, work / "rn.log")
        rows["raw-new"].append(took)
        holder.kill()
        holder.wait()

        started = time.monotonic()
        here = cedana.restore(art, pid_namespace="current")
        rows["current"].append(time.monotonic() - started)
        here.kill()
        reap()

        started = time.monotonic()
        there = cedana.restore(art, pid_namespace="new")
        rows["new"].append(time.monotonic() - started)
        there.kill()
        reap()
    return table(
        "restore of a 3-process tree (seconds)",
        [
            ("criu restore -d (this pid namespace)", rows["raw"], None),
            ("unshare -p -f --mount-proc + criu restore -d", rows["raw-new"], None),
            ("cedana.restore(pid_namespace='current')", rows["current"], None),
            ("cedana.restore(pid_namespace='new')", rows["new"], None),
        ],
        "criu restore -d (this pid namespace)",
    )


def spawn_phase(rounds: int) -> str:
    plain: list[float] = []
    spaced: list[float] = []
    added: list[int] = []
    for _ in range(rounds):
        started = time.monotonic()
        p = cedana.spawn(["sleep", "100"])
        plain.append(time.monotonic() - started)
        p.kill()
        started = time.monotonic()
        q = cedana.spawn(["sleep", "100"], pid_namespace=True)
        spaced.append(time.monotonic() - started)
        assert q.namespace is not None
        added.append(_rss_kib(q.namespace.holder.pid) + _rss_kib(q.namespace.init))
        q.kill()
    text = table(
        "spawn (seconds until the call returns)",
        [
            ("cedana.spawn", plain, None),
            ("cedana.spawn(pid_namespace=True)", spaced, None),
        ],
        "cedana.spawn",
    )
    added.sort()
    return text + f"\n  the namespace's holder + init: {added[len(added) // 2] / 1024:.1f} MiB RSS"


def zombie_phase(rounds: int, work: Path) -> str:
    # Orphans go to this machine's pid 1 here, as they do for a workload run by a service.
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    waited: list[float] = []
    spaced: list[float] = []
    for i in range(rounds):
        for into, out in (("current", waited), ("new", spaced)):
            proc = cedana.spawn([sys.executable, "-c", TREE])
            time.sleep(0.3)
            art = work / f"z{i}{into}.tar.zst"
            proc.checkpoint(art)
            proc.wait(10)  # the root is ours; its children are pid 1's to reap
            started = time.monotonic()
            restored = cedana.restore(art, pid_namespace=into, pid_wait=30)
            out.append(time.monotonic() - started)
            restored.kill()
            art.unlink()
    become_subreaper()
    return table(
        "restore straight after a checkpoint that killed the tree (seconds)",
        [
            ("restore, waiting for pid 1 to reap its zombies", waited, None),
            ("restore into a new pid namespace", spaced, None),
        ],
        "restore into a new pid namespace",
    )


def main(argv: list[str]) -> int:
    args = arguments("pidns", __doc__, mib=0).parse_args(argv)
    become_subreaper()
    work = args.dir / f"cedana-bench-pidns-{os.getpid()}"
    work.mkdir()
    try:
        print(restore_phase(args.rounds, work))
        print()
        print(spawn_phase(args.rounds))
        print()
        print(zombie_phase(args.rounds, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        reap()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
