"""Checkpoint and restore of a 1 GiB process, cedana beside raw CRIU.

Workload: a Python process holding 1 GiB (512 MiB random, 512 MiB of a
repeating pattern). In the same run, on the same workload and disk, it times:

- checkpoint: ``criu dump`` (images only, uncompressed); ``criu dump`` then
  ``tar | zstd -T0`` at the same level (what one would script by hand), and the
  same followed by an fsync of the tarball; ``cedana checkpoint`` (dump, zstd
  tar, fsync, full verification);
- restore: ``criu restore`` from the images; ``zstd -d | tar -x`` then
  ``criu restore``; ``cedana.restore`` (verify, unpack, restore).

All dumps use leave-running so the one workload serves every round. The
peers write their images to ``--dir``; cedana stages its images where it
does by default (the temp dir) and writes the artifact to ``--dir``. Before each method
the page cache is synced and dropped (``timed`` does it), so no method pays
for another's writeback or cached memory. Prints
medians, sizes and ratios; run with ``python -m benchmarks.process [--rounds N]
[--mib N] [--level N] [--dir DIR]``.
"""

from __future__ import annotations

import shutil
import sys
from functools import partial
from pathlib import Path

import cedana
from benchmarks.common import (
    arguments,
    become_subreaper,
    du,
    kill_and_wait,
    run,
    scratch,
    table,
    timed,
    wait_until,
)

WORKLOAD = """
import os, time
half = {half}
rand = os.urandom(half)
pattern = bytes(range(256)) * (half // 256)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def start_workload(mib: int, log: Path) -> cedana.Process:
    proc = cedana.spawn([sys.executable, "-c", WORKLOAD.format(half=(mib << 20) // 2)], log=log)

    def ready() -> bool:
        if not proc.running:
            raise RuntimeError(f"the workload exited before it was ready; see {log}")
        return "ready" in (log.read_text() if log.exists() else "")

    wait_until(ready, "the workload")
    return proc


def main(argv: list[str] | None = None) -> int:
    p = arguments("process", __doc__, mib=1024)
    args = p.parse_args(argv)
    become_subreaper()
    level = str(args.level)
    dump: dict[str, list[float]] = {
        "criu dump": [],
        "criu dump + tar|zstd": [],
        "criu dump + tar|zstd + fsync": [],
        "cedana checkpoint": [],
    }
    rest: dict[str, list[float]] = {
        "criu restore": [],
        "zstd -d|tar -x + criu restore": [],
        "cedana restore": [],
    }
    sizes: dict[str, int] = {}

    def criu_dump(pid: int, images: Path) -> None:
        images.mkdir()
        run(["criu", "dump", "-t", str(pid), "-D", str(images), "-R"])

    def criu_dump_tar(pid: int, images: Path, tarball: Path, durable: bool = False) -> None:
        criu_dump(pid, images)
        run(["bash", "-c", f"tar -C {images} -cf - . | zstd -q -{level} -T0 -o {tarball}"])
        if durable:  # what cedana also does before it lets a workload die
            run(["sync", str(tarball)])

    def untar_restore(tarball: Path, out: Path) -> None:
        out.mkdir()
        run(["bash", "-c", f"zstd -q -d -c {tarball} | tar -C {out} -xf -"])
        run(["criu", "restore", "-D", str(out), "-d"])

    with scratch(args.dir) as work:
        proc = start_workload(args.mib, work / "workload.log")
        pid = proc.pid
        try:
            for r in range(args.rounds):
                images, tarball = work / f"images{r}", work / f"criu{r}.tar.zst"
                artifact = work / f"cedana{r}.tar.zst"
                dump["criu dump"].append(timed(partial(criu_dump, pid, images)))
                dump["criu dump + tar|zstd"].append(
                    timed(partial(criu_dump_tar, pid, work / f"images-t{r}", tarball))
                )
                durable = partial(
                    criu_dump_tar, pid, work / f"images-s{r}", work / f"s{r}.tar.zst", True
                )
                dump["criu dump + tar|zstd + fsync"].append(timed(durable))
                dump["cedana checkpoint"].append(
                    timed(partial(proc.checkpoint, artifact, leave_running=True, level=args.level))
                )
                sizes["criu dump"] = du(images)
                sizes["criu dump + tar|zstd"] = du(tarball)
                sizes["cedana checkpoint"] = du(artifact)
                for scratch_images in work.glob(f"images-[ts]{r}"):  # only the peers' staging
                    shutil.rmtree(scratch_images)
        finally:
            proc.kill()
            kill_and_wait(pid)
        for r in range(args.rounds):
            restore_dir = ["criu", "restore", "-D", str(work / f"images{r}"), "-d"]
            rest["criu restore"].append(timed(partial(run, restore_dir)))
            kill_and_wait(pid)
            untar = partial(untar_restore, work / f"criu{r}.tar.zst", work / f"untar{r}")
            rest["zstd -d|tar -x + criu restore"].append(timed(untar))
            kill_and_wait(pid)
            shutil.rmtree(work / f"untar{r}")
            rest["cedana restore"].append(
                timed(partial(cedana.restore, work / f"cedana{r}.tar.zst"))
            )
            kill_and_wait(pid)
    print(
        f"process with {args.mib} MiB (half random), zstd level {args.level}, "
        f"{args.rounds} rounds, on {args.dir}"
    )
    print(
        table("checkpoint", [(k, v, sizes.get(k)) for k, v in dump.items()], "criu dump + tar|zstd")
    )
    print(
        table("restore", [(k, v, None) for k, v in rest.items()], "zstd -d|tar -x + criu restore")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
