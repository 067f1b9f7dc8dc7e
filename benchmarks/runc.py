"""Checkpoint and restore of a runc container, cedana beside runc's own checkpointing.

Workload: a busybox container (root filesystem built here from busybox-static,
an overlay on it, as container engines mount images) whose shell holds about
``--mib`` MiB in memory (half random bytes as base64, half a repeating
pattern) and which wrote ``--fs-mib`` MiB of random files into its root
filesystem. In the same run, on the same container and disk, it times:

- checkpoint: ``runc checkpoint`` (CRIU images only: the container's file
  changes are *not* saved; the baseline); ``runc checkpoint`` then ``tar | zstd
  -T0`` of the images *and* the overlay upper directory at ``--peer-level`` (1
  by default; what one scripts by hand to carry the same data as cedana), with
  and without an fsync; ``RuncContainer.checkpoint`` in this process (dump, the
  rootfs changes captured while frozen, zstd tar, fsync, full verification) and
  ``cedana checkpoint runc:NAME --leave-running`` as a command of its own;
- restore: ``runc restore`` from the images on the original bundle;
  ``zstd -d | tar -x`` then a new overlay on the unpacked upper directory and
  ``runc restore``; ``cedana.restore`` and ``cedana restore`` (verify, unpack,
  apply the rootfs changes to a new overlay, ``runc restore``).

Each row also shows CRIU's frozen time (its ``stats-dump``) and the peak RSS of
the method's own process (runc, tar/zstd, cedana) and of CRIU.

Every dump uses leave-running so one container serves every round; each
restored container is deleted before the next restore. Prints medians, sizes
and ratios; run with ``python -m benchmarks.runc [--rounds N] [--mib N]
[--fs-mib N] [--level N] [--peer-level N] [--dir DIR]`` (as root, with runc, CRIU and
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
    Method,
    arguments,
    become_subreaper,
    cedana_cli,
    cedana_level,
    container_workload,
    du,
    level_flags,
    measure_call,
    measure_command,
    reap,
    run,
    scratch,
    stats_in_dir,
    table,
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


RAW_DUMP = "runc checkpoint (no rootfs)"
ONE_LINER = "runc checkpoint + tar|zstd -T0 (images+upper)"
ONE_LINER_SYNC = "runc checkpoint + tar|zstd -T0 + fsync"
API_DUMP = "cedana API checkpoint (leave_running)"
CLI_DUMP = "cedana checkpoint --leave-running (CLI)"
RAW_RESTORE = "runc restore (no rootfs)"
ONE_LINER_RESTORE = "zstd -d|tar -x + overlay + runc restore"
API_RESTORE = "cedana API restore"
CLI_RESTORE = "cedana restore (CLI)"


def main(argv: list[str] | None = None) -> int:
    p = arguments("runc", __doc__, mib=256)
    p.add_argument("--fs-mib", type=int, default=64, help="MiB of files the container writes")
    args = p.parse_args(argv)
    become_subreaper()
    peer_level = str(args.peer_level)
    zstd = ("tar", "zstd")
    dump = {
        RAW_DUMP: Method(RAW_DUMP),
        ONE_LINER: Method(ONE_LINER, own=zstd),
        ONE_LINER_SYNC: Method(ONE_LINER_SYNC, own=zstd),
        API_DUMP: Method(API_DUMP),
        CLI_DUMP: Method(CLI_DUMP),
    }
    rest = {
        RAW_RESTORE: Method(RAW_RESTORE),
        ONE_LINER_RESTORE: Method(ONE_LINER_RESTORE, own=zstd),
        API_RESTORE: Method(API_RESTORE),
        CLI_RESTORE: Method(CLI_RESTORE),
    }

    with scratch(args.dir) as work:
        state = work / "state"
        runc_log = work / "runc.log"
        log = work / "commands.log"
        tmp = work / "tmp"  # cedana's temp dir: on the same disk as the rest
        tmp.mkdir()
        runc = ["runc", "--root", str(state), "--log", str(runc_log)]
        lower = work / "image"
        build_rootfs(lower)
        bundle = work / "bundle"
        make_bundle(bundle, lower, container_workload(args.mib, args.fs_mib))
        mounts = [bundle / "rootfs"]
        container = cedana.RuncContainer(NAME, root=state)

        def runc_checkpoint(images: Path) -> list[str]:
            return [
                *runc, "checkpoint", "--leave-running", "--image-path", str(images),
                "--work-path", str(images) + "-log", NAME,
            ]  # fmt: skip

        def runc_checkpoint_tar(images: Path, tarball: Path, durable: bool = False) -> None:
            run(runc_checkpoint(images))
            tar = (
                f"tar -cf - -C {images.parent} {images.name} -C {bundle} upper "
                f"| zstd -q -{peer_level} -T0 -o {tarball}"
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
                tarball = work / f"runc{r}.tar.zst"
                api_file, cli_file = work / f"api{r}.tar.zst", work / f"cli{r}.tar.zst"
                sample = measure_command(runc_checkpoint(images), log=log)
                dump[RAW_DUMP].add(sample, stats_in_dir(Path(str(images) + "-log")))
                dump[RAW_DUMP].size = du(images)
                sample = measure_call(partial(runc_checkpoint_tar, timages, tarball))
                dump[ONE_LINER].add(sample, stats_in_dir(Path(str(timages) + "-log")))
                dump[ONE_LINER].size = du(tarball)
                simages, starball = work / f"runc-s{r}", work / f"s{r}.tar.zst"
                sample = measure_call(partial(runc_checkpoint_tar, simages, starball, True))
                dump[ONE_LINER_SYNC].add(sample, stats_in_dir(Path(str(simages) + "-log")))
                for leftover in (simages, Path(str(simages) + "-log"), starball):
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
                checkpoint = partial(
                    container.checkpoint, api_file, leave_running=True, level=args.level
                )
                sample = measure_call(checkpoint, tmpdir=tmp)
                dump[API_DUMP].add(sample)
                dump[API_DUMP].size = du(api_file)
                cli = cedana_cli(
                    "checkpoint", f"runc:{NAME}", "-o", str(cli_file), "--leave-running",
                    "--root", str(state), *level_flags(args.level),
                )  # fmt: skip
                sample = measure_command(cli, log=log, tmpdir=tmp)
                dump[CLI_DUMP].add(sample)
                dump[CLI_DUMP].size = du(cli_file)
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
                rest[RAW_RESTORE].add(measure_command(restore))  # stdio: /dev/null
                delete()
                untar = partial(
                    untar_restore, work / f"runc{r}.tar.zst", work / f"u{r}", f"runc-t{r}"
                )
                rest[ONE_LINER_RESTORE].add(measure_call(untar))
                delete()
                restore_cedana = partial(
                    cedana.restore, work / f"api{r}.tar.zst", root=state, bundle=work / f"c{r}"
                )
                rest[API_RESTORE].add(measure_call(restore_cedana, tmpdir=tmp))
                cedana.RuncContainer(NAME, root=state).delete()
                reap()
                cli = cedana_cli(
                    "restore", str(work / f"cli{r}.tar.zst"), "--root", str(state),
                    "--bundle", str(work / f"cli-bundle{r}"),
                )  # fmt: skip
                rest[CLI_RESTORE].add(measure_command(cli, log=log, tmpdir=tmp))
                cedana.RuncContainer(NAME, root=state).delete()
                reap()
        finally:
            subprocess.run([*runc, "delete", "--force", NAME], capture_output=True, check=False)
            for m in reversed(mounts):
                subprocess.run(["umount", "-l", str(m)], capture_output=True, check=False)
            reap()
    print(
        f"runc container with {args.mib} MiB of memory and {args.fs_mib} MiB of new files, "
        f"{cedana_level(args.level)}, one-liners zstd -{args.peer_level} -T0, "
        f"{args.rounds} rounds, on {args.dir}"
    )
    print(table("checkpoint", list(dump.values()), RAW_DUMP, one_liner=ONE_LINER))
    print(table("restore", list(rest.values()), RAW_RESTORE, one_liner=ONE_LINER_RESTORE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
