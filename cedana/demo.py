"""``cedana demo``: spawn a counter, checkpoint it, restore it, show it went on."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import cedana
from cedana.units import human_bytes

__all__ = ["run_demo"]

# A small stateful workload: its count lives only in memory.
COUNTER = """
import time
n = 0
while True:
    n += 1
    print(n, flush=True)
    time.sleep(0.1)
"""


def _last_count(log: Path) -> int:
    lines = log.read_text().split()
    return int(lines[-1]) if lines else 0


def _wait_for_count(log: Path, at_least: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and _last_count(log) >= at_least:
            return _last_count(log)
        time.sleep(0.05)
    raise cedana.CedanaError(f"the demo counter did not reach {at_least} in {timeout}s")


def run_demo(output: str | None = None) -> int:
    """Run the demo, printing each step; return 0 when the counter continued."""
    report = cedana.check()
    print(f"CRIU {report.version_text} on Linux {report.kernel}")
    with tempfile.TemporaryDirectory(prefix="cedana-demo-") as tmp:
        log = Path(tmp) / "counter.log"
        artifact = Path(output) if output else Path(tmp) / "counter.tar.zst"
        proc = cedana.spawn([sys.executable, "-c", COUNTER], log=log)
        restored = None
        try:
            print(f"1. spawned a counter (pid {proc.pid}), counting in memory into {log}")
            before = _wait_for_count(log, 20)
            print(f"   it has counted to {before}")

            t0 = time.monotonic()
            ckpt = proc.checkpoint(artifact, overwrite=True)
            t1 = time.monotonic()
            at_checkpoint = _last_count(log)
            print(
                f"2. checkpointed to {artifact} in {t1 - t0:.2f}s "
                f"({human_bytes(ckpt.size)}, {len(ckpt.manifest.members)} members)"
            )
            stopped = not proc.running
            print(f"   the counter was at {at_checkpoint}; the workload is stopped: {stopped}")

            t0 = time.monotonic()
            restored = cedana.restore(artifact)
            t1 = time.monotonic()
            print(f"3. restored in {t1 - t0:.2f}s as pid {restored.pid}")
            after = _wait_for_count(log, at_checkpoint + 10)
            counts = [int(x) for x in log.read_text().split()]
            resumed = counts[counts.index(at_checkpoint) + 1 :]
            print(
                f"   it went on: {at_checkpoint} -> {' '.join(map(str, resumed[:5]))} ... {after}"
            )
            ok = resumed[:3] == [at_checkpoint + 1, at_checkpoint + 2, at_checkpoint + 3]
            print("   continued from where it was, not from 1" if ok else "   DID NOT continue")
            return 0 if ok else 1
        finally:
            if restored is not None:
                restored.kill()
            if proc.running:
                proc.kill()
