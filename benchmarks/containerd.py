"""Checkpoint and restore of a containerd container, cedana beside containerd's own.

Workload: a busybox container (an OCI image built here from busybox-static and
imported with ``ctr images import``; overlayfs snapshotter, runc v2 shim) whose
shell holds about ``--mib`` MiB in memory (half random bytes as base64, half a
repeating pattern) and which wrote ``--fs-mib`` MiB of random files into its
root filesystem. The benchmark starts its own containerd (root, state and
socket in the scratch directory). In the same run, on the same container and
disk, it times:

- checkpoint: ``ctr container checkpoint --rw --task`` (CRIU images, the
  writable layer and the spec as a checkpoint image in containerd's content
  store, uncompressed); the same then ``ctr images export`` of it to a file (to
  carry it elsewhere, as cedana's artifact is); ``ContainerdContainer.checkpoint``
  in this process and ``cedana checkpoint containerd:NS/NAME --leave-running``
  as a command of its own (dump, the snapshot's changes captured while frozen,
  zstd tar, fsync, full verification);
- restore: ``ctr container restore --rw --live`` from the content store into a
  new container; ``cedana.restore`` and ``cedana restore`` into containerd
  (verify, unpack, a new snapshot on the image with the changes applied, a new
  container, its task created from the images and started, so the shim runs
  ``runc restore``).

Every checkpoint leaves the container running (``ctr`` does not stop it, cedana
is given ``leave_running``), so one container serves every round; each restored
container is deleted before the next restore. Prints medians, sizes and
ratios; run with ``python -m benchmarks.containerd [--rounds N] [--mib N]
[--fs-mib N] [--level N] [--dir DIR]`` (as root, with containerd, runc, CRIU,
busybox-static and ``cedana[containerd]`` installed).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from functools import partial
from pathlib import Path

import attrs

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
    table,
    wait_until,
)

NAMESPACE = "cedana-bench"
NAME = "bench"
IMAGE = "localhost/cedana-bench/busybox:1"
CONFIG = """\
version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.tracing"]

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"""


def _add(
    tar: tarfile.TarFile,
    name: str,
    kind: bytes,
    data: bytes = b"",
    *,
    mode: int = 0o644,
    link: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, 1_700_000_000, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def oci_archive(path: Path) -> None:
    """An OCI image layout tar of a one-layer busybox image named IMAGE."""
    busybox = shutil.which("busybox", path="/bin:/usr/bin")
    if busybox is None:
        raise SystemExit("benchmarks.containerd: needs busybox-static (run scripts/provision)")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "etc", "proc", "sys", "dev", "root", "data"):
            _add(tar, d, tarfile.DIRTYPE, mode=0o755)
        _add(tar, "tmp", tarfile.DIRTYPE, mode=0o1777)
        _add(tar, "bin/busybox", tarfile.REGTYPE, Path(busybox).read_bytes(), mode=0o755)
        for applet in applets.stdout.split():
            if applet != "busybox":
                _add(tar, f"bin/{applet}", tarfile.SYMTYPE, link="busybox")
        _add(tar, "etc/passwd", tarfile.REGTYPE, b"root:x:0:0:root:/root:/bin/sh\n")
    layer = buf.getvalue()

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
         "rootfs": {"type": "layers", "diff_ids": [digest(layer)]}}
    ).encode()  # fmt: skip
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest(config), "size": len(config)},
         "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                     "digest": digest(layer), "size": len(layer)}]}
    ).encode()  # fmt: skip
    index = json.dumps(
        {"schemaVersion": 2,
         "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": digest(manifest), "size": len(manifest),
                        "annotations": {"io.containerd.image.name": IMAGE}}]}
    ).encode()  # fmt: skip
    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", tarfile.REGTYPE, b'{"imageLayoutVersion": "1.0.0"}')
        _add(tar, "index.json", tarfile.REGTYPE, index)
        for data in (layer, config, manifest):
            _add(tar, f"blobs/sha256/{digest(data)[7:]}", tarfile.REGTYPE, data)


class Daemon:
    """A containerd of the benchmark's own, in ``work``; stopped with its shims."""

    def __init__(self, work: Path):
        self.work = work
        self.address = str(work / "containerd.sock")
        self.process: subprocess.Popen[bytes] | None = None

    def ctr(self, *args: str) -> list[str]:
        return ["ctr", "-a", self.address, "-n", NAMESPACE, *args]

    def start(self) -> None:
        config = self.work / "config.toml"
        config.write_text(CONFIG.format(opt=self.work / "opt"))
        # containerd 1.6 unpacks a checkpoint from its content store (ctr container restore)
        # into a temp dir under XDG_RUNTIME_DIR, or /tmp, and never removes it: keep it here.
        tmp = self.work / "xdg"
        tmp.mkdir(mode=0o700)
        env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp)}
        with open(self.work / "containerd.log", "ab") as log:
            self.process = subprocess.Popen(
                ["containerd", "--config", str(config), "--root", str(self.work / "root"),
                 "--state", str(self.work / "state"), "--address", self.address],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while subprocess.run(self.ctr("version"), capture_output=True, check=False).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("containerd did not start; see containerd.log")
            time.sleep(0.05)

    def remove(self, name: str, *, init_only: bool = False) -> None:
        """Remove container ``name`` and its task.

        ``init_only`` kills just the task's init (its pid namespace goes with it):
        a container ``ctr container restore`` made keeps the checkpointed spec's
        cgroup, shared with the original, which killing the whole task would end.
        """
        if init_only:
            subprocess.run(
                self.ctr("task", "kill", "-s", "KILL", name), capture_output=True, check=False
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                tasks = subprocess.run(
                    self.ctr("task", "ls"), capture_output=True, text=True, check=False
                )
                if not any(
                    line.split()[0] == name and "STOPPED" not in line
                    for line in tasks.stdout.splitlines()[1:]
                ):
                    break
                time.sleep(0.05)
            subprocess.run(self.ctr("task", "rm", name), capture_output=True, check=False)
        else:
            subprocess.run(self.ctr("task", "rm", "-f", name), capture_output=True, check=False)
        subprocess.run(self.ctr("containers", "rm", name), capture_output=True, check=False)
        reap()

    def checkpoint_blobs(self, ref: str) -> list[str]:
        """The blobs of checkpoint image ``ref``; refuses one that lacks the task's images.

        containerd 1.6's checkpoint writes the task's spec as a blob; when an
        identical blob exists (every checkpoint of a container after its first),
        the task checkpoint fails with "already exists" and ``ctr`` drops it
        silently, leaving an image with the writable layer only.
        """
        listing = subprocess.run(
            self.ctr("images", "ls", f"name=={ref}"), capture_output=True, text=True, check=True
        ).stdout.splitlines()
        digest = listing[1].split()[2]
        index = subprocess.run(
            self.ctr("content", "get", digest), capture_output=True, check=True
        ).stdout
        manifests = json.loads(index)["manifests"]
        if not any(m["mediaType"].endswith("criu.checkpoint.criu.tar") for m in manifests):
            raise RuntimeError(f"ctr checkpoint {ref} holds no task images: {index!r}")
        return [digest, *(m["digest"] for m in manifests)]

    def forget_checkpoint(self, ref: str, blobs: list[str]) -> None:
        """Remove checkpoint image ``ref`` and its blobs, so the next checkpoint is whole."""
        run(self.ctr("images", "rm", ref))
        for digest in blobs:
            subprocess.run(self.ctr("content", "rm", digest), capture_output=True, check=False)

    def stop(self) -> None:
        if self.process is None:
            return
        out = subprocess.run(
            self.ctr("containers", "ls", "-q"), capture_output=True, text=True, check=False
        )
        for name in out.stdout.split():
            self.remove(name)
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for entry in os.listdir("/proc"):  # shims outlive containerd
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"containerd-shim-runc-v2") and self.address.encode() in argv:
                    os.kill(int(entry), signal.SIGKILL)
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            mountpoint = line.split()[4]
            if mountpoint.startswith(str(self.work) + "/"):
                subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            Path("/run/containerd/runc", NAMESPACE).rmdir()


CTR_DUMP = "ctr container checkpoint --rw --task"
CTR_EXPORT = "ctr checkpoint + ctr images export (a file)"
API_DUMP = "cedana API checkpoint (leave_running)"
CLI_DUMP = "cedana checkpoint --leave-running (CLI)"
CTR_RESTORE = "ctr container restore --rw --live"
API_RESTORE = "cedana API restore (into containerd)"
CLI_RESTORE = "cedana restore (CLI, into containerd)"


def main(argv: list[str] | None = None) -> int:
    p = arguments("containerd", __doc__, mib=256)
    p.add_argument("--fs-mib", type=int, default=64, help="MiB of files the container writes")
    args = p.parse_args(argv)
    become_subreaper()
    dump = {k: Method(k) for k in (CTR_DUMP, CTR_EXPORT, API_DUMP, CLI_DUMP)}
    rest = {k: Method(k) for k in (CTR_RESTORE, API_RESTORE, CLI_RESTORE)}

    with scratch(args.dir) as work:
        daemon = Daemon(work)
        log = work / "commands.log"
        tmp = work / "tmp"  # cedana's temp dir: on the same disk as the rest
        tmp.mkdir()
        container: cedana.ContainerdContainer | None = None
        try:
            daemon.start()
            oci_archive(work / "image.tar")
            run(daemon.ctr("images", "import", str(work / "image.tar")))
            script = container_workload(args.mib, args.fs_mib)
            run(daemon.ctr("run", "-d", "--null-io", IMAGE, NAME, "sh", "-c", script))
            container = cedana.ContainerdContainer(
                NAME, namespace=NAMESPACE, address=daemon.address
            )
            ready = Path(f"/proc/{container.pid}/root/tmp/ready")
            wait_until(ready.exists, "the container workload")

            for r in range(args.rounds):
                ref, exported = f"ckpt/{NAME}:{r}", work / f"ctr{r}.tar"
                checkpoint = daemon.ctr("containers", "checkpoint", "--rw", "--task", NAME, ref)
                took = measure_command(checkpoint, log=log, tmpdir=tmp)  # ctr's temp files
                blobs = daemon.checkpoint_blobs(ref)  # refuses a checkpoint without the task
                dump[CTR_DUMP].add(took)
                export = ["images", "export", "--skip-manifest-json", str(exported), ref]
                more = measure_command(daemon.ctr(*export), log=log, settled=False)
                dump[CTR_EXPORT].add(attrs.evolve(took, seconds=took.seconds + more.seconds))
                dump[CTR_EXPORT].size = du(exported)
                exported.unlink()
                name = f"{NAME}-ctr{r}"
                restore = daemon.ctr("containers", "restore", "--rw", "--live", name, ref)
                rest[CTR_RESTORE].add(measure_command(restore, log=log, tmpdir=tmp))
                daemon.remove(name, init_only=True)
                daemon.forget_checkpoint(ref, blobs)

                artifact, name = work / f"cedana{r}.tar.zst", f"{NAME}-cedana{r}"
                api_checkpoint = partial(
                    container.checkpoint, artifact, leave_running=True, level=args.level
                )
                sample = measure_call(api_checkpoint, tmpdir=tmp)
                dump[API_DUMP].add(sample)
                dump[API_DUMP].size = du(artifact)
                restore_cedana = partial(
                    cedana.restore, artifact, name=name, address=daemon.address
                )
                rest[API_RESTORE].add(measure_call(restore_cedana, tmpdir=tmp))
                daemon.remove(name)
                artifact.unlink()

                artifact, name = work / f"cli{r}.tar.zst", f"{NAME}-cli{r}"
                cli = cedana_cli(
                    "checkpoint", f"containerd:{NAMESPACE}/{NAME}", "-o", str(artifact),
                    "--leave-running", "--address", daemon.address, *level_flags(args.level),
                )  # fmt: skip
                sample = measure_command(cli, log=log, tmpdir=tmp)
                dump[CLI_DUMP].add(sample)
                dump[CLI_DUMP].size = du(artifact)
                cli = cedana_cli(
                    "restore", str(artifact), "--name", f"{NAMESPACE}/{name}",
                    "--address", daemon.address,
                )  # fmt: skip
                rest[CLI_RESTORE].add(measure_command(cli, log=log, tmpdir=tmp))
                daemon.remove(name)
                artifact.unlink()
        finally:
            if container is not None:
                container.close()
            daemon.stop()
            reap()
    print(
        f"containerd container with {args.mib} MiB of memory and {args.fs_mib} MiB of new "
        f"files, {cedana_level(args.level)} (ctr does not compress), {args.rounds} rounds, "
        f"on {args.dir}; ctr's CRIU runs under containerd's shim, out of this benchmark's "
        "sight: its peak memory and frozen time are not shown"
    )
    print(table("checkpoint", list(dump.values()), CTR_DUMP))
    print(table("restore", list(rest.values()), CTR_RESTORE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
