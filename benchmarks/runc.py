"""Checkpoint and restore of a runc container, cedana beside runc's own checkpointing.

Workload: a busybox container (root filesystem built here from busybox-static,
an overlay on it, as container engines mount images) whose shell holds about
``--mib`` MiB in memory (half random bytes as base64, half a repeating
pattern) and which wrote ``--fs-mib`` MiB of random files into its root
filesystem. In the same run, on the same container and disk, it times:

- checkpoint: ``runc checkpoint`` (CRIU images only: the container's file
  changes are *not* saved); ``runc checkpoint`` then ``tar | zstd -T0`` of the
  images *and* the overlay upper directory at the same level (what one scripts
  by hand to carry the same data as cedana); ``RuncContainer.checkpoint``
  (dump, the rootfs changes captured while frozen, zstd tar, fsync, full
  verification);
- restore: ``runc restore`` from the images on the original bundle;
  ``zstd -d | tar -x`` then a new overlay on the unpacked upper directory and
  ``runc restore``; ``cedana.restore`` (verify, unpack, apply the rootfs
  changes to a new overlay, ``runc restore``).

Every dump uses leave-running so one container serves every round; each
restored container is deleted before the next restore. Prints medians, sizes
and ratios; run with ``python -m benchmarks.runc [--rounds N] [--mib N]
[--fs-mib N] [--level N] [--dir DIR]`` (as root, with runc, CRIU and
busybox-static installed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import cedana
from benchmarks.common import (
    arguments,
    become_subreaper,
    container_workload,
    du,
    reap,
    run,
    scratch,
    table,
    timed,
    wait_until,
)

NAME = "cedana-bench"


def build_rootfs(root: Path) -> None:
    """A busybox root filesystem: the static binary and its applets as symlinks."""
    busybox = shutil.which("busybox", path="/bin:/usr/bin")
    if busybox is None:
        raise SystemExit("benchmarks.runc: needs busybox-static (run scripts/provision)")
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    for d in ("etc", "proc", "sys", "dev", "tmp", "root", "data"):
        (root / d).mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")


def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    data = f"lowerdir={lower},upperdir={upper},workdir={work}"
    run(["mount", "-t", "overlay", "overlay", "-o", data, str(target)])


def make_bundle(bundle: Path, lower: Path, script: str) -> None:
    mount_overlay(lower, bundle / "upper", bundle / "work", bundle / "rootfs")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sh", "-c", script]
    config["root"] = {"path": "rootfs", "readonly": False}
    (bundle / "config.json").write_text(json.dumps(config, indent=2))


def detached(cmd: list[str], log: Path) -> None:
    """Run a runc command whose container keeps its stdio: /dev/null, never a pipe we wait on."""
    done = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode != 0:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {tail}")


def main(argv: list[str] | None = None) -> int:
    p = arguments("runc", __doc__, mib=256)
    p.add_argument("--fs-mib", type=int, default=64, help="MiB of files the container writes")
    args = p.parse_args(argv)
    become_subreaper()
    level = str(args.level)
    dump: dict[str, list[float]] = {
        "runc checkpoint (no rootfs)": [],
        "runc checkpoint + tar|zstd (images+upper)": [],
        "runc checkpoint + tar|zstd + fsync": [],
        "cedana checkpoint": [],
    }
    rest: dict[str, list[float]] = {
        "runc restore (no rootfs)": [],
        "zstd -d|tar -x + overlay + runc restore": [],
        "cedana restore": [],
    }
    sizes: dict[str, int] = {}

    with scratch(args.dir) as work:
        state = work / "state"
        runc_log = work / "runc.log"
        runc = ["runc", "--root", str(state), "--log", str(runc_log)]
        lower = work / "image"
        build_rootfs(lower)
        bundle = work / "bundle"
        make_bundle(bundle, lower, container_workload(args.mib, args.fs_mib))
        mounts = [bundle / "rootfs"]
        container = cedana.RuncContainer(NAME, root=state)

        def runc_checkpoint(images: Path) -> None:
            run(
                [
                    *runc,
                    "checkpoint",
                    "--leave-running",
                    "--image-path",
                    str(images),
                    "--work-path",
                    str(images) + "-log",
                    NAME,
                ]
            )

        def runc_checkpoint_tar(images: Path, tarball: Path, durable: bool = False) -> None:
            runc_checkpoint(images)
            tar = (
                f"tar -cf - -C {images.parent} {images.name} -C {bundle} upper "
                f"| zstd -q -{level} -T0 -o {tarball}"
            )
            run(["bash", "-c", tar])
            if durable:  # what cedana also does before it lets a container die
                run(["sync", str(tarball)])

        def untar_restore(tarball: Path, out: Path, images_name: str) -> None:
            out.mkdir()
            run(["bash", "-c", f"zstd -q -d -c {tarball} | tar -C {out} -xf -"])
            mount_overlay(lower, out / "upper", out / "work", out / "rootfs")
            mounts.append(out / "rootfs")
            shutil.copy2(bundle / "config.json", out / "config.json")
            detached(
                [
                    *runc,
                    "restore",
                    "--detach",
                    "--image-path",
                    str(out / images_name),
                    "--bundle",
                    str(out),
                    NAME,
                ],
                runc_log,
            )

        def delete() -> None:
            run([*runc, "delete", "--force", NAME])
            reap()

        try:
            detached([*runc, "run", "-d", "--bundle", str(bundle), NAME], runc_log)
            wait_until((bundle / "upper" / "tmp" / "ready").exists, "the container workload")
            for r in range(args.rounds):
                images, timages = work / f"runc{r}", work / f"runc-t{r}"
                tarball, artifact = work / f"runc{r}.tar.zst", work / f"cedana{r}.tar.zst"
                dump["runc checkpoint (no rootfs)"].append(timed(partial(runc_checkpoint, images)))
                dump["runc checkpoint + tar|zstd (images+upper)"].append(
                    timed(partial(runc_checkpoint_tar, timages, tarball))
                )
                durable = partial(
                    runc_checkpoint_tar, work / f"runc-s{r}", work / f"s{r}.tar.zst", True
                )
                dump["runc checkpoint + tar|zstd + fsync"].append(timed(durable))
                dump["cedana checkpoint"].append(
                    timed(
                        partial(
                            container.checkpoint, artifact, leave_running=True, level=args.level
                        )
                    )
                )
                sizes["runc checkpoint (no rootfs)"] = du(images)
                sizes["runc checkpoint + tar|zstd (images+upper)"] = du(tarball)
                sizes["cedana checkpoint"] = du(artifact)
            delete()
            for r in range(args.rounds):
                restore = [
                    *runc,
                    "restore",
                    "--detach",
                    "--image-path",
                    str(work / f"runc{r}"),
                    "--bundle",
                    str(bundle),
                    NAME,
                ]
                rest["runc restore (no rootfs)"].append(timed(partial(detached, restore, runc_log)))
                delete()
                untar = partial(
                    untar_restore, work / f"runc{r}.tar.zst", work / f"u{r}", f"runc-t{r}"
                )
                rest["zstd -d|tar -x + overlay + runc restore"].append(timed(untar))
                delete()
                restore_cedana = partial(
                    cedana.restore, work / f"cedana{r}.tar.zst", root=state, bundle=work / f"c{r}"
                )
                rest["cedana restore"].append(timed(restore_cedana))
                cedana.RuncContainer(NAME, root=state).delete()
                reap()
        finally:
            subprocess.run([*runc, "delete", "--force", NAME], capture_output=True, check=False)
            for m in reversed(mounts):
                subprocess.run(["umount", "-l", str(m)], capture_output=True, check=False)
            reap()
    print(
        f"runc container with {args.mib} MiB of memory and {args.fs_mib} MiB of new files, "
        f"zstd level {args.level}, {args.rounds} rounds, on {args.dir}"
    )
    print(
        table(
            "checkpoint",
            [(k, v, sizes.get(k)) for k, v in dump.items()],
            "runc checkpoint + tar|zstd (images+upper)",
        )
    )
    print(
        table(
            "restore",
            [(k, v, None) for k, v in rest.items()],
            "zstd -d|tar -x + overlay + runc restore",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
