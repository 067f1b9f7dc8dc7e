"""runc containers against real runc and CRIU: each restored container's state is checked.

The containers run busybox from a root filesystem the session builds (no image
registry): a shared read-only lower directory, and per container an overlay
with its own upper directory, as container engines mount them. Every
container, mount and bundle a test makes is removed at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import cedana
from cedana.container import DEFAULT_BUNDLES
from cedana.rootfs.mounts import is_mountpoint, umount
from tests.capabilities import integration, requires_busybox, requires_runtime, requires_tool
from tests.conftest import reap_zombie_children, wait_for
from tests.helpers import (
    COUNTER,
    assert_counts_on,
    busybox_tree,
    count,
    name_for,
    read_until,
    remove_runc_container,
    run_cedana,
    wait_count,
)

pytestmark = [*integration, requires_runtime("runc"), requires_busybox]

# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem: the static binary, its applets as symlinks, /etc files."""
    root = tmp_path_factory.mktemp("image") / "rootfs"
    root.mkdir()
    for kind, rel, content, mode in busybox_tree():
        path = root / rel
        if kind == "dir":
            path.mkdir()
            path.chmod(mode)
        elif kind == "link":
            path.symlink_to(content)
        else:
            path.write_bytes(content)
            path.chmod(mode)
    return root


class Containers:
    """Makes bundles and runs runc containers; removes every one of them at teardown."""

    def __init__(self, tmp: Path, lower: Path, runc_root: Path):
        self.tmp = tmp
        self.lower = lower
        self.root = runc_root
        self.mounts: list[Path] = []
        self.names: list[str] = []

    def runc(self, *args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runc", "--root", str(self.root), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
            **kw,
        )

    def bundle(
        self,
        name: str,
        script: str,
        *,
        overlay: bool = True,
        mounts: Sequence[dict[str, Any]] = (),
    ) -> Path:
        """A bundle running ``sh -c script``: overlay rootfs on the image, or a copy of it."""
        bundle = self.tmp / name
        rootfs = bundle / "rootfs"
        if overlay:
            for d in ("upper", "work", "rootfs"):
                (bundle / d).mkdir(parents=True)
            data = f"lowerdir={self.lower},upperdir={bundle}/upper,workdir={bundle}/work"
            subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o", data, str(rootfs)], check=True
            )
            self.mounts.append(rootfs)
        else:
            bundle.mkdir(parents=True)
            shutil.copytree(self.lower, rootfs, symlinks=True)
        subprocess.run(["runc", "spec"], cwd=bundle, check=True)
        config = json.loads((bundle / "config.json").read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = ["sh", "-c", script]
        config["root"] = {"path": "rootfs", "readonly": False}
        config["hostname"] = name
        config["mounts"] += list(mounts)
        (bundle / "config.json").write_text(json.dumps(config, indent=2))
        return bundle

    def run(
        self, name: str, script: str = COUNTER, *, stdout: Any = subprocess.DEVNULL, **kw: Any
    ) -> cedana.RuncContainer:
        """``runc run -d`` with stdio on /dev/null (or the given pipe), never a host file."""
        bundle = self.bundle(name, script, **kw)
        self.names.append(name)
        subprocess.run(
            ["runc", "--root", str(self.root), "run", "-d", "--bundle", str(bundle), name],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=60,
        )
        return cedana.RuncContainer(name, root=self.root)

    def track(self, name: str) -> None:
        self.names.append(name)

    def cleanup(self) -> None:
        for name in reversed(self.names):
            remove_runc_container(name, self.root)
        for path in reversed(self.mounts):
            with contextlib.suppress(OSError):
                while is_mountpoint(path):
                    umount(path, detach=True)
        reap_zombie_children()


@pytest.fixture(scope="session")
def runc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runc-state")


@pytest.fixture
def containers(tmp_path: Path, busybox_rootfs: Path, runc_root: Path) -> Iterator[Containers]:
    c = Containers(tmp_path, busybox_rootfs, runc_root)
    try:
        yield c
    finally:
        c.cleanup()


def _upper_file(containers: Containers, name: str, rel: str) -> str:
    """A file of the original container's overlay upper directory (its frozen state)."""
    return (containers.tmp / name / "upper" / rel).read_text()


def lines(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


# --- checkpoint and restore -----------------------------------------------------------


def test_counter_continues_under_the_same_id(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A counter in the container goes on after restore under its old id; the dumped
    container is gone from runc meanwhile, and runc manages the restored one
    (list, ps, exec, kill, delete)."""
    name = name_for(request)
    web = containers.run(name)
    wait_count(web, 5)
    ckpt = web.checkpoint(tmp_path / "c.tar.zst")
    assert ckpt.kind == "container" and ckpt.runtime == "runc"
    assert name not in containers.runc("list", "-q").stdout.split()
    before = [int(x) for x in _upper_file(containers, name, "tmp/count.log").split()]

    restored = cedana.restore(tmp_path / "c.tar.zst", root=containers.root, bundle=tmp_path / "b2")
    assert isinstance(restored, cedana.RuncContainer) and restored.id == name
    assert restored.status == "running"
    assert_counts_on(restored, before)

    assert name in containers.runc("list", "-q").stdout.split()
    assert "sh" in containers.runc("ps", name).stdout
    assert containers.runc("exec", name, "cat", "/etc/image.txt").stdout == "from the image\n"
    containers.runc("kill", name, "KILL")
    wait_for(lambda: restored.status == "stopped", 10, "the restored container to stop")
    restored.delete()
    assert name not in containers.runc("list", "-q").stdout.split()
    assert not (tmp_path / "b2").exists()


def test_filesystem_changes_come_back(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """What the container did to its filesystem before the checkpoint is there after
    restore: a new file, a modified and a chmod-ed image file, a deleted image file
    (still deleted), a replaced directory (the image's content hidden), a symlink."""
    script = (
        "echo written inside > /tmp/new.txt; echo changed > /etc/image.txt; "
        "chmod 600 /etc/passwd; rm /etc/doomed.txt; rm -rf /www; mkdir /www; "
        "echo new page > /www/other.html; ln -s /tmp/new.txt /root/link; "
        "echo ready > /tmp/ready; " + COUNTER
    )
    name = name_for(request)
    c = containers.run(name, script)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "fs.tar.zst")
    diff = ckpt.manifest.workload["rootfs"]["diff"]
    assert diff["whiteouts"] == 1 and diff["opaque"] == 1

    r: cedana.RuncContainer = cedana.restore(ckpt, root=containers.root, bundle=tmp_path / "b2")
    wait_count(r, 1)

    def sh(cmd: str) -> str:
        return r.exec(["sh", "-c", cmd]).decode()

    assert sh("cat /tmp/new.txt /etc/image.txt") == "written inside\nchanged\n"
    assert sh("stat -c %a /etc/passwd") == "600\n"
    assert sh("test -e /etc/doomed.txt && echo there || echo gone") == "gone\n"
    assert sh("ls /www") == "other.html\n"
    assert sh("readlink /root/link; cat /root/link") == "/tmp/new.txt\nwritten inside\n"
    # The image itself is untouched: the changes live in the new bundle's upper directory.
    assert (containers.lower / "etc" / "doomed.txt").exists()
    assert (tmp_path / "b2" / "upper" / "tmp" / "new.txt").exists()


def test_restore_under_new_names_twice(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With the original gone, one checkpoint restores twice under two new names (one in
    the default bundle place), and both copies run at once, each counting on."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 5)
    c.checkpoint(tmp_path / "c.tar.zst")
    before = [int(x) for x in _upper_file(containers, name, "tmp/count.log").split()]
    first, second = name_for(request, "-a"), name_for(request, "-b")
    containers.track(first)
    containers.track(second)
    a = cedana.restore(tmp_path / "c.tar.zst", name=first, root=containers.root)
    b = cedana.restore(
        tmp_path / "c.tar.zst", name=second, root=containers.root, bundle=tmp_path / "b"
    )
    assert a.bundle == DEFAULT_BUNDLES / first
    assert {first, second} <= set(containers.runc("list", "-q").stdout.split())
    assert a.pid != b.pid
    assert_counts_on(a, before)
    assert_counts_on(b, before)
    a.delete()
    assert not (DEFAULT_BUNDLES / first).exists()
    assert b.status == "running"


@requires_tool("nsenter")
def test_tcp_server_keeps_serving(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An HTTP server listening in the container's own network namespace answers after
    restore, in the restored namespace, with the state it had (a page it keeps updating)."""
    script = (
        "httpd -f -p 8080 -h /www & i=0; "
        "while true; do i=$((i+1)); echo $i > /www/n.tmp; mv /www/n.tmp /www/n.txt; "
        "echo $i >> /tmp/count.log; "
        "sleep 0.05; done"
    )
    name = name_for(request)
    c = containers.run(name, script)
    wait_count(c, 3)
    page = c.exec(["wget", "-qO-", "http://127.0.0.1:8080/index.html"])
    assert page == b"image page\n"
    c.checkpoint(tmp_path / "tcp.tar.zst")

    r = cedana.restore(tmp_path / "tcp.tar.zst", root=containers.root, bundle=tmp_path / "b2")
    before = wait_count(r, 1)[-1]
    reply = subprocess.run(
        ["nsenter", "-t", str(r.pid), "-n", sys.executable, "-c", _HTTP_GET],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert reply.startswith("HTTP/1.") and " 200 " in reply.splitlines()[0]
    assert int(reply.rsplit("\n\n", 1)[-1].split()[-1]) >= before


_HTTP_GET = """
import socket
s = socket.create_connection(("127.0.0.1", 8080), timeout=10)
s.sendall(b"GET /n.txt HTTP/1.0\\r\\n\\r\\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.decode().replace("\\r\\n", "\\n"), end="")
"""


def test_bind_mounted_host_directory(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A host directory bind-mounted into the container is mounted again at restore
    when the caller grants it (CRIU records it as external under runc's key, runc
    answers with the source): the restored counter appends to the same host file,
    from where it was. Without the grant the restore is refused, naming the mount."""
    shared = tmp_path / "shared"
    shared.mkdir()
    mount = {
        "destination": "/host",
        "type": "bind",
        "source": str(shared),
        "options": ["rbind", "rw"],
    }
    out = shared / "out.log"
    name = name_for(request)
    c = containers.run(name, COUNTER.replace("/tmp/count.log", "/host/out.log"), mounts=[mount])
    wait_for(lambda: len(lines(out)) >= 5, 20, "the counter in the host file")
    c.checkpoint(tmp_path / "bind.tar.zst")
    before = lines(out)
    with pytest.raises(cedana.UnsafeArtifact, match=r"mounts\[\d+\] \(/host\)"):
        cedana.restore(tmp_path / "bind.tar.zst", root=containers.root, bundle=tmp_path / "b2")
    assert not (tmp_path / "b2").exists()
    cedana.restore(
        tmp_path / "bind.tar.zst",
        root=containers.root,
        bundle=tmp_path / "b2",
        grants=cedana.Grants(binds=[shared]),
    )
    wait_for(lambda: len(lines(out)) >= len(before) + 5, 20, "more counts in the host file")
    after = lines(out)
    assert after[: len(before)] == before
    assert after == list(range(1, len(after) + 1))


def test_tmpfs_mount_content(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A tmpfs mounted in the container keeps its files across checkpoint and restore
    (CRIU carries tmpfs content in its images)."""
    mount = {
        "destination": "/scratch",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "size=8m"],
    }
    name = name_for(request)
    c = containers.run(name, "echo in tmpfs > /scratch/f; " + COUNTER, mounts=[mount])
    wait_count(c, 3)
    c.checkpoint(tmp_path / "t.tar.zst")
    r = cedana.restore(tmp_path / "t.tar.zst", root=containers.root, bundle=tmp_path / "b2")
    assert r.exec(["cat", "/scratch/f"]) == b"in tmpfs\n"
    assert b"tmpfs" in r.exec(["sh", "-c", "grep ' /scratch ' /proc/mounts"])


def test_leave_running(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With leave_running the container keeps running (same pid, counting on), and a copy
    restored under another name runs beside it from the checkpointed state."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 5)
    pid = c.pid
    c.checkpoint(tmp_path / "lr.tar.zst", leave_running=True)
    assert c.status == "running" and c.pid == pid
    n = len(count(c))
    wait_count(c, n + 5)
    copy = name_for(request, "-copy")
    containers.track(copy)
    r = cedana.restore(
        tmp_path / "lr.tar.zst", name=copy, root=containers.root, bundle=tmp_path / "b2"
    )
    assert r.status == "running" and c.status == "running"
    wait_count(r, 3)
    before = count(r)  # the restored file already holds counts: the copy goes on from them
    assert_counts_on(r, before, more=3)


def test_paused_container(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A paused container can be checkpointed: with leave_running it stays paused, and
    its restore runs."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 3)
    containers.runc("pause", name)
    assert c.status == "paused"
    c.checkpoint(tmp_path / "p.tar.zst", leave_running=True)
    assert c.status == "paused"
    containers.runc("delete", "--force", name)
    r = cedana.restore(tmp_path / "p.tar.zst", root=containers.root, bundle=tmp_path / "b2")
    before = count(r)
    assert r.status == "running"
    assert_counts_on(r, before, more=3)


def test_stdio_pipes_are_reattached(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A container whose stdout was a pipe (runc records it in descriptors.json) writes,
    once restored, to what restore is given: here a file."""
    read_end, write_end = os.pipe()
    name = name_for(request)
    try:
        c = containers.run(
            name, "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.05; done", stdout=write_end
        )
    finally:
        os.close(write_end)
    try:
        first = read_until(read_end, b"\n").decode()
        assert first.startswith("line 1\n")
        ckpt = c.checkpoint(tmp_path / "s.tar.zst")
    finally:
        os.close(read_end)
    assert ckpt.read_member("descriptors.json").decode().count("pipe:[") >= 1
    out = tmp_path / "out.log"
    cedana.restore(ckpt, root=containers.root, bundle=tmp_path / "b2", stdout=out)
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 3, 20, "output")
    numbers = [int(line.split()[1]) for line in out.read_text().splitlines()]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))) and numbers[0] > 1


class ConsoleSocket:
    """A console socket (what ``runc --console-socket`` sends a pty master to)."""

    def __init__(self, path: Path):
        self.path = path
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(1)
        self._server.settimeout(30)
        self.master: int | None = None
        self._thread = threading.Thread(target=self._accept)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self._server.accept()
            with conn:
                _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
                self.master = fds[0]
        self._server.close()

    def read(self, at_least: int) -> str:
        """Wait for the master, then read until ``at_least`` lines came."""
        self._thread.join(30)
        assert self.master is not None, "runc sent no pty master"
        text = ""
        deadline = time.monotonic() + 30
        while text.count("\n") < at_least:
            ready, _, _ = select.select([self.master], [], [], max(0, deadline - time.monotonic()))
            if not ready:
                pytest.fail(f"no output on the console after {text!r}")
            text += os.read(self.master, 4096).decode()
        return text

    def close(self) -> None:
        self._server.close()
        self._thread.join(30)
        if self.master is not None:
            os.close(self.master)


def test_terminal_container_with_a_console_socket(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A container with a terminal (its pty master held outside, by whoever listened on the
    console socket) is dumped with the master left outside; restore needs a console socket
    (refused clearly without one, nothing made) and hands the new master to it, on which
    the output goes on."""
    name = name_for(request)
    bundle = containers.bundle(
        name, "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done"
    )
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = True
    (bundle / "config.json").write_text(json.dumps(config))
    first = ConsoleSocket(tmp_path / "c1.sock")
    containers.track(name)
    try:
        containers.runc(
            "run",
            "-d",
            "--console-socket",
            str(first.path),
            "--bundle",
            str(bundle),
            name,
            stdin=subprocess.DEVNULL,
        )
        assert first.read(3).startswith("tick 1\r\n")
        ckpt = cedana.RuncContainer(name, root=containers.root).checkpoint(tmp_path / "tty.tar.zst")
    finally:
        first.close()
    with pytest.raises(cedana.ContainerError, match="console_socket"):
        cedana.restore(ckpt, root=containers.root, bundle=tmp_path / "b2")
    assert not (tmp_path / "b2").exists()
    second = ConsoleSocket(tmp_path / "c2.sock")
    try:
        cedana.restore(
            ckpt, root=containers.root, bundle=tmp_path / "b2", console_socket=second.path
        )
        ticks = [int(x.split()[1]) for x in second.read(3).splitlines() if x.startswith("tick")]
    finally:
        second.close()
    assert ticks[0] > 1 and ticks == list(range(ticks[0], ticks[0] + len(ticks)))


def test_plain_directory_rootfs(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A rootfs that is a plain directory is not captured (the manifest says so) and the
    container restores on its own bundle, counting on, when the caller names that bundle
    (a checkpoint does not choose a host directory: without bundle= it is refused)."""
    name = name_for(request)
    c = containers.run(name, overlay=False)
    wait_count(c, 5)
    ckpt = c.checkpoint(tmp_path / "plain.tar.zst")
    rootfs = ckpt.manifest.workload["rootfs"]
    assert rootfs["captured"] is False and "not an overlay" in rootfs["reason"]
    assert "container/rootfs-diff.tar" not in [m.name for m in ckpt.manifest.members]
    before = [int(x) for x in (containers.tmp / name / "rootfs/tmp/count.log").read_text().split()]
    with pytest.raises(cedana.ContainerError, match="pass bundle="):
        cedana.restore(ckpt, root=containers.root)
    r = cedana.restore(ckpt, root=containers.root, bundle=containers.tmp / name)
    assert r.bundle == containers.tmp / name
    assert_counts_on(r, before)


# --- the command line -------------------------------------------------------------------


def test_cli_checkpoint_inspect_restore(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """cedana checkpoint runc:ID, inspect (container id, runtime, rootfs diff) and restore
    --name --bundle --root --json (pid, runtime, name) work from the command line."""
    name = name_for(request)
    c = containers.run(name, "rm /etc/doomed.txt; " + COUNTER)
    wait_count(c, 3)
    art = tmp_path / "cli.tar.zst"
    done = run_cedana("checkpoint", f"runc:{name}", "-o", str(art), "--root", str(containers.root))
    assert done.returncode == 0, done.stderr
    shown = run_cedana("inspect", str(art))
    assert shown.returncode == 0, shown.stderr
    assert f"container {name} (runc, running)" in shown.stdout
    assert "overlay changes:" in shown.stdout and "1 deleted" in shown.stdout
    data = json.loads(run_cedana("inspect", str(art), "--json").stdout)
    assert data["container"]["id"] == name and data["container"]["rootfs"]["captured"]

    new = name_for(request, "-new")
    containers.track(new)
    done = run_cedana(
        "restore",
        str(art),
        "--name",
        new,
        "--bundle",
        str(tmp_path / "b2"),
        "--root",
        str(containers.root),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["runtime"] == "runc" and out["name"] == new
    assert out["pid"] == cedana.RuncContainer(new, root=containers.root).pid


# --- failures leave things as they were ---------------------------------------------------


def test_missing_and_stopped_containers(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Checkpointing a container that does not exist is ContainerNotFound, one that has
    exited is ContainerNotRunning; neither writes anything."""
    with pytest.raises(cedana.ContainerNotFound):
        cedana.RuncContainer("no-such-container", root=containers.root).checkpoint(tmp_path / "x")
    name = name_for(request)
    c = containers.run(name, "true")
    wait_for(lambda: c.status == "stopped", 10, "the container to exit")
    with pytest.raises(cedana.ContainerNotRunning, match="stopped"):
        c.checkpoint(tmp_path / "x")
    assert not (tmp_path / "x").exists()
    done = run_cedana(
        "checkpoint",
        "runc:no-such-container",
        "-o",
        str(tmp_path / "y"),
        "--root",
        str(containers.root),
    )
    assert done.returncode == 1 and "no runc container" in done.stderr


def test_failed_dump_leaves_the_container_running_and_thawed(
    containers: Containers,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the checkpoint fails while the container is frozen (here: capturing the
    rootfs fails), CRIU thaws it: it keeps running, its freezer is THAWED, it counts on,
    and no artifact is left."""
    from cedana.rootfs.overlay import OverlaySnapshotter

    def broken(self: object, rootfs: Path, dest: Path) -> None:
        raise OSError(28, "No space left on device")

    name = name_for(request)
    c = containers.run(name)
    n = len(wait_count(c, 3))
    monkeypatch.setattr(OverlaySnapshotter, "capture", broken)
    with pytest.raises(OSError, match="(?i)no space left on device"):  # NoSpace, an OSError
        c.checkpoint(tmp_path / "fail.tar.zst")
    assert c.status == "running"
    assert Path(c.cgroup_paths["freezer"], "freezer.state").read_text().strip() == "THAWED"
    wait_count(c, n + 5)
    assert not (tmp_path / "fail.tar.zst").exists()


def test_restore_onto_a_taken_name(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Restoring under the name of a container that exists is ContainerExists; the
    existing container is untouched and no bundle is made."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 3)
    c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    pid = c.pid
    with pytest.raises(cedana.ContainerExists, match="exists"):
        cedana.restore(tmp_path / "c.tar.zst", root=containers.root, bundle=tmp_path / "b2")
    assert c.status == "running" and c.pid == pid
    assert not (tmp_path / "b2").exists()


def test_corrupted_archive(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A damaged artifact is refused before anything is made: no container, no mount,
    no bundle, and the name stays free."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 3)
    art = tmp_path / "c.tar.zst"
    c.checkpoint(art)
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0xFF
    art.write_bytes(bytes(data))
    with pytest.raises(cedana.ArtifactCorrupt):
        cedana.restore(art, root=containers.root, bundle=tmp_path / "b2")
    assert name not in containers.runc("list", "-q").stdout.split()
    assert not (tmp_path / "b2").exists()
    assert str(tmp_path / "b2") not in Path("/proc/self/mountinfo").read_text()


def test_failed_restore_removes_what_it_made(
    containers: Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """When runc restore itself fails (the bind-mounted host directory is gone), the error
    gives runc's reason and points at no vanished log, the half-made container is deleted,
    the overlay unmounted and the bundle removed, so the same name restores fine once the
    directory is back."""
    shared = tmp_path / "shared"
    shared.mkdir()
    mount = {"destination": "/host", "type": "bind", "source": str(shared), "options": ["rbind"]}
    name = name_for(request)
    c = containers.run(name, mounts=[mount])
    wait_count(c, 3)
    c.checkpoint(tmp_path / "c.tar.zst")
    shared.rmdir()
    grants = cedana.Grants(binds=[shared])
    with pytest.raises(cedana.RestoreFailed) as failure:
        cedana.restore(
            tmp_path / "c.tar.zst", root=containers.root, bundle=tmp_path / "b2", grants=grants
        )
    assert str(shared) in str(failure.value)  # runc's own reason, before CRIU ran
    assert failure.value.log_path is None, "no CRIU log ran, so none is pointed at"
    assert name not in containers.runc("list", "-q").stdout.split()
    assert not (containers.root / name).exists()
    assert not (tmp_path / "b2").exists()
    assert str(tmp_path / "b2") not in Path("/proc/self/mountinfo").read_text()
    shared.mkdir()
    r = cedana.restore(
        tmp_path / "c.tar.zst", root=containers.root, bundle=tmp_path / "b2", grants=grants
    )
    assert r.status == "running"
