"""containerd containers against a real containerd, runc and CRIU.

The session starts its own containerd (``--root``, ``--state``, ``--address`` in
a temp dir, the CRI plugin off) and imports an OCI image it builds from
busybox-static (no registry): one layer, a config, a manifest, ``index.json``
and ``oci-layout`` in a tar, made with tarfile, json and sha256. Containers
run with ``ctr run -d --null-io`` in a namespace of this run. ``ctr`` is used
to set up and to look at what containerd shows; cedana itself only talks to
containerd's API. Every container, task, snapshot and mount a test makes is
removed at teardown, and the daemon is stopped with its shims.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import cedana
from cedana.rootfs.mounts import mountinfo, umount
from cedana.runtimes._containerd_api import RUNC_OPTIONS_TYPE, encode_runc_options
from tests.capabilities import integration, requires_busybox, requires_runtime, requires_tool
from tests.conftest import reap_zombie_children, wait_for
from tests.helpers import (
    COUNTER,
    assert_counts_on,
    busybox_tree,
    count,
    craft,
    kill_containerd_shims,
    name_for,
    remove_runc_container,
    run_cedana,
    tmpfs,
    wait_count,
)

pytestmark = [
    *integration,
    requires_runtime("containerd"),
    requires_runtime("ctr"),
    requires_runtime("runc"),
    requires_busybox,
]

CONFIG = """\
version = 2
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.tracing",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"""


# --- the image --------------------------------------------------------------------------


def _add(
    tar: tarfile.TarFile,
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes = b"",
    mode: int = 0o644,
    link: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, 1_700_000_000
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def busybox_layer() -> bytes:
    """One uncompressed layer: busybox, its applets as symlinks, a few /etc files."""
    kinds = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "link": tarfile.SYMTYPE}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, rel, content, mode in busybox_tree():
            if kind == "link":
                _add(tar, rel, kinds[kind], link=content)
            else:
                _add(tar, rel, kinds[kind], data=content or b"", mode=mode)
    return out.getvalue()


def oci_archive(path: Path, name: str, layer: bytes) -> str:
    """Write an OCI image layout tar for image ``name`` with one layer; return its digest."""

    def blob(data: bytes) -> tuple[str, bytes]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), data

    layer_digest, _ = blob(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
    ).encode()
    config_digest, _ = blob(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    manifest_digest, _ = blob(manifest)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "annotations": {"io.containerd.image.name": name},
                }
            ],
        }
    ).encode()
    members = [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", index)]
    members += [
        (f"blobs/sha256/{digest.split(':')[1]}", data)
        for digest, data in (blob(layer), blob(config), blob(manifest))
    ]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            _add(tar, member, data=data)
    return manifest_digest


# --- the daemon -------------------------------------------------------------------------


class Containerd:
    """A containerd of this test session: its own root, state, socket and namespace."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.address = str(tmp / "containerd.sock")
        self.namespace = f"cedana-test-{os.getpid()}"
        self.log = tmp / "containerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        """containerd's config.toml for this daemon."""
        return CONFIG.format(opt=self.tmp / "opt")

    def start(self) -> None:
        config = self.tmp / "config.toml"
        config.write_text(self.config())
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["containerd", "--config", str(config), "--root", str(self.tmp / "root"),
                 "--state", str(self.tmp / "state"), "--address", self.address],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"containerd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def ctr(
        self, *args: str, check: bool = True, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["ctr", "-a", self.address, "-n", namespace or self.namespace, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and done.returncode != 0:
            pytest.fail(f"ctr {' '.join(args)} failed: {done.stderr}")
        return done

    def lines(self, *args: str, namespace: str | None = None) -> list[str]:
        """The first column of a ``ctr ... ls`` table, header dropped."""
        out = self.ctr(*args, namespace=namespace).stdout.splitlines()[1:]
        return [line.split()[0] for line in out if line.strip()]

    def tasks(self, namespace: str | None = None) -> dict[str, str]:
        """``ctr task ls``: container id -> status."""
        out = self.ctr("task", "ls", namespace=namespace).stdout.splitlines()[1:]
        return {f[0]: f[2] for f in (line.split() for line in out) if len(f) >= 3}

    def stop(self) -> None:
        namespaces = self.lines("namespaces", "ls") if self.process else []
        for ns in namespaces:
            for cid in self.lines("containers", "ls", namespace=ns):
                self.ctr("task", "rm", "-f", cid, check=False, namespace=ns)
                self.ctr("containers", "rm", cid, check=False, namespace=ns)
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        kill_containerd_shims(self.address)
        for entry in reversed(mountinfo()):
            if entry.mountpoint.startswith(str(self.tmp) + "/"):
                with contextlib.suppress(OSError):
                    umount(entry.mountpoint, detach=True)
        for ns in namespaces:
            with contextlib.suppress(OSError):
                Path("/run/containerd/runc", ns).rmdir()


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    daemon = Containerd(tmp_path_factory.mktemp("ctd"))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def layer() -> bytes:
    return busybox_layer()


@pytest.fixture(scope="session")
def image(containerd: Containerd, layer: bytes, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The busybox image, imported once for the session."""
    name = "localhost/cedana-test/busybox:1"
    archive = tmp_path_factory.mktemp("image") / "busybox.tar"
    oci_archive(archive, name, layer)
    containerd.ctr("images", "import", str(archive))
    return name


class Containers:
    """Runs containers with ctr; at teardown removes them, their tasks and snapshots."""

    def __init__(self, daemon: Containerd, image: str):
        self.daemon = daemon
        self.image = image
        self.names: list[str] = []
        self.handles: list[cedana.ContainerdContainer] = []
        self.runc_names: list[tuple[str, Path]] = []

    def handle(self, name: str) -> cedana.ContainerdContainer:
        c = cedana.ContainerdContainer(
            name, namespace=self.daemon.namespace, address=self.daemon.address
        )
        self.handles.append(c)
        return c

    def run(
        self,
        name: str,
        script: str = COUNTER,
        *,
        image: str | None = None,
        null_io: bool = True,
        flags: tuple[str, ...] = (),
    ) -> cedana.ContainerdContainer:
        self.names.append(name)
        io_flags = ["--null-io"] if null_io else []
        self.daemon.ctr(
            "run", "-d", *io_flags, *flags, image or self.image, name, "sh", "-c", script
        )
        return self.handle(name)

    def track(self, restored: Any) -> Any:
        """Remember a restored container (containerd or runc) for teardown."""
        if isinstance(restored, cedana.ContainerdContainer):
            self.names.append(restored.id)
            self.handles.append(restored)
        elif isinstance(restored, cedana.RuncContainer):
            self.runc_names.append((restored.id, restored.root))
        return restored

    def cleanup(self) -> None:
        for name in reversed(self.names):
            self.daemon.ctr("task", "rm", "-f", name, check=False)
            self.daemon.ctr("containers", "rm", name, check=False)
        for name, root in self.runc_names:
            remove_runc_container(name, root)
        for handle in self.handles:
            handle.close()
        self.names, self.handles, self.runc_names = [], [], []
        reap_zombie_children()


@pytest.fixture
def containers(containerd: Containerd, image: str) -> Iterator[Containers]:
    c = Containers(containerd, image)
    try:
        yield c
    finally:
        c.cleanup()


# --- observing the counter ----------------------------------------------------------------


def checkpointed_file(ckpt: cedana.Checkpoint, name: str) -> bytes | None:
    """A file of the container's writable layer as the checkpoint holds it."""
    data = ckpt.read_member("container/rootfs-diff.tar")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        try:
            member = tar.extractfile(name)
        except KeyError:
            return None
        return member.read() if member is not None else None


def checkpointed_counts(ckpt: cedana.Checkpoint) -> list[int]:
    return [int(x) for x in (checkpointed_file(ckpt, "tmp/count.log") or b"").split()]


def snapshot_keys(daemon: Containerd) -> set[str]:
    return set(daemon.lines("snapshots", "ls"))


# --- checkpoint and restore --------------------------------------------------------------


def test_counter_continues_under_a_new_name(
    containers: Containers, containerd: Containerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A counter goes on after restore under a new name, and containerd manages the
    restored task like any other: ``ctr task ls`` shows it RUNNING with its pid, and
    ``ctr task kill`` / ``ctr task delete`` end it. The checkpointed task is gone from
    containerd (deleted once the artifact was verified); its container stays."""
    name, new = name_for(request), name_for(request, "-r")
    c = containers.run(name)
    wait_count(c, 5)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    assert ckpt.kind == "container" and ckpt.runtime == "containerd"
    assert name not in containerd.tasks()
    assert name in containerd.lines("containers", "ls")
    before = checkpointed_counts(ckpt)

    r = containers.track(
        cedana.restore(tmp_path / "c.tar.zst", name=new, address=containerd.address)
    )
    assert isinstance(r, cedana.ContainerdContainer)
    assert (r.id, r.namespace) == (new, containerd.namespace)
    assert containerd.tasks()[new] == "RUNNING"
    assert r.status == "running" and r.image == containers.image
    assert_counts_on(r, before)
    info = containerd.ctr("containers", "info", new).stdout
    assert json.loads(info)["Labels"]["io.cedana.restored-from"] == f"{containerd.namespace}/{name}"

    containerd.ctr("task", "kill", "-s", "KILL", new)
    wait_for(lambda: containerd.tasks().get(new) == "STOPPED", 20, "the task to stop")
    containerd.ctr("task", "delete", new)
    assert new not in containerd.tasks()


def test_filesystem_changes_come_back(
    containers: Containers, containerd: Containerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """What the container did to its files is there after restore under a new name: a new
    file, a modified image file, a deleted image file (still deleted), a replaced
    directory; the image's own layer is untouched."""
    script = (
        "echo written inside > /tmp/new.txt; echo changed > /etc/image.txt; "
        "rm /etc/doomed.txt; rm -rf /www; mkdir /www; echo new page > /www/other.html; " + COUNTER
    )
    name, new = name_for(request), name_for(request, "-r")
    c = containers.run(name, script)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "fs.tar.zst")
    diff = ckpt.manifest.workload["rootfs"]["diff"]
    assert diff["snapshotter"] == "containerd"
    assert diff["whiteouts"] == 1 and diff["opaque"] == 1

    r = containers.track(cedana.restore(ckpt, name=new, address=containerd.address))
    wait_count(r, 1)
    root = Path(f"/proc/{r.pid}/root")
    assert (root / "tmp/new.txt").read_text() == "written inside\n"
    assert (root / "etc/image.txt").read_text() == "changed\n"
    assert not (root / "etc/doomed.txt").exists()
    assert sorted(os.listdir(root / "www")) == ["other.html"]
    assert (root / "etc/passwd").read_text().startswith("root:")
    # A fresh container of the image still sees the image's files.
    fresh = containers.run(name_for(request, "-fresh"), "sleep 1000")
    wait_for(lambda: fresh.status == "running", 10, "the fresh container")
    fresh_root = Path(f"/proc/{fresh.pid}/root")
    assert (fresh_root / "etc/doomed.txt").exists()
    assert (fresh_root / "etc/image.txt").read_text() == "from the image\n"


def test_two_restores_from_one_checkpoint(
    containers: Containers, containerd: Containerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """One checkpoint restores twice under two names; both run at once, each counting on
    from the same point, each in a cgroup of its own and on a snapshot of its own."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 5)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    before = checkpointed_counts(ckpt)
    a = containers.track(
        cedana.restore(ckpt, name=name_for(request, "-a"), address=containerd.address)
    )
    b = containers.track(
        cedana.restore(ckpt, name=name_for(request, "-b"), address=containerd.address)
    )
    assert a.pid != b.pid
    assert {a.id: "RUNNING", b.id: "RUNNING"}.items() <= containerd.tasks().items()
    assert_counts_on(a, before)
    assert_counts_on(b, before)
    assert a.spec["linux"]["cgroupsPath"] != b.spec["linux"]["cgroupsPath"]
    assert a.spec["linux"]["cgroupsPath"].endswith(a.id)
    assert {a.id, b.id} <= snapshot_keys(containerd)


def test_restore_after_the_original_is_deleted(
    containers: Containers, containerd: Containerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With the checkpointed container deleted from containerd (container and snapshot),
    the checkpoint restores under the original name, from the image alone."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 5)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    c.delete()
    assert name not in containerd.lines("containers", "ls")
    assert name not in snapshot_keys(containerd)

    r = containers.track(cedana.restore(ckpt, address=containerd.address))
    assert r.id == name
    assert containerd.tasks()[name] == "RUNNING"
    assert_counts_on(r, checkpointed_counts(ckpt))


def test_leave_running(
    containers: Containers, containerd: Containerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With leave_running the original keeps counting (same task, same pid) while a copy
    restored from the checkpoint counts on from the checkpointed point."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 5)
    pid = c.pid
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    before = checkpointed_counts(ckpt)
    assert containerd.tasks()[name] == "RUNNING" and c.pid == pid
    wait_count(c, len(before) + 10)

    r = containers.track(
        cedana.restore(ckpt, name=name_for(request, "-copy"), address=containerd.address)
    )
    assert_counts_on(r, before)
    assert c.status == "running"


def test_restore_without_the_image(
    containers: Containers,
    containerd: Containerd,
    image: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Restoring when the container's image was removed fails with an error naming the
    image, and leaves no container, snapshot or lease behind."""
    tagged = f"localhost/cedana-test/doomed:{os.getpid()}"
    containerd.ctr("images", "tag", image, tagged)
    name = name_for(request)
    c = containers.run(name, image=tagged)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    containerd.ctr("images", "rm", tagged)
    containers_before = set(containerd.lines("containers", "ls"))
    snapshots_before = snapshot_keys(containerd)

    new = name_for(request, "-r")
    with pytest.raises(cedana.ImageNotFound, match=tagged) as failure:
        cedana.restore(ckpt, name=new, address=containerd.address)
    assert "import or pull" in str(failure.value)
    assert set(containerd.lines("containers", "ls")) == containers_before
    assert snapshot_keys(containerd) == snapshots_before
    assert containerd.lines("leases", "ls") == []


def test_checkpoint_of_a_stopped_task(
    containers: Containers, containerd: Containerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A container whose task has exited, or that has no task, is refused with a clear
    ContainerNotRunning, and no artifact is written."""
    name = name_for(request)
    c = containers.run(name, "exit 3")
    wait_for(lambda: containerd.tasks().get(name) == "STOPPED", 20, "the task to exit")
    with pytest.raises(cedana.ContainerNotRunning, match="stopped task"):
        c.checkpoint(tmp_path / "c.tar.zst")
    containerd.ctr("task", "delete", name)
    with pytest.raises(cedana.ContainerNotRunning, match="has no task"):
        c.checkpoint(tmp_path / "c.tar.zst")
    with pytest.raises(cedana.ContainerNotFound, match="no-such-container"):
        containers.handle("no-such-container").checkpoint(tmp_path / "c.tar.zst")
    assert not (tmp_path / "c.tar.zst").exists()


@requires_tool("tar", "zstd")
def test_artifact_lists_and_inspects(
    containers: Containers,
    containerd: Containerd,
    image: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The artifact is a zstd tar that ``tar --zstd -tf`` lists (manifest first, the
    container's members inside); its manifest records the image (reference, digest,
    chain id), snapshotter, runtime and spec; ``cedana inspect`` shows the container."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 3)
    artifact = tmp_path / "c.tar.zst"
    c.checkpoint(artifact, leave_running=True)

    listing = subprocess.run(
        ["tar", "--zstd", "-tf", str(artifact)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing[0] == "manifest.json"
    assert {"descriptors.json", "container/spec.json", "container/rootfs-diff.tar"} <= set(listing)
    assert any(m.startswith("pages-") for m in listing)

    manifest = cedana.open(artifact).manifest
    ctd = manifest.workload["containerd"]
    listed = {
        line.split()[0]: line.split()[2]
        for line in containerd.ctr("images", "ls").stdout.splitlines()[1:]
    }
    assert ctd["image"]["name"] == image and ctd["image"]["digest"] in listed[image]
    assert ctd["image"]["digest"] == listed[image]
    assert ctd["image"]["chain_id"].startswith("sha256:")
    assert (ctd["snapshotter"], ctd["snapshot_key"]) == ("overlayfs", name)
    assert ctd["runtime"]["name"] == "io.containerd.runc.v2"
    assert ctd["namespace"] == containerd.namespace
    spec = json.loads(cedana.open(artifact).read_member("container/spec.json"))
    assert spec["process"]["args"] == ["sh", "-c", COUNTER]

    out = run_cedana("inspect", str(artifact), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["checkpoint"]["runtime"] == "containerd"
    assert data["container"]["id"] == name
    commands = [p["command"] for p in data["checkpoint"]["processes"]]
    assert any("sh" in cmd for cmd in commands)
    shown = run_cedana("inspect", str(artifact))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "containerd" in text and name in text


def test_cli_checkpoint_and_restore(
    containers: Containers, containerd: Containerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``cedana checkpoint containerd:NS/ID -o FILE --address SOCK`` and ``cedana restore
    FILE --into containerd --name NEW --address SOCK --json`` round trip; the JSON names
    the runtime, the container and its pid."""
    name, new = name_for(request), name_for(request, "-r")
    c = containers.run(name)
    wait_count(c, 5)
    artifact = tmp_path / "c.tar.zst"

    target = f"containerd:{containerd.namespace}/{name}"
    out = run_cedana("checkpoint", target, "-o", str(artifact), "--address", containerd.address)
    assert out.returncode == 0, out.stderr
    assert f"containerd container {containerd.namespace}/{name}" in out.stdout
    out = run_cedana(
        "restore", str(artifact), "--into", "containerd", "--name", new,
        "--address", containerd.address, "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    r = containers.track(containers.handle(new))
    assert data == {
        "runtime": "containerd",
        "name": new,
        "namespace": containerd.namespace,
        "pid": r.pid,
    }
    assert containerd.tasks()[new] == "RUNNING"

    out = run_cedana("restore", str(artifact), "--into", "containerd", "--name", new,
              "--address", containerd.address)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("cedana: error: ") and "exists" in out.stderr
    out = run_cedana(
        "checkpoint", "containerd:x", "-o", str(tmp_path / "x"), "--address", "/nonexistent"
    )
    assert out.returncode == 1 and "not listening" in out.stderr


def test_restore_into_runc(
    containers: Containers, containerd: Containerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A containerd checkpoint also restores as a plain runc container (into="runc"),
    outside containerd, counting on; containerd does not list it."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 5)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    runc_root = tmp_path / "runc"
    r = containers.track(
        cedana.restore(
            ckpt, into="runc", name=f"{name}-runc", root=runc_root, bundle=tmp_path / "bundle"
        )
    )
    assert isinstance(r, cedana.RuncContainer)
    assert r.status == "running"
    before = checkpointed_counts(ckpt)
    assert wait_count(r, len(before) + 5)[: len(before)] == before
    assert_counts_on(r, before)
    assert f"{name}-runc" not in containerd.tasks()
    with pytest.raises(cedana.ContainerError, match="address"):
        cedana.restore(ckpt, into="runc", address=containerd.address)


def test_failed_dump_keeps_the_container_running(
    containers: Containers, containerd: Containerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """When writing the artifact fails mid-dump (a full disk), the container is thawed
    and keeps running under containerd; no artifact is left."""
    name = name_for(request)
    script = "head -c 3000000 /dev/urandom > /tmp/blob; " + COUNTER
    c = containers.run(name, script)
    wait_count(c, 3)
    with tmpfs(tmp_path / "full", "256k") as full:
        with pytest.raises(OSError) as failure:
            c.checkpoint(full / "c.tar.zst")
        assert failure.value.errno == errno.ENOSPC
        assert not (full / "c.tar.zst").exists()
    assert containerd.tasks()[name] == "RUNNING"
    seen = len(count(c))
    wait_count(c, seen + 5)


def test_failed_restore_leaves_nothing(
    containers: Containers,
    containerd: Containerd,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restore that fails after containerd started the task (here: setting up its
    network) removes the task, the container, the snapshot and the lease; so does one
    that fails creating the task (a log path that cannot be made)."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    containers_before = set(containerd.lines("containers", "ls"))
    snapshots_before = snapshot_keys(containerd)

    from cedana.container import namespaces

    def broken(pid: int) -> None:
        raise OSError(1, f"cannot set up the network of {pid}")

    monkeypatch.setattr(namespaces, "loopback_up", broken)
    new = name_for(request, "-r")
    with pytest.raises(OSError, match="cannot set up the network"):
        cedana.restore(ckpt, name=new, address=containerd.address)
    monkeypatch.undo()
    with pytest.raises(cedana.RestoreFailed, match="could not create the task"):
        cedana.restore(ckpt, name=new, address=containerd.address, log="/proc/none/x/log")

    assert new not in containerd.tasks()
    assert set(containerd.lines("containers", "ls")) == containers_before
    assert snapshot_keys(containerd) == snapshots_before
    assert containerd.lines("leases", "ls") == []
    assert containerd.tasks()[name] == "RUNNING"


def test_name_taken(
    containers: Containers, containerd: Containerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Restoring under the name of an existing container is refused before anything is
    made (ContainerExists), and the existing container is untouched."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 3)
    pid = c.pid
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    with pytest.raises(cedana.ContainerExists, match=name):
        cedana.restore(ckpt, address=containerd.address)
    assert containerd.tasks()[name] == "RUNNING" and c.pid == pid


def test_container_with_containerd_fifos(
    containers: Containers, containerd: Containerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A container started with containerd's stdio fifos (``ctr run -d`` without
    --null-io) restores with its stdout going to the log file given to restore."""
    name, new = name_for(request), name_for(request, "-r")
    script = (
        "i=0; while true; do i=$((i+1)); echo line $i; echo $i >> /tmp/count.log; sleep 0.05; done"
    )
    c = containers.run(name, script, null_io=False)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    descriptors = ckpt.manifest.workload["container"]["descriptors"]
    assert len(descriptors) == 3
    assert all(d.startswith("pipe:") for d in descriptors)
    log = tmp_path / "restored.log"
    r = containers.track(cedana.restore(ckpt, name=new, address=containerd.address, log=log))
    before = checkpointed_counts(ckpt)
    assert_counts_on(r, before)
    wait_for(lambda: log.exists() and "line" in log.read_text(), 10, "output in the log")
    first = int(log.read_text().split()[1])
    assert first > len(before) - 5
    # It echoes "line i" just before counting i: the copy's first line follows the count.
    assert first in (before[-1] + 1, before[-1] + 2), (before[-3:], first)


def test_custom_runc_root(
    containers: Containers, containerd: Containerd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A container whose runtime options give the shim another runc root (``ctr run
    --runc-root``) is found there, checkpointed, and restored with the same options (its
    copy lives under that root too)."""
    root = Path(f"/run/cedana-test-runc-{os.getpid()}")
    try:
        name, new = name_for(request), name_for(request, "-r")
        c = containers.run(name, flags=("--runc-root", str(root)))
        wait_count(c, 5)
        assert c.runc.root == root / containerd.namespace
        ckpt = c.checkpoint(tmp_path / "c.tar.zst")
        assert ckpt.manifest.workload["container"]["root"] == str(root / containerd.namespace)
        r = containers.track(cedana.restore(ckpt, name=new, address=containerd.address))
        assert (root / containerd.namespace / new / "state.json").is_file()
        assert_counts_on(r, checkpointed_counts(ckpt))
    finally:
        containers.cleanup()
        shutil.rmtree(root, ignore_errors=True)


# --- crafted artifacts ------------------------------------------------------------------


def _spec_hooks(marker: Path) -> Callable[[dict[str, Any], Path], None]:
    def edit(workload: dict[str, Any], images: Path) -> None:
        path = images / "container" / "spec.json"
        spec = json.loads(path.read_text())
        hook = {"path": "/bin/sh", "args": ["sh", "-c", f"echo pwned > {marker}"]}
        spec["hooks"] = {"createRuntime": [hook]}
        path.write_text(json.dumps(spec))

    return edit


def _runc_binary(marker: Path) -> Callable[[dict[str, Any], Path], None]:
    def edit(workload: dict[str, Any], images: Path) -> None:
        evil = marker.with_name("evil-runc")
        evil.write_text(f"#!/bin/sh\necho pwned > {marker}\n")
        evil.chmod(0o755)
        runtime = workload["containerd"]["runtime"]
        runtime["options_type"] = RUNC_OPTIONS_TYPE
        runtime["options"] = base64.b64encode(
            encode_runc_options({"binary_name": str(evil)})
        ).decode()

    return edit


def _host_network(marker: Path) -> Callable[[dict[str, Any], Path], None]:
    def edit(workload: dict[str, Any], images: Path) -> None:
        path = images / "container" / "spec.json"
        spec = json.loads(path.read_text())
        spec["linux"]["namespaces"] = [
            ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"
        ]
        path.write_text(json.dumps(spec))

    return edit


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (_spec_hooks, r"spec has OCI hooks \(hooks\.createRuntime\)"),
        (_runc_binary, "containerd.runtime.options.*binary_name"),
        (_host_network, "spec field linux.namespaces leaves out the network namespace"),
    ],
)
def test_crafted_checkpoint_is_refused_before_containerd_runs_it(
    containers: Containers,
    containerd: Containerd,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    make: Callable[[Path], Callable[[dict[str, Any], Path], None]],
    match: str,
) -> None:
    """A containerd checkpoint crafted (and re-digested) to run a hook or a runc binary of
    its own on the host, or to share the host's network namespace, is refused before
    containerd is asked for anything: no container, snapshot or lease appears and the
    marker the host command would write does not exist."""
    name = name_for(request)
    c = containers.run(name)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    marker = tmp_path / "pwned"
    crafted = craft(ckpt.path, tmp_path / "crafted.tar.zst", make(marker))
    containers_before = set(containerd.lines("containers", "ls"))
    snapshots_before = snapshot_keys(containerd)
    with pytest.raises(cedana.UnsafeArtifact, match=match):
        cedana.restore(crafted, name=name_for(request, "-r"), address=containerd.address)
    assert set(containerd.lines("containers", "ls")) == containers_before
    assert snapshot_keys(containerd) == snapshots_before
    assert containerd.lines("leases", "ls") == []
    assert not marker.exists()
