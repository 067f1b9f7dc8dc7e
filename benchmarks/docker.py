"""Checkpoint and restore of a docker container, cedana beside docker's own.

Workload: a busybox container (an image made here from busybox-static with
``docker import``; overlay2, runc) whose shell holds about ``--mib`` MiB in
memory (half random bytes as base64, half a repeating pattern) and which wrote
``--fs-mib`` MiB of random files into its root filesystem. The benchmark
starts its own experimental dockerd (data root, exec root and socket in the
scratch directory). In the same run, on the same container and disk, it times:

- checkpoint: ``docker checkpoint create`` (CRIU images only, uncompressed, in
  the container's own directory: **no filesystem changes**, so the 64 MiB of
  files are not in it, and the container stops); ``DockerContainer.checkpoint``
  with ``leave_running`` in this process, and ``cedana checkpoint docker:NAME
  --leave-running`` as a command of its own (dump, the overlay2 layer captured
  while frozen, zstd tar, fsync, full verification: one file that holds
  everything);
- restore: ``docker start --checkpoint`` of the same container (its layer is
  still there, which is why docker's checkpoint can omit it); ``cedana.restore``
  and ``cedana restore`` into docker (verify, unpack, a new container from the image, its layer filled
  with the changes, started from the images through ``start --checkpoint``).

Each cedana restore is removed before the next round. Prints medians, sizes
and ratios; run with ``python -m benchmarks.docker [--rounds N] [--mib N]
[--fs-mib N] [--level N] [--dir DIR]`` (as root, with dockerd, CRIU,
busybox-static and ``cedana[docker]`` installed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import cedana
from benchmarks.common import (
    Method,
    arguments,
    become_subreaper,
    busybox_image_tar,
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
    table,
    wait_until,
)

NAME = "bench"
IMAGE = "cedana-bench/busybox:1"


def image_tar(path: Path) -> None:
    """busybox-static's tree as a tar for ``docker import``."""
    busybox_image_tar(path, "docker")


class Daemon:
    """An experimental dockerd of the benchmark's own, in ``work``; stopped with its
    containerd and shims."""

    def __init__(self, work: Path):
        self.work = work
        self.address = f"unix://{work}/docker.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def docker(self, *args: str) -> list[str]:
        return ["docker", "-H", self.address, *args]

    def start(self) -> None:
        # dockerd unpacks each checkpoint it restores into a ctrd-checkpoint* dir of its
        # temp dir and never removes it: keep those in the benchmark's scratch.
        scratch = self.work / "dockerd-tmp"
        scratch.mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(scratch)}
        with open(self.work / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(
                ["dockerd", "--experimental", "--data-root", str(self.work / "data"),
                 "--exec-root", str(self.work / "exec"), "--pidfile", str(self.work / "pid"),
                 "--host", self.address, "--iptables=false", "--bridge=none",
                 "--default-ulimit", "nofile=1024:1024", "--default-ulimit", "nproc=4096:4096"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env=env,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while subprocess.run(self.docker("version"), capture_output=True, check=False).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dockerd did not start; see dockerd.log")
            time.sleep(0.1)

    def running(self, name: str) -> bool:
        out = subprocess.run(
            self.docker("inspect", "-f", "{{.State.Running}}", name),
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() == "true"

    def checkpoint_dir(self, name: str, checkpoint: str) -> Path:
        cid = subprocess.run(
            self.docker("inspect", "-f", "{{.Id}}", name),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return self.work / "data" / "containers" / cid / "checkpoints" / checkpoint

    def stop(self) -> None:
        if self.process is None:
            return
        out = subprocess.run(
            self.docker("ps", "-aq"), capture_output=True, text=True, check=False
        ).stdout
        for cid in out.split():
            subprocess.run(self.docker("rm", "-f", cid), capture_output=True, check=False)
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        ours = str(self.work).encode()
        for entry in os.listdir("/proc"):  # containerd and shims may outlive dockerd
            with contextlib.suppress(OSError, ValueError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if b"containerd" in argv[0] and any(ours in a for a in argv):
                    os.kill(int(entry), signal.SIGKILL)
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            mountpoint = line.split()[4]
            if mountpoint.startswith(str(self.work) + "/"):
                subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)


DOCKER_DUMP = "docker checkpoint create"
API_DUMP = "cedana API checkpoint (leave_running)"
CLI_DUMP = "cedana checkpoint --leave-running (CLI)"
DOCKER_RESTORE = "docker start --checkpoint"
API_RESTORE = "cedana API restore (new container)"
CLI_RESTORE = "cedana restore (CLI, new container)"


def main(argv: list[str] | None = None) -> int:
    p = arguments("docker", __doc__, mib=256)
    p.add_argument("--fs-mib", type=int, default=64, help="MiB of files the container writes")
    args = p.parse_args(argv)
    become_subreaper()
    dump = {k: Method(k) for k in (DOCKER_DUMP, API_DUMP, CLI_DUMP)}
    rest = {k: Method(k) for k in (DOCKER_RESTORE, API_RESTORE, CLI_RESTORE)}

    with scratch(args.dir) as work:
        daemon = Daemon(work)
        log = work / "commands.log"
        tmp = work / "tmp"  # cedana's temp dir: on the same disk as the rest
        tmp.mkdir()
        container: cedana.DockerContainer | None = None
        try:
            daemon.start()
            image_tar(work / "image.tar")
            run(daemon.docker("import", str(work / "image.tar"), IMAGE))
            script = container_workload(args.mib, args.fs_mib)
            run(daemon.docker("run", "-d", "--name", NAME, "--network", "none", IMAGE,
                              "sh", "-c", script))  # fmt: skip
            container = cedana.DockerContainer(NAME, address=daemon.address)
            ready = Path(f"/proc/{container.pid}/root/tmp/ready")
            wait_until(ready.exists, "the container workload")

            def remove(restored: list[cedana.DockerContainer]) -> None:
                for made in restored:
                    made.remove()
                    made.close()
                reap()

            for r in range(args.rounds):
                ck = f"ck{r}"
                create = daemon.docker("checkpoint", "create", NAME, ck)
                dump[DOCKER_DUMP].add(measure_command(create, log=log))
                dump[DOCKER_DUMP].size = du(daemon.checkpoint_dir(NAME, ck))
                start = daemon.docker("start", "--checkpoint", ck, NAME)
                rest[DOCKER_RESTORE].add(measure_command(start, log=log))
                run(daemon.docker("checkpoint", "rm", NAME, ck))
                wait_until(lambda: daemon.running(NAME), "docker's restore")

                artifact, name = work / f"cedana{r}.tar.zst", f"{NAME}-cedana{r}"
                checkpoint = partial(
                    container.checkpoint, artifact, leave_running=True, level=args.level
                )
                sample = measure_call(checkpoint, tmpdir=tmp)
                dump[API_DUMP].add(sample)
                dump[API_DUMP].size = du(artifact)
                restored: list[cedana.DockerContainer] = []

                def restore_cedana(
                    artifact: Path = artifact,
                    name: str = name,
                    restored: list[cedana.DockerContainer] = restored,
                ) -> None:
                    restored.append(cedana.restore(artifact, name=name, address=daemon.address))

                rest[API_RESTORE].add(measure_call(restore_cedana, tmpdir=tmp))
                remove(restored)
                artifact.unlink()

                artifact, name = work / f"cli{r}.tar.zst", f"{NAME}-cli{r}"
                cli = cedana_cli(
                    "checkpoint", f"docker:{NAME}", "-o", str(artifact), "--leave-running",
                    "--address", daemon.address, *level_flags(args.level),
                )  # fmt: skip
                sample = measure_command(cli, log=log, tmpdir=tmp)
                dump[CLI_DUMP].add(sample)
                dump[CLI_DUMP].size = du(artifact)
                cli = cedana_cli(
                    "restore", str(artifact), "--name", name, "--address", daemon.address
                )
                rest[CLI_RESTORE].add(measure_command(cli, log=log, tmpdir=tmp))
                remove([cedana.DockerContainer(name, address=daemon.address)])
                artifact.unlink()
        finally:
            if container is not None:
                container.close()
            daemon.stop()
            reap()
    print(
        f"docker container with {args.mib} MiB of memory and {args.fs_mib} MiB of new files, "
        f"{cedana_level(args.level)} (docker does not compress), {args.rounds} rounds, "
        f"on {args.dir}; docker's checkpoint holds no filesystem changes and stops the "
        "container, its restore reuses the same container's layer; cedana's holds the "
        "changes, leaves the container running and restores into a new container; docker's "
        "CRIU runs under containerd's shim, out of this benchmark's sight"
    )
    print(table("checkpoint", list(dump.values()), DOCKER_DUMP))
    print(table("restore", list(rest.values()), DOCKER_RESTORE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
