"""Helpers shared by the tests: the command line, a child outside its own session, a small
tmpfs, busybox, and the counter that container tests run and read back."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import attrs
import pytest

import cedana
from cedana import procfs
from cedana.artifact import thaw, write_artifact
from cedana.artifact.signing import host_key
from cedana.container.bundle import DEFAULT_BUNDLES
from cedana.rootfs.mounts import is_mountpoint, umount
from tests.capabilities import busybox_binary
from tests.conftest import wait_for

#: What container tests run: a count in memory (``i``), appended to a file of the rootfs.
COUNTER = "i=0; while true; do i=$((i+1)); echo $i >> /tmp/count.log; sleep 0.05; done"


#: write_artifact's keywords for each artifact form.
FORMS: dict[str, dict[str, Any]] = {
    "zstd": {},
    "tar": {"compress": "none"},
    "directory": {"directory": True},
}


def run_cedana(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m cedana ARGS`` as a user runs it; the result is checked by the caller."""
    return subprocess.run(
        [sys.executable, "-m", "cedana", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


#: Starts its own session, then runs argv as a child sharing its stdio, and waits for it.
_SESSION_LEADER = "import os,subprocess,sys; os.setsid(); sys.exit(subprocess.call(sys.argv[1:]))"


def popen_in_session(argv: list[str], **popen: Any) -> tuple[subprocess.Popen[bytes], int]:
    """Run ``argv`` as the child of a session leader started with ``popen`` (stdio pipes...).

    Returns the leader and the child's pid: a process that is not its session's leader,
    whatever session the tests themselves run in (it may be led from outside the pid
    namespace, which CRIU cannot dump).
    """
    leader = subprocess.Popen([sys.executable, "-c", _SESSION_LEADER, *argv], **popen)
    kids = wait_for(lambda: procfs.children(leader.pid), what="the session's child")
    assert isinstance(kids, list)
    return leader, kids[0]


def read_until(fd: int, needle: bytes, timeout: float = 10) -> bytes:
    """What ``fd`` gives until ``needle`` shows up, it ends, or ``timeout`` passes (so a
    workload that stays silent fails the test instead of hanging it)."""
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``8m``, ``256k``) mounted at ``path``: a disk that fills up."""
    path.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def busybox_tree() -> list[tuple[str, str, Any, int]]:
    """A busybox root filesystem as (kind, path, content, mode) entries, kind ``dir``,
    ``file`` (bytes), or ``link`` (target): the binary, its applets, a few /etc files and
    files the tests change or delete."""
    busybox = busybox_binary()
    assert busybox is not None  # requires_busybox
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    tree: list[tuple[str, str, Any, int]] = [
        ("dir", d, None, 0o755) for d in ("bin", "etc", "proc", "sys", "dev", "root", "www")
    ]
    tree += [("dir", "data", None, 0o755), ("dir", "host", None, 0o755)]
    tree.append(("dir", "tmp", None, 0o1777))
    tree.append(("file", "bin/busybox", Path(busybox).read_bytes(), 0o755))
    tree += [("link", f"bin/{a}", "busybox", 0o777) for a in applets if a != "busybox"]
    for name, text in (
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/image.txt", "from the image\n"),
        ("etc/doomed.txt", "deleted by the container\n"),
        ("www/index.html", "image page\n"),
    ):
        tree.append(("file", name, text.encode(), 0o644))
    return tree


def name_for(request: pytest.FixtureRequest, suffix: str = "") -> str:
    """A container id unique to this test and this run (default bundles are shared)."""
    base = request.node.name.replace("test_", "").replace("_", "-")[:40]
    return f"cedana-{os.getpid()}-{base}{suffix}"


class _Container(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def id(self) -> str: ...


def count(container: _Container) -> list[int]:
    """The counter's lines, read through the container's root ([] while it has none)."""
    try:
        text = Path(f"/proc/{container.pid}/root/tmp/count.log").read_text()
    except (OSError, cedana.CedanaError):
        return []
    return [int(x) for x in text.split()]


def wait_count(container: _Container, at_least: int) -> list[int]:
    wait_for(lambda: len(count(container)) >= at_least, 20, f"{at_least} counts in {container.id}")
    return count(container)


def assert_counts_on(container: _Container, before: list[int], more: int = 5) -> None:
    """After restore the counter goes on from where it was frozen: 1, 2, ... with no gap
    and no restart (the log file came back with the rootfs, ``i`` with the memory)."""
    assert before, "the checkpoint holds no counts"
    after = wait_count(container, len(before) + more)
    assert after[: len(before)] == before
    assert after == list(range(1, len(after) + 1)), after[len(before) - 3 : len(before) + more]


def remove_runc_container(name: str, root: Path) -> None:
    """Delete a runc container and any bundle cedana's restore made for it."""
    with contextlib.suppress(cedana.CedanaError):
        cedana.RuncContainer(name, root=root).delete()
    leftover = DEFAULT_BUNDLES / name
    if leftover.exists():
        with contextlib.suppress(OSError):
            while is_mountpoint(leftover / "rootfs"):
                umount(leftover / "rootfs", detach=True)
        shutil.rmtree(leftover, ignore_errors=True)


def craft(base: Path, dest: Path, edit: Callable[[dict[str, Any], Path], None]) -> Path:
    """A crafted artifact, as anyone can build one: ``base`` unpacked,
    ``edit(workload, images_dir)`` applied, written again with a self-consistent
    manifest (every member re-digested), so it opens and verifies. It is signed with this
    host's key: confinement must hold for a trusted signer's artifact too (or one accepted
    with ``trust="any"``)."""
    work = dest.with_name(dest.name + ".d")
    ckpt = cedana.open(base)
    ckpt.extract(work)
    workload = thaw(ckpt.manifest.workload)
    edit(workload, work)
    manifest = attrs.evolve(ckpt.manifest, workload=workload, members=())
    write_artifact(work, dest, manifest, signer=host_key())
    shutil.rmtree(work)
    assert thaw(cedana.open(dest).manifest.workload) == workload  # it verifies
    return dest


def kill_containerd_shims(address: str) -> None:
    """End the shims serving the containerd at ``address``: they outlive their daemon."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and address.encode() in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
