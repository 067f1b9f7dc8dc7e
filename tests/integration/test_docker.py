"""docker containers against a real dockerd, containerd, runc and CRIU.

The session starts its own experimental dockerd (its own ``--data-root``,
``--exec-root``, pid file and socket in a temp dir; no iptables, no bridge; the
default ulimits this machine can grant), which starts its own containerd. No
registry: the test image is a tar of busybox-static's tree
(:func:`tests.helpers.busybox_tree`) brought in with ``docker import``.
Containers run with ``--network none``. The ``docker`` command line is used to
set up and to look at what docker shows; cedana itself only talks to the
daemon's API. Every container a test makes is removed at teardown; the daemon
is stopped with its containerd and shims, and its mounts are undone.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cedana
from cedana.rootfs.mounts import mountinfo, umount
from tests.capabilities import integration, requires_busybox, requires_docker
from tests.conftest import reap_zombie_children, wait_for
from tests.helpers import (
    COUNTER,
    assert_counts_on,
    busybox_tree,
    count,
    craft,
    name_for,
    remove_runc_container,
    wait_count,
)

pytestmark = [*integration, requires_docker, requires_busybox]

IMAGE = "cedana-test/busybox:1"
#: The counter, also echoed to stdout so ``docker logs`` shows it.
LOUD_COUNTER = (
    "i=0; while true; do i=$((i+1)); echo $i >> /tmp/count.log; echo $i; sleep 0.05; done"
)


class Dockerd:
    """A dockerd of this test session: its own data root, exec root and socket."""

    def __init__(self, tmp: Path, *, experimental: bool = True):
        self.tmp = tmp
        self.data_root = tmp / "data"
        self.exec_root = tmp / "exec"
        self.address = f"unix://{tmp}/docker.sock"
        self.experimental = experimental
        self.log = tmp / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        flags = ["--experimental"] if self.experimental else []
        # Restoring a checkpoint, dockerd (containerd's client) unpacks it into a
        # ctrd-checkpoint* dir of its temp dir and never removes it: keep those here.
        scratch = self.tmp / "tmp"
        scratch.mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(scratch)}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["dockerd", *flags, "--data-root", str(self.data_root),
                 "--exec-root", str(self.exec_root), "--pidfile", str(self.tmp / "dockerd.pid"),
                 "--host", self.address, "--iptables=false", "--bridge=none",
                 "--default-ulimit", "nofile=1024:1024", "--default-ulimit", "nproc=4096:4096"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env=env,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["docker", "-H", self.address, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and done.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} failed: {done.stderr}")
        return done

    def names(self) -> set[str]:
        """Every container's name (``docker ps -a``)."""
        out = self.docker("ps", "-a", "--format", "{{.Names}}").stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    def running(self) -> set[str]:
        """The running containers' names (``docker ps``)."""
        out = self.docker("ps", "--format", "{{.Names}}").stdout
        return {line.strip() for line in out.splitlines() if line.strip()}

    def status(self, name: str) -> str:
        return self.docker("inspect", "-f", "{{.State.Status}}", name).stdout.strip()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            for name in self.names():
                self.docker("rm", "-f", name, check=False)
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._kill_leftovers()
        for entry in reversed(mountinfo()):
            if entry.mountpoint.startswith(str(self.tmp) + "/"):
                with contextlib.suppress(OSError):
                    umount(entry.mountpoint, detach=True)

    def _kill_leftovers(self) -> None:
        """containerd and its shims may outlive dockerd; end those of this daemon."""
        ours = str(self.exec_root).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and b"containerd" in argv[0] and any(ours in a for a in argv):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry), signal.SIGKILL)


def image_tar(path: Path) -> Path:
    """busybox's tree as a tar that ``docker import`` takes as an image's one layer."""
    with tarfile.open(path, "w") as tar:
        for kind, name, content, mode in busybox_tree():
            info = tarfile.TarInfo(name)
            info.mode = mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "file":
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                info.type = tarfile.SYMTYPE
                info.linkname = content
                tar.addfile(info)
    return path


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    tmp = tmp_path_factory.mktemp("dockerd")
    daemon = Dockerd(tmp)
    try:
        daemon.start()
        daemon.docker("import", str(image_tar(tmp / "busybox.tar")), IMAGE)
        yield daemon
    finally:
        daemon.stop()


class Containers:
    """Runs containers with ``docker run``; at teardown removes them and what was restored."""

    def __init__(self, daemon: Dockerd):
        self.daemon = daemon
        self.names: list[str] = []
        self.handles: list[cedana.DockerContainer] = []
        self.runc_names: list[tuple[str, Path]] = []

    def handle(self, name: str) -> cedana.DockerContainer:
        c = cedana.DockerContainer(name, address=self.daemon.address)
        self.handles.append(c)
        return c

    def run(
        self, name: str, script: str = COUNTER, *, flags: tuple[str, ...] = (), image: str = IMAGE
    ) -> cedana.DockerContainer:
        self.names.append(name)
        self.daemon.docker(
            "run", "-d", "--name", name, "--network", "none", *flags, image, "sh", "-c", script
        )
        return self.handle(name)

    def track(self, restored: Any) -> Any:
        if isinstance(restored, cedana.DockerContainer):
            self.names.append(restored.name)
            self.handles.append(restored)
        elif isinstance(restored, cedana.RuncContainer):
            self.runc_names.append((restored.id, restored.root))
        return restored

    def cleanup(self) -> None:
        for name in reversed(self.names):
            self.daemon.docker("rm", "-f", name, check=False)
        for name, root in self.runc_names:
            remove_runc_container(name, root)
        for handle in self.handles:
            handle.close()
        reap_zombie_children()


@pytest.fixture
def containers(dockerd: Dockerd) -> Iterator[Containers]:
    c = Containers(dockerd)
    try:
        yield c
    finally:
        c.cleanup()


def _read(container: cedana.DockerContainer, path: str) -> str | None:
    try:
        return Path(f"/proc/{container.pid}/root{path}").read_text()
    except FileNotFoundError:
        return None


# --- checkpoint and restore into docker ---------------------------------------------------


def test_counter_and_files_come_back_in_a_container_docker_manages(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The counter goes on after restore under a new name, and the files the container
    wrote, changed and deleted in its root filesystem are as they were (what docker's own
    checkpoint does not keep). Docker manages the restored container: ``docker ps`` shows
    it running, ``docker exec`` and ``docker logs`` work (the restored process writes to
    docker's new log), ``docker stop`` and ``docker rm`` end it. The checkpointed one is
    killed once the artifact is verified, and docker shows it exited."""
    script = (
        "echo written inside > /root/new.txt; echo changed > /etc/image.txt; "
        "rm /etc/doomed.txt; rm -rf /www; mkdir /www; echo new page > /www/other.html; "
        + LOUD_COUNTER
    )
    name, new = name_for(request), name_for(request, "-r")
    c = containers.run(name, script)
    wait_count(c, 5)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    assert (ckpt.kind, ckpt.runtime) == ("container", "docker")
    assert dockerd.status(name) == "exited"
    docker = ckpt.manifest.workload["docker"]
    assert docker["image"]["name"] == IMAGE and docker["name"] == name
    diff = ckpt.manifest.workload["rootfs"]["diff"]
    assert (diff["snapshotter"], diff["format"]) == ("overlay2", "overlay")
    assert diff["whiteouts"] == 1 and diff["opaque"] == 1
    before = [int(x) for x in checkpointed_counts(ckpt)]

    r = containers.track(cedana.restore(tmp_path / "c.tar.zst", name=new, address=dockerd.address))
    assert isinstance(r, cedana.DockerContainer) and r.name == new
    assert new in dockerd.running() and r.status == "running"
    assert r.image == IMAGE
    assert_counts_on(r, before)
    assert dockerd.docker("exec", new, "cat", "/root/new.txt").stdout == "written inside\n"
    assert dockerd.docker("exec", new, "cat", "/etc/image.txt").stdout == "changed\n"
    assert dockerd.docker("exec", new, "ls", "/www").stdout.split() == ["other.html"]
    assert dockerd.docker("exec", new, "test", "-e", "/etc/doomed.txt", check=False).returncode
    label = dockerd.docker(
        "inspect", "-f", '{{index .Config.Labels "io.cedana.restored-from"}}', new
    ).stdout.strip()
    assert label == name
    wait_for(
        lambda: str(len(before) + 3) in dockerd.docker("logs", new).stdout.split(),
        20,
        "docker logs to show the counts after the checkpoint",
    )
    dockerd.docker("stop", "-t", "1", new)
    assert dockerd.status(new) == "exited"
    dockerd.docker("rm", new)
    assert new not in dockerd.names()


def checkpointed_counts(ckpt: cedana.Checkpoint) -> list[str]:
    """The counter's log as the checkpoint's rootfs changes hold it."""
    data = ckpt.read_member("container/rootfs-diff.tar")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("tmp/count.log")
        assert member is not None
        return member.read().decode().split()


def test_leave_running_and_a_restore_beside_the_original(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With ``leave_running`` the original goes on counting, and the checkpoint restores
    under a new name beside it: two containers counting, each in its own filesystem
    (a file written by the copy does not appear in the original)."""
    name, new = name_for(request), name_for(request, "-r")
    c = containers.run(name)
    wait_count(c, 3)
    pid = c.pid
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    assert c.pid == pid and c.status == "running"
    r = containers.track(cedana.restore(ckpt, name=new, address=dockerd.address))
    assert {name, new} <= dockerd.running()
    assert_counts_on(r, checkpointed_counts_int(ckpt))
    wait_count(c, len(count(c)) + 3)
    dockerd.docker("exec", new, "sh", "-c", "echo copy > /root/mine.txt")
    assert _read(r, "/root/mine.txt") == "copy\n"
    assert _read(c, "/root/mine.txt") is None


def checkpointed_counts_int(ckpt: cedana.Checkpoint) -> list[int]:
    return [int(x) for x in checkpointed_counts(ckpt)]


def test_multi_process_container(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A container with several processes (a child counter and a sleeping child under
    the init shell) comes back with all of them, the counter going on."""
    script = f"sleep 1000 & ({COUNTER}) & wait"
    name, new = name_for(request), name_for(request, "-r")
    c = containers.run(name, script)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    assert len(ckpt.manifest.tree) >= 3  # sh, sleep 1000, the subshell (and its sleep)
    r = containers.track(cedana.restore(ckpt, name=new, address=dockerd.address))
    assert_counts_on(r, checkpointed_counts_int(ckpt))
    ps = dockerd.docker("exec", new, "ps", "-o", "args").stdout
    assert "sleep 1000" in ps


def test_paused_container(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A paused container is checkpointed as it is: with ``leave_running`` it stays
    paused (its counter does not move), and its restored copy runs."""
    name, new = name_for(request), name_for(request, "-r")
    c = containers.run(name)
    wait_count(c, 3)
    dockerd.docker("pause", name)
    frozen = count(c)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    assert ckpt.manifest.workload["container"]["status"] == "paused"
    assert dockerd.status(name) == "paused" and count(c) == frozen
    r = containers.track(cedana.restore(ckpt, name=new, address=dockerd.address))
    assert_counts_on(r, frozen)
    assert dockerd.status(name) == "paused" and count(c) == frozen
    dockerd.docker("unpause", name)


def test_restore_into_runc(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The same artifact restores as a plain runc container (``into="runc"``), its files
    and counter included, beside the running original; docker's own networking hook is
    dropped and the files docker binds in (``/etc/hosts``...) become files of the new
    bundle (never docker's host paths), so nothing needs granting."""
    name, new = name_for(request), name_for(request, "-runc")
    c = containers.run(name, "echo mine > /root/new.txt; " + COUNTER)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    r = containers.track(cedana.restore(ckpt, into="runc", name=new))
    assert isinstance(r, cedana.RuncContainer) and r.status == "running"
    assert_counts_on(r, checkpointed_counts_int(ckpt))
    assert r.exec(["cat", "/root/new.txt"]) == b"mine\n"
    assert r.exec(["cat", "/etc/hostname"]) == f"{c.id[:12]}\n".encode()
    assert c.status == "running"


def test_cli_checkpoint_and_restore(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``cedana checkpoint docker:NAME --address`` and ``cedana restore --name`` work
    through the registry: the restored container runs under docker."""
    from tests.helpers import run_cedana

    name, new = name_for(request), name_for(request, "-r")
    c = containers.run(name)
    wait_count(c, 3)
    out = tmp_path / "c.tar.zst"
    done = run_cedana("checkpoint", f"docker:{name}", "-o", str(out), "--address", dockerd.address)
    assert done.returncode == 0, done.stderr
    done = run_cedana("restore", str(out), "--name", new, "--address", dockerd.address, "--json")
    containers.names.append(new)
    assert done.returncode == 0, done.stderr
    assert '"runtime": "docker"' in done.stdout and f'"name": "{new}"' in done.stdout
    assert new in dockerd.running()


# --- bad input ------------------------------------------------------------------------------


def test_no_such_container_and_not_running(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A name docker does not know is ContainerNotFound; a container that exited (or was
    only created) is ContainerNotRunning; both say what to do, and nothing is written."""
    with pytest.raises(cedana.ContainerNotFound, match="no docker container named 'nope"):
        containers.handle("nope-cedana").checkpoint(tmp_path / "a.tar.zst")
    name = name_for(request)
    c = containers.run(name, "true")
    wait_for(lambda: dockerd.status(name) == "exited", 20, "the container to exit")
    with pytest.raises(cedana.ContainerNotRunning, match="exited.*docker start"):
        c.checkpoint(tmp_path / "b.tar.zst")
    assert not list(tmp_path.iterdir())


def test_volume_is_refused_and_the_container_keeps_running(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A container with a volume is refused before it is frozen (NotCheckpointable naming
    the volume), and keeps counting."""
    name = name_for(request)
    c = containers.run(name, flags=("-v", "/data"))
    wait_count(c, 3)
    with pytest.raises(cedana.NotCheckpointable, match="volumes or bind mounts.*/data"):
        c.checkpoint(tmp_path / "c.tar.zst")
    n = len(count(c))
    wait_count(c, n + 3)
    assert c.status == "running"


def test_restore_name_taken_and_failed_restore_leaves_nothing(
    containers: Containers,
    dockerd: Dockerd,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Restoring under a taken name is refused before anything is made (ContainerExists);
    a restore that fails after docker started the container (here: bringing its loopback
    up) removes the container it made; the original is untouched."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 3)
    pid = c.pid
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    before = dockerd.names()
    with pytest.raises(cedana.ContainerExists, match=name):
        cedana.restore(ckpt, address=dockerd.address)
    assert dockerd.names() == before

    from cedana.container import namespaces

    def broken(pid: int) -> None:
        raise OSError(1, f"cannot set up the network of {pid}")

    monkeypatch.setattr(namespaces, "loopback_up", broken)
    with pytest.raises(OSError, match="cannot set up the network"):
        cedana.restore(ckpt, name=name_for(request, "-r"), address=dockerd.address)
    assert dockerd.names() == before
    assert c.pid == pid and c.status == "running"


def test_image_gone(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A checkpoint whose image was removed from docker is refused (ImageNotFound, saying
    to load it) before any container is made."""
    image = f"cedana-test/gone-{os.getpid()}:1"
    dockerd.docker("import", "--message", image, str(dockerd.tmp / "busybox.tar"), image)
    name = name_for(request)
    c = containers.run(name, image=image)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    dockerd.docker("rm", name)
    dockerd.docker("rmi", image)
    before = dockerd.names()
    with pytest.raises(cedana.ImageNotFound, match="docker load"):
        cedana.restore(ckpt, name=name_for(request, "-r"), address=dockerd.address)
    assert dockerd.names() == before


def test_crafted_host_config_is_refused(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A checkpoint whose recorded HostConfig asks for a privileged container, or a bind
    of a host directory, is refused (UnsafeArtifact naming the field) before docker is
    asked to make anything."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 3)
    base = tmp_path / "c.tar.zst"
    c.checkpoint(base, leave_running=True)
    before = dockerd.names()
    for field, value in (("Privileged", True), ("Binds", ["/:/host"])):

        def edit(workload: dict[str, Any], images: Path, f: str = field, v: Any = value) -> None:
            workload["docker"]["host_config"][f] = v

        crafted = craft(base, tmp_path / f"{field}.tar.zst", edit)
        with pytest.raises(cedana.UnsafeArtifact, match=f"HostConfig.{field}"):
            cedana.restore(crafted, name=name_for(request, "-r"), address=dockerd.address)
    assert dockerd.names() == before


def test_daemon_not_experimental(
    containers: Containers, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    """Restoring into a daemon that is not experimental is refused (SetupError saying how to
    enable it) before anything is made."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    plain = Dockerd(tmp_path_factory.mktemp("plain"), experimental=False)
    try:
        plain.start()
        with pytest.raises(cedana.SetupError, match="not experimental.*--experimental"):
            cedana.restore(ckpt, name=name_for(request, "-r"), address=plain.address)
        assert plain.names() == set()
    finally:
        plain.stop()


def test_loopback_server_in_the_container(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A TCP server listening on the container's loopback answers again after restore
    (its socket came back, and so did ``lo`` in the new network namespace)."""
    server = "nc -ll -p 7000 -e echo pong & " + COUNTER
    name, new = name_for(request), name_for(request, "-r")
    c = containers.run(name, server)
    wait_count(c, 3)
    wait_for(
        lambda: (
            dockerd.docker("exec", name, "nc", "127.0.0.1", "7000", check=False).stdout == "pong\n"
        ),
        20,
        "the server to answer",
    )
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    r = containers.track(cedana.restore(ckpt, name=new, address=dockerd.address))
    assert_counts_on(r, checkpointed_counts_int(ckpt))
    assert dockerd.docker("exec", new, "nc", "127.0.0.1", "7000").stdout == "pong\n"


def test_tcp_repair_restores_into_runc_only(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A checkpoint taken with ``tcp_established`` is refused by the restore into docker
    (whose runc shim passes CRIU no TCP repair), saying to restore it into runc, before
    any container is made."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True, tcp_established=True)
    before = dockerd.names()
    with pytest.raises(cedana.ContainerError, match="TCP repair.*into='runc'"):
        cedana.restore(ckpt, name=name_for(request, "-r"), address=dockerd.address)
    assert dockerd.names() == before


def test_container_with_a_zombie(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A container holding a zombie (a child its parent never reaps) restores: CRIU keeps
    only the zombie's exit status, and confinement does not ask it for namespaces."""
    script = f"({COUNTER}) & sleep 0.01 & exec sleep 100000"
    name, new = name_for(request), name_for(request, "-r")
    c = containers.run(name, script)
    wait_count(c, 3)
    wait_for(
        lambda: "Z" in dockerd.docker("exec", name, "ps", "-o", "stat").stdout.split(),
        20,
        "the zombie",
    )
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    assert "dead" in {p.state for p in ckpt.inspect().processes}  # CRIU's word for a zombie
    r = containers.track(cedana.restore(ckpt, name=new, address=dockerd.address))
    assert_counts_on(r, checkpointed_counts_int(ckpt))


def test_a_64_mib_buffer_holds(
    containers: Containers, dockerd: Dockerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A shell holding 64 MiB (48 MiB of random bytes as base64) in a variable has the
    same checksum of it after restore as before: the memory came back intact."""
    script = (
        "a=$(head -c 50331648 /dev/urandom | base64 -w0); "
        'echo -n "$a" | md5sum > /tmp/before; '
        'while true; do if [ -e /tmp/check ]; then echo -n "$a" | md5sum > /tmp/after.new; '
        "mv /tmp/after.new /tmp/after; rm /tmp/check; fi; sleep 0.05; done"
    )
    name, new = name_for(request), name_for(request, "-r")
    c = containers.run(name, script)
    wait_for(lambda: _read(c, "/tmp/before"), 60, "the buffer")
    before = _read(c, "/tmp/before")
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    r = containers.track(cedana.restore(ckpt, name=new, address=dockerd.address))
    dockerd.docker("exec", new, "touch", "/tmp/check")
    wait_for(lambda: _read(r, "/tmp/after"), 60, "the checksum after restore")
    assert _read(r, "/tmp/after") == before
