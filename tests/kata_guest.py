"""A kata-style sandbox VM for the tests: Debian's guest kernel (scripts/provision extracts
it), a busybox initramfs built here, and QEMU started with the command line kata's QEMU
driver gives a sandbox (``-name sandbox-<id>``, QMP under ``/run/vc/vm/<id>/``, memfd guest
memory shared with a virtiofsd, the rootfs share on vhost-user-fs-pci).

The guest's init loads the virtio, virtiofs and 9p modules, mounts the share (virtiofs, or
9p with ``cedana.fs=9p`` on its command line), writes ``before.txt`` into it, holds a file
of it open after deleting it (an inode virtiofsd's migration cannot find by path), then runs a
counter on the serial console (``cedana-counter N`` a second) and another that writes
``count`` into the share (and into ``ctr/rootfs/``, when the share holds a container
rootfs: an overlay mounted there, as kata mounts a container's rootfs in its share).
"""

from __future__ import annotations

import contextlib
import lzma
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

KATA_ROOT = Path(os.environ.get("CEDANA_KATA_ROOT", "/usr/local/lib/cedana/kata"))
RUNTIME_DIR = Path("/run/vc/vm")
_MODULES = ("virtio_pci", "virtiofs", "9pnet_virtio", "9p")

_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m; done
mkdir -p /shared
if grep -q cedana.fs=9p /proc/cmdline; then
    mount -t 9p -o trans=virtio,version=9p2000.L cedana /shared
else
    mount -t virtiofs cedana /shared
fi
echo "cedana-guest: share mounted" > /dev/ttyS0
echo "written by the guest before the checkpoint" > /shared/before.txt
# A file held open but deleted: it has no path left for virtiofsd's migration to find.
echo "held open, deleted" > /shared/held.txt
exec 3</shared/held.txt
rm /shared/held.txt
[ -d /shared/ctr/rootfs ] && echo "written into the container rootfs" > /shared/ctr/rootfs/guest.txt
(i=0; while :; do echo $i > /shared/count.tmp && mv /shared/count.tmp /shared/count
  [ -d /shared/ctr/rootfs ] && echo $i > /shared/ctr/rootfs/count
  i=$((i+1)); sleep 1; done) &
i=0
while :; do echo "cedana-counter $i" > /dev/ttyS0; i=$((i+1)); sleep 1; done
"""


def guest_kernel() -> tuple[Path, Path] | None:
    """The extracted guest kernel and its modules' ``kernel/`` dir, or None."""
    kernels = sorted((KATA_ROOT / "kernel" / "boot").glob("vmlinuz-*"))
    if not kernels:
        return None
    release = kernels[-1].name.removeprefix("vmlinuz-")
    modules = KATA_ROOT / "kernel" / "lib" / "modules" / release / "kernel"
    return (kernels[-1], modules) if modules.is_dir() else None


def _module_files(modules: Path) -> dict[str, Path]:
    found = {}
    for path in modules.rglob("*.ko*"):
        name = path.name.split(".ko")[0]
        found[name.replace("-", "_")] = path
    return found


def _depends(path: Path) -> list[str]:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        data = lzma.decompress(data)
    match = re.search(rb"\0depends=([^\0]*)\0", data)
    return [d for d in (match.group(1).decode().split(",") if match else []) if d]


def build_initrd(dest: Path) -> Path:
    """Build the guest's initramfs (``busybox cpio -o -H newc``: no cpio here) at ``dest``."""
    kernel = guest_kernel()
    assert kernel is not None, "run scripts/provision for the guest kernel"
    files = _module_files(kernel[1])
    order: list[str] = []

    def add(name: str) -> None:
        if name in order:
            return
        for dep in _depends(files[name]):
            add(dep)
        order.append(name)

    for name in _MODULES:
        add(name)
    tree = dest.parent / (dest.name + ".tree")
    shutil.rmtree(tree, ignore_errors=True)
    for sub in ("bin", "lib/modules", "proc", "sys", "dev", "shared"):
        (tree / sub).mkdir(parents=True)
    shutil.copy(shutil.which("busybox", path="/bin:/usr/bin") or "/bin/busybox", tree / "bin")
    for name in order:
        data = files[name].read_bytes()
        if files[name].name.endswith(".xz"):
            data = lzma.decompress(data)
        (tree / "lib/modules" / f"{name}.ko").write_bytes(data)
    (tree / "modules.order").write_text("".join(f"{n}.ko\n" for n in order))
    (tree / "init").write_text(_INIT)
    (tree / "init").chmod(0o755)
    names = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
    with open(dest, "wb") as out:
        subprocess.run(
            ["busybox", "cpio", "-o", "-H", "newc"],
            cwd=tree,
            input=names,
            stdout=out,
            stderr=subprocess.DEVNULL,
            check=True,
        )
    shutil.rmtree(tree)
    os.chmod(dest, 0o644)
    return dest


def accel() -> str:
    """KVM where it works here, else TCG (see cedana.runtimes.kata.kvm_usable)."""
    from cedana.runtimes.kata import kvm_usable

    return "kvm" if kvm_usable() else "tcg"


def last_count(console: Path) -> int | None:
    """The last ``cedana-counter N`` on a console log."""
    try:
        found = re.findall(rb"cedana-counter (\d+)", console.read_bytes())
    except OSError:
        return None
    return int(found[-1]) if found else None


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@attrs.define(eq=False)
class Sandbox:
    """A running kata-style sandbox VM the tests made."""

    id: str
    run_dir: Path
    shared: Path
    console: Path
    qemu: subprocess.Popen[bytes]
    virtiofsd: subprocess.Popen[bytes] | None

    rootfs: Path | None = None

    def stop(self) -> None:
        for proc in (self.qemu, self.virtiofsd):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait()
        if self.rootfs is not None:
            subprocess.run(["umount", "-l", str(self.rootfs)], check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def mount_rootfs(workdir: Path, shared: Path, ident: str) -> Path:
    """An overlay at ``shared/ctr/rootfs`` (an image layer holding ``hello.txt``, an upper
    and a work dir in ``workdir``), as kata mounts a container's rootfs in its share."""
    lower = workdir / f"{ident}-lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "hello.txt").write_text("from the image layer\n")
    for d in ("upper", "work"):
        (workdir / f"{ident}-{d}").mkdir()
    rootfs = shared / "ctr" / "rootfs"
    rootfs.mkdir(parents=True)
    upper, work = workdir / f"{ident}-upper", workdir / f"{ident}-work"
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(rootfs)], check=True)
    return rootfs


def start_sandbox(
    workdir: Path,
    initrd: Path,
    *,
    fs: str = "virtiofs",
    memory: int = 256,
    rootfs: bool = False,
) -> Sandbox:
    """Boot a sandbox as kata's QEMU driver would; returns once its counter runs."""
    kernel = guest_kernel()
    assert kernel is not None
    ident = f"kata-{secrets.token_hex(4)}"
    run_dir = RUNTIME_DIR / ident
    run_dir.mkdir(parents=True)
    shared = workdir / f"{ident}-shared"
    shared.mkdir()
    console = workdir / f"{ident}-console.log"
    mounted = mount_rootfs(workdir, shared, ident) if rootfs else None
    virtiofsd = None
    fs_args: list[str]
    if fs == "virtiofs":
        sock = run_dir / "vhost-fs.sock"
        virtiofsd = subprocess.Popen(
            [
                "virtiofsd",
                f"--socket-path={sock}",
                f"--shared-dir={shared}",
                "--cache=never",
                "--sandbox=chroot",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / f"{ident}-virtiofsd.log", "wb"),  # noqa: SIM115
        )
        wait_for(sock.exists, 10, "virtiofsd's socket")
        fs_args = [
            "-chardev", f"socket,id=char-{ident},path={sock}",
            "-device", f"vhost-user-fs-pci,chardev=char-{ident},tag=cedana,queue-size=1024",
        ]  # fmt: skip
    else:
        fs_args = [
            "-fsdev", f"local,id=fs9,path={shared},security_model=none",
            "-device", "virtio-9p-pci,fsdev=fs9,mount_tag=cedana",
        ]  # fmt: skip
    argv = [
        "qemu-system-x86_64",
        "-name", f"sandbox-{ident}",
        "-uuid", str(uuid.uuid4()),
        "-machine", f"q35,accel={accel()}",
        "-qmp", f"unix:{run_dir / 'qmp.sock'},server=on,wait=off",
        "-m", f"{memory}M",
        "-smp", "1",
        "-object", f"memory-backend-memfd,id=dimm1,size={memory}M,share=on",
        "-numa", "node,memdev=dimm1",
        "-device", "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=off,addr=2",
        "-device", "virtio-serial-pci,disable-modern=true,id=serial0",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
        "-chardev", f"file,id=console0,path={console}",
        "-serial", "chardev:console0",
        *fs_args,
        "-rtc", "base=utc,driftfix=slew,clock=host",
        "-vga", "none",
        "-no-user-config",
        "-nodefaults",
        "-nographic",
        "--no-reboot",
        "-kernel", str(kernel[0]),
        "-initrd", str(initrd),
        "-append", f"console=ttyS0 quiet panic=-1 cedana.fs={fs}",
        "-pidfile", str(run_dir / "pid"),
    ]  # fmt: skip
    qemu = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / f"{ident}-qemu.log", "wb"),  # noqa: SIM115
        start_new_session=True,
    )
    box = Sandbox(
        id=ident,
        run_dir=run_dir,
        shared=shared,
        console=console,
        qemu=qemu,
        virtiofsd=virtiofsd,
        rootfs=mounted,
    )
    try:
        wait_for(lambda: (last_count(console) or 0) >= 2 or qemu.poll() is not None, 120, "boot")
        assert qemu.poll() is None, (workdir / f"{ident}-qemu.log").read_text()
    except BaseException:
        box.stop()
        raise
    return box


@contextlib.contextmanager
def sandbox(workdir: Path, initrd: Path, *, fs: str = "virtiofs") -> Iterator[Sandbox]:
    box = start_sandbox(workdir, initrd, fs=fs)
    try:
        yield box
    finally:
        box.stop()
