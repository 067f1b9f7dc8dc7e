"""Checkpoint and restore of a podman container, cedana beside podman's own.

Workload: a busybox container (an image made here from busybox-static with
``podman import``; runc, overlay storage, ``--network none``) whose shell holds
about ``--mib`` MiB in memory (half random bytes as base64, half a repeating
pattern) and which wrote ``--fs-mib`` MiB of random files into its root
filesystem (:func:`benchmarks.common.container_workload`). The benchmark keeps
podman's storage and containers.conf in its scratch directory. In the same run,
on the same container and disk, it times:

- checkpoint, both with ``--leave-running`` (the container runs on between
  rounds, so both dump the same container): ``podman container checkpoint
  --leave-running --export FILE --compress zstd`` (CRIU images, the rootfs
  changes, podman's archive step); ``PodmanContainer.checkpoint`` with
  ``leave_running`` (dump, the containers/storage layer captured while frozen,
  zstd tar, fsync, full verification);
- restore, each of its own archive into a new container beside the original:
  ``podman container restore --import FILE --name NEW``; ``cedana.restore`` into
  podman (verify, unpack and confine, podman's import layout, ``podman container
  restore --import``).

Each restored container is removed before the next round. Prints medians, sizes
and ratios; run with ``python -m benchmarks.podman [--rounds N] [--mib N]
[--fs-mib N] [--level N] [--dir DIR]`` (as root, with podman, runc, CRIU and
busybox-static installed).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import cedana
from benchmarks.common import (
    arguments,
    busybox_image_tar,
    container_workload,
    du,
    run,
    scratch,
    table,
    timed,
    wait_until,
)

NAME = "bench"
IMAGE = "localhost/cedana-bench/busybox:1"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def image_tar(path: Path) -> None:
    """busybox-static's tree as a tar for ``podman import``."""
    busybox_image_tar(path, "podman")


class Podman:
    """podman with the benchmark's own storage and containers.conf, in ``work``."""

    def __init__(self, work: Path):
        self.work = work
        (work / "containers.conf").write_text(CONTAINERS_CONF)
        (work / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{work}/graph"\nrunroot = "{work}/run"\n'
        )
        # podman, and the conmon exit commands it writes, read these; so does cedana's
        # PodmanCLI, which runs the podman on PATH with this process's environment.
        os.environ["CONTAINERS_CONF"] = str(work / "containers.conf")
        os.environ["CONTAINERS_STORAGE_CONF"] = str(work / "storage.conf")

    def __call__(self, *args: str) -> None:
        run(["podman", *args])

    def remove(self, name: str) -> None:
        subprocess.run(
            ["podman", "rm", "--force", "--time", "0", "--ignore", name],
            capture_output=True,
            check=False,
        )

    def stop(self) -> None:
        for args in (["rm", "--all", "--force", "--time", "0"], ["rmi", "--all", "--force"]):
            subprocess.run(["podman", *args], capture_output=True, check=False)
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            mountpoint = line.split()[4]
            if mountpoint.startswith(str(self.work) + "/"):
                subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
        for key in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF"):
            os.environ.pop(key, None)


def main(argv: list[str] | None = None) -> int:
    p = arguments("podman", __doc__, mib=256)
    p.add_argument("--fs-mib", type=int, default=64, help="MiB of files the container writes")
    args = p.parse_args(argv)
    podman_ck = "podman checkpoint --export (zstd)"
    podman_rs = "podman restore --import"
    cedana_ck = "cedana checkpoint"
    cedana_rs = "cedana restore (into podman)"
    dump: dict[str, list[float]] = {podman_ck: [], cedana_ck: []}
    rest: dict[str, list[float]] = {podman_rs: [], cedana_rs: []}
    sizes: dict[str, int] = {}

    with scratch(args.dir) as work:
        podman = Podman(work)
        try:
            image_tar(work / "image.tar")
            podman("import", "--quiet", str(work / "image.tar"), IMAGE)
            script = container_workload(args.mib, args.fs_mib)
            podman("run", "-d", "--name", NAME, "--network", "none", IMAGE, "sh", "-c", script)
            container = cedana.PodmanContainer(NAME)
            ready = Path(f"/proc/{container.pid}/root/tmp/ready")
            wait_until(ready.exists, "the container workload")

            for r in range(args.rounds):
                exported, new = work / f"podman{r}.tar.zst", f"{NAME}-podman{r}"
                export = ["podman", "container", "checkpoint", "--leave-running",
                          "--export", str(exported), "--compress", "zstd", NAME]  # fmt: skip
                dump[podman_ck].append(timed(partial(run, export)))
                sizes[podman_ck] = du(exported)
                restore = ["podman", "container", "restore", "--import", str(exported),
                           "--name", new]  # fmt: skip
                rest[podman_rs].append(timed(partial(run, restore)))
                podman.remove(new)
                exported.unlink()

                artifact, new = work / f"cedana{r}.tar.zst", f"{NAME}-cedana{r}"
                checkpoint = partial(
                    container.checkpoint, artifact, leave_running=True, level=args.level
                )
                dump[cedana_ck].append(timed(checkpoint))
                sizes[cedana_ck] = du(artifact)
                rest[cedana_rs].append(timed(partial(cedana.restore, artifact, name=new)))
                podman.remove(new)
                artifact.unlink()
        finally:
            with contextlib.suppress(Exception):
                podman.stop()
    print(
        f"podman container with {args.mib} MiB of memory and {args.fs_mib} MiB of new files, "
        f"{args.rounds} rounds, on {args.dir}; both checkpoints leave the container running "
        f"and hold its filesystem changes, both zstd (cedana at "
        f"{'its default level' if args.level is None else f'level {args.level}'}); each "
        "restore makes a new podman container from its own archive"
    )
    print(table("checkpoint", [(k, v, sizes.get(k)) for k, v in dump.items()], podman_ck))
    print(table("restore", [(k, v, None) for k, v in rest.items()], podman_rs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
