"""Rootfs-only checkpoint of a podman container: cedana beside ``podman commit`` and
``podman container checkpoint --export``.

Workload: a busybox container (an image made here from busybox-static with ``podman
import``; runc, overlay storage, ``--network none``) that wrote ``--fs-mib`` MiB (256 by
default) of random files into its root filesystem, in 4 MiB files, and then holds about
``--mib`` MiB in memory. The benchmark keeps podman's storage and containers.conf in its
scratch directory. In the same run, on the same container and disk, each leaving the
container running, it times:

- ``podman commit NAME IMAGE``: the container's layer as a new image in podman's store
  (the baseline: what saves a container's files in podman's own terms; the image is
  removed after each round);
- ``podman container checkpoint --leave-running --export FILE --compress zstd``: CRIU's
  dump of the memory *and* the rootfs changes, archived (more than a rootfs-only
  checkpoint does, shown for scale);
- ``PodmanContainer.checkpoint(rootfs_only=True)``: the container's cgroup frozen while
  its containers/storage layer is read into a tar, thawed, then the zstd artifact written,
  fsynced and read back (no CRIU).

Prints medians, sizes and ratios; run with ``python -m benchmarks.rootfs [--rounds N]
[--fs-mib N] [--mib N] [--level N] [--dir DIR]`` (as root, with podman, runc, CRIU and
busybox-static installed).
"""

from __future__ import annotations

import contextlib
import sys
from functools import partial
from pathlib import Path

import cedana
from benchmarks.common import arguments, du, run, scratch, table, timed, wait_until
from benchmarks.podman import IMAGE, Podman, image_tar

NAME = "bench-rootfs"


def workload(mib: int, fs_mib: int) -> str:
    """A shell that writes ``fs_mib`` MiB of random files (4 MiB each, the last smaller),
    says ``ready`` in /tmp/ready and holds about ``mib`` MiB."""
    files, rest = divmod(fs_mib, 4)
    sizes = [4] * files + ([rest] if rest else [])
    writes = "; ".join(
        f"dd if=/dev/urandom of=/data/f{i} bs=1M count={n} 2>/dev/null" for i, n in enumerate(sizes)
    )
    return (
        f"mkdir -p /data; {writes}; a=$(yes abcdefghijklmno | head -c {mib << 20}); "
        "echo ready > /tmp/ready; while true; do sleep 1; done"
    )


def main(argv: list[str] | None = None) -> int:
    p = arguments("rootfs", __doc__, mib=16)
    p.add_argument("--fs-mib", type=int, default=256, help="MiB of files the container writes")
    args = p.parse_args(argv)
    commit = "podman commit"
    export = "podman checkpoint --export (zstd, + memory)"
    ours = "cedana checkpoint --rootfs-only"
    times: dict[str, list[float]] = {commit: [], export: [], ours: []}
    sizes: dict[str, int] = {}
    frozen: list[float] = []

    with scratch(args.dir) as work:
        podman = Podman(work)
        try:
            image_tar(work / "image.tar")
            podman("import", "--quiet", str(work / "image.tar"), IMAGE)
            script = workload(args.mib, args.fs_mib)
            podman("run", "-d", "--name", NAME, "--network", "none", IMAGE, "sh", "-c", script)
            container = cedana.PodmanContainer(NAME)
            ready = Path(f"/proc/{container.pid}/root/tmp/ready")
            wait_until(ready.exists, "the container workload")

            for r in range(args.rounds):
                committed = f"localhost/cedana-bench/committed:{r}"
                times[commit].append(timed(partial(run, ["podman", "commit", NAME, committed])))
                podman("rmi", committed)

                exported = work / f"podman{r}.tar.zst"
                argv = ["podman", "container", "checkpoint", "--leave-running",
                        "--export", str(exported), "--compress", "zstd", NAME]  # fmt: skip
                times[export].append(timed(partial(run, argv)))
                sizes[export] = du(exported)
                exported.unlink()

                artifact = work / f"cedana{r}.tar.zst"
                checkpoint = partial(
                    container.checkpoint, artifact, rootfs_only=True, level=args.level
                )
                times[ours].append(timed(checkpoint))
                sizes[ours] = du(artifact)
                frozen.append(float(cedana.open(artifact).manifest.workload["frozen_seconds"]))
                artifact.unlink()
            assert container.running, "the container stopped during the benchmark"
        finally:
            with contextlib.suppress(Exception):
                podman.stop()
    print(
        f"podman container with {args.fs_mib} MiB of new files (random, 4 MiB each) and "
        f"{args.mib} MiB of memory, {args.rounds} rounds, on {args.dir}; every method leaves "
        "it running; cedana at "
        f"{'its default zstd level' if args.level is None else f'zstd level {args.level}'}"
    )
    print(table("rootfs checkpoint", [(k, v, sizes.get(k)) for k, v in times.items()], commit))
    frozen.sort()
    print(
        f"  cedana's container frozen while its layer was read: median {frozen[len(frozen) // 2]:.3f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
