"""Restores of runc and containerd checkpoints with fake clients: each step that fails
undoes exactly what the steps before it made, and nothing else; no runtime, no CRIU.

The runc command, containerd's API client and the CRIU backend are handed in (fakes
here); the kernel's side (the overlay mount, the loopback in the new network namespace)
is recorded instead of done. Confinement runs for real, on images whose decoding is
stubbed as in test_confine.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

import cedana
from cedana import procfs
from cedana.artifact import write_artifact
from cedana.artifact.manifest import HostInfo, Manifest, ProcessEntry
from cedana.artifact.signing import host_key
from cedana.container import confine, namespaces
from cedana.container.command import RuncCommand
from cedana.errors import ContainerNotFound, RestoreFailed, UnsafeArtifact
from cedana.rootfs.containerd import Mount
from cedana.rootfs.overlay import DIFF_NAME, OverlayLayers, OverlaySnapshotter, capture_upper
from cedana.runtimes._containerd_api import ContainerRecord, ImageRecord, TaskRecord
from tests.fakes import FakeCriu
from tests.unit.test_confine import HOST_IDS, _images, config


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the kernel's part instead of doing it: image decoding is stubbed, the
    overlay mount and the loopback are recorded."""
    done: list[str] = []
    images = _images()
    monkeypatch.setattr(confine, "load_image", lambda path: {"entries": images[path.name]})
    monkeypatch.setattr(OverlayLayers, "mount", lambda self, target: done.append("mount"))
    monkeypatch.setattr(namespaces, "restore_loopback", lambda cfg, pid: done.append("lo"))
    return done


def _artifact(tmp_path: Path, *, runtime: str, workload: Mapping[str, Any]) -> Path:
    """A signed container artifact: stub images, the config (and spec), the rootfs diff."""
    images = tmp_path / "art"
    (images / "container").mkdir(parents=True)
    for name in _images():
        (images / name).write_bytes(b"")
    (images / "descriptors.json").write_text("[]")
    (images / "container" / "config.json").write_text(json.dumps(config()))
    (images / "container" / "spec.json").write_text(json.dumps(config()))
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "motd").write_text("changed\n")
    with (images / "container" / DIFF_NAME).open("wb") as out:
        capture_upper(upper, out)
    manifest = Manifest(
        host=HostInfo(kernel="6.18.0", arch="x86_64", criu_version="4.2.1", hostname="box"),
        kind="container",
        runtime=runtime,
        options={},
        tree=[ProcessEntry(pid=4242, ppid=1, command="sh")],
        workload={"root_pid": 4242, "external": [], **workload},
    )
    dest = tmp_path / f"{runtime}.tar.zst"
    write_artifact(images, dest, manifest, signer=host_key())
    return dest


def _container(root: Path) -> dict[str, Any]:
    return {
        "id": "c1",
        "root": str(root),
        "bundle": "/old/bundle",
        "rootfs": "/old/bundle/rootfs",
        "status": "running",
        "config": "container/config.json",
        "descriptors": [],
        "terminal": False,
        "cgroup_paths": {},
        "ext_unix_sk": False,
    }


_ROOTFS = {"captured": True, "snapshotter": "overlay", "format": "overlay", "dir": "container"}


# --- runc ----------------------------------------------------------------------------


@attrs.define
class FakeRunc(RuncCommand):
    """runc that "restores" by writing the state runc would, as told by ``outcome``:
    ``ok`` (a live container), ``fails`` (status 1, no state), ``stopped`` (state of a
    container that exited at once)."""

    outcome: str = "ok"
    calls: list[str] = attrs.field(factory=list)

    def run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(args[0])
        name = args[-1]
        if args[0] == "restore" and self.outcome != "fails":
            bundle = args[args.index("--bundle") + 1]
            me = procfs.proc_info(os.getpid())
            live = self.outcome == "ok"
            (self.root / name).mkdir(parents=True)
            (self.root / name / "state.json").write_text(
                json.dumps(
                    {
                        "config": {"labels": [f"bundle={bundle}"]},
                        "init_process_pid": me.pid if live else 0,
                        "init_process_start": me.start_time if live else 0,
                    }
                )
            )
        if args[0] == "delete":
            state = self.root / name / "state.json"
            state.unlink()
            state.parent.rmdir()
        code = 1 if args[0] == "restore" and self.outcome == "fails" else 0
        return subprocess.CompletedProcess(list(args), code, b"", b"")


@pytest.fixture
def runc_artifact(tmp_path: Path) -> Path:
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    container = {**_container(tmp_path / "old-root"), "runtime": "runc"}
    rootfs = {**_ROOTFS, "lower": [str(lower)], "lower_identity": [None], "userxattr": False}
    return _artifact(tmp_path, runtime="runc", workload={"container": container, "rootfs": rootfs})


def _restore_runc(tmp_path: Path, artifact: Path, runc: FakeRunc) -> cedana.RuncContainer:
    return cedana.RuncContainer.restore(
        artifact,
        name="c2",
        root=runc.root,
        bundle=tmp_path / "bundle",
        lower=[tmp_path / "lower"],
        backend=FakeCriu(),
        command=runc,
        work_dir=tmp_path,
    )


def test_runc_restore_plan_runs_with_fake_clients(
    tmp_path: Path, runc_artifact: Path, kernel: list[str]
) -> None:
    """With the runc command and CRIU handed in, a restore makes the bundle (config, the
    changes applied to a new upper directory, the overlay mounted), runs runc restore,
    brings the loopback up, and keeps it all; the container it returns uses that runc."""
    runc = FakeRunc(tmp_path / "root")
    restored = _restore_runc(tmp_path, runc_artifact, runc)
    assert runc.calls == ["restore"]
    assert kernel == ["mount", "lo"]
    bundle = tmp_path / "bundle"
    assert (bundle / "upper" / "etc" / "motd").read_text() == "changed\n"
    assert json.loads((bundle / "config.json").read_text())["root"]["path"] == "rootfs"
    assert restored.id == "c2" and restored.pid == os.getpid()
    restored.kill()
    assert runc.calls == ["restore", "kill"]
    assert not list(tmp_path.glob(".cedana-restore-*"))


def test_runc_restore_plan_is_pure(tmp_path: Path, runc_artifact: Path) -> None:
    """Planning a runc restore decides the name, root, bundle, confined config, layers and
    runc's arguments, and makes nothing: no bundle, no state, no unpacked images."""
    from cedana.container.restore import plan_restore

    ckpt = cedana.open(runc_artifact)
    plan = plan_restore(
        ckpt,
        name="c2",
        root=tmp_path / "root",
        bundle=tmp_path / "bundle",
        lower=[tmp_path / "lower"],
        tcp_established=True,
    )
    assert (plan.name, plan.root, plan.bundle) == ("c2", tmp_path / "root", tmp_path / "bundle")
    assert plan.layers == (str(tmp_path / "lower"),) and plan.diff_dir == "container"
    assert plan.new_config is not None and plan.new_config["root"]["path"] == "rootfs"
    args = plan.runc_args(Path("/i"), Path("/w"))
    assert args[:2] == ["restore", "--detach"] and args[-2:] == ["--tcp-established", "c2"]
    assert args[args.index("--bundle") + 1] == str(tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "root").exists()
    assert not list(tmp_path.glob(".cedana-restore-*"))


def _raise(exc: BaseException) -> Any:
    def stand_in(*args: object, **kwargs: object) -> None:
        raise exc

    return stand_in


@pytest.mark.parametrize(
    ("step", "runc_calls", "kernel_done"),
    [
        ("images", [], []),  # confinement refuses the images: nothing made at all
        ("apply", [], []),  # the changes do not apply: the bundle goes
        ("mount", [], []),  # the overlay does not mount: the bundle goes
        ("runc", ["restore"], ["mount"]),  # runc fails, made no state: the bundle goes
        ("stopped", ["restore", "delete"], ["mount"]),  # runc made it, it exited: deleted
        ("loopback", ["restore", "delete"], ["mount"]),  # the loopback fails: deleted
    ],
)
def test_a_failed_runc_restore_undoes_what_it_made(
    tmp_path: Path,
    runc_artifact: Path,
    kernel: list[str],
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    runc_calls: list[str],
    kernel_done: list[str],
) -> None:
    """A failure at each step of a runc restore removes exactly what the steps before it
    made (the container runc made, the bundle with its upper directory) and nothing
    that it did not make; the error says what failed."""
    runc = FakeRunc(
        tmp_path / "root", outcome={"runc": "fails", "stopped": "stopped"}.get(step, "ok")
    )
    expected: type[BaseException] = RestoreFailed
    if step == "images":
        host = _images(ids={**HOST_IDS, "user_ns_id": 7})
        monkeypatch.setattr(confine, "load_image", lambda path: {"entries": host[path.name]})
        expected = UnsafeArtifact
    elif step == "apply":
        monkeypatch.setattr(OverlaySnapshotter, "apply", _raise(OSError(28, "No space left")))
        expected = OSError
    elif step == "mount":
        monkeypatch.setattr(OverlayLayers, "mount", _raise(OSError(1, "mount refused")))
        expected = OSError
    elif step == "loopback":
        monkeypatch.setattr(namespaces, "restore_loopback", _raise(OSError(1, "no lo")))
        expected = OSError
    (tmp_path / "root" / "other").mkdir(parents=True)  # someone else's: left alone
    with pytest.raises(expected):
        _restore_runc(tmp_path, runc_artifact, runc)
    assert runc.calls == runc_calls
    assert kernel == kernel_done
    assert not (tmp_path / "bundle").exists()
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["other"]
    assert (tmp_path / "lower" / "etc").is_dir()


# --- containerd ----------------------------------------------------------------------


IMAGE = ImageRecord(
    name="docker.io/library/busybox:latest",
    digest="sha256:d1",
    media_type="application/vnd.oci.image.manifest.v1+json",
    manifest_digest="sha256:d1",
    diff_ids=("sha256:layer",),
)


@attrs.define
class FakeContainerd:
    """containerd's API as the restore uses it, holding containers, tasks and snapshots in
    memory (snapshots as directories); ``fail`` names the call that fails."""

    base: Path
    fail: str = ""
    namespace: str = "default"
    address: str = "/run/fake/containerd.sock"
    calls: list[str] = attrs.field(factory=list)
    containers: dict[str, ContainerRecord] = attrs.field(factory=dict)
    tasks: dict[str, TaskRecord] = attrs.field(factory=dict)
    snapshots: set[str] = attrs.field(factory=set)
    leases: int = 0

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if what == self.fail:
            raise cedana.CedanaError(f"containerd refused {what}")

    @contextlib.contextmanager
    def lease(self) -> Iterator[str]:
        self.leases += 1
        try:
            yield "lease-1"
        finally:
            self.leases -= 1

    def container(self, container_id: str) -> ContainerRecord:
        if container_id not in self.containers:
            raise ContainerNotFound(container_id)
        return self.containers[container_id]

    def image(self, name: str) -> ImageRecord:
        return IMAGE

    def snapshot_exists(self, snapshotter: str, key: str) -> bool:
        return key == IMAGE.chain_id or key in self.snapshots

    def prepare_snapshot(
        self, snapshotter: str, key: str, parent: str, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        self._call("prepare")
        fs = self.base / key
        (fs / "fs").mkdir(parents=True)
        (fs / "work").mkdir()
        self.snapshots.add(key)
        options = (f"lowerdir={self.base / 'image'}", f"upperdir={fs / 'fs'}", f"workdir={fs}")
        return [Mount(type="overlay", source="overlay", options=options)]

    def snapshot_mounts(self, snapshotter: str, key: str) -> list[Mount]:
        raise AssertionError("the restore knows its snapshot's mounts from prepare")

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        self.calls.append("remove_snapshot")
        self.snapshots.discard(key)

    def create_container(self, record: ContainerRecord) -> None:
        self._call("create_container")
        self.containers[record.id] = record

    def delete_container(self, container_id: str) -> None:
        self.calls.append("delete_container")
        del self.containers[container_id]

    def create_task(self, container_id: str, mounts: Sequence[Mount], **kw: Any) -> None:
        self._call("create_task")
        self.tasks[container_id] = TaskRecord(id=container_id, pid=0, status="created")

    def start_task(self, container_id: str) -> int:
        self._call("start_task")
        self.tasks[container_id] = TaskRecord(id=container_id, pid=os.getpid(), status="running")
        return os.getpid()

    def task(self, container_id: str) -> TaskRecord | None:
        return self.tasks.get(container_id)

    def kill_task(self, container_id: str, signal: int, *, all_processes: bool = False) -> None:
        self.calls.append("kill_task")
        self.tasks[container_id] = attrs.evolve(self.tasks[container_id], status="stopped")

    def wait_task(self, container_id: str, timeout: float) -> int:
        return 137

    def delete_task(self, container_id: str) -> None:
        self.calls.append("delete_task")
        del self.tasks[container_id]

    def close(self) -> None:
        pass


@pytest.fixture
def containerd_artifact(tmp_path: Path) -> Path:
    record = ContainerRecord(
        id="c1",
        image=IMAGE.name,
        snapshotter="overlayfs",
        snapshot_key="c1",
        runtime="io.containerd.runc.v2",
    )
    containerd = {
        **record.to_json(),
        "namespace": "default",
        "image": {"name": IMAGE.name, "digest": IMAGE.digest, "chain_id": IMAGE.chain_id},
        "spec": "container/spec.json",
    }
    container = {**_container(Path("/run/containerd/runc/default")), "runtime": "containerd"}
    workload = {"container": container, "containerd": containerd, "rootfs": _ROOTFS}
    return _artifact(tmp_path, runtime="containerd", workload=workload)


def _restore_containerd(
    tmp_path: Path, artifact: Path, client: FakeContainerd
) -> cedana.ContainerdContainer:
    return cedana.ContainerdContainer.restore(
        artifact,
        name="c2",
        client=client,  # type: ignore[arg-type]
        backend=FakeCriu(),
        work_dir=tmp_path,
        log=tmp_path / "task.log",
    )


def test_containerd_restore_runs_with_a_fake_client(
    tmp_path: Path, containerd_artifact: Path, kernel: list[str]
) -> None:
    """With containerd's client handed in, a restore prepares a snapshot on the image's
    chain id, fills its upper directory, creates the container and its task, starts it,
    and keeps it all; the container it returns uses that client."""
    client = FakeContainerd(tmp_path / "snapshots")
    restored = _restore_containerd(tmp_path, containerd_artifact, client)
    assert client.calls == ["prepare", "create_container", "create_task", "start_task"]
    assert (tmp_path / "snapshots" / "c2" / "fs" / "etc" / "motd").read_text() == "changed\n"
    assert set(client.containers) == {"c2"} and client.snapshots == {"c2"}
    assert client.leases == 0
    assert kernel == ["lo"]
    assert restored.pid == os.getpid()
    label = client.containers["c2"].labels["io.cedana.restored-from"]
    assert label == "default/c1"


_MADE = ["prepare", "create_container", "create_task", "start_task"]


@pytest.mark.parametrize(
    ("step", "calls"),
    [
        ("prepare", ["prepare"]),
        ("apply", ["prepare", "remove_snapshot"]),
        ("create_container", ["prepare", "create_container", "remove_snapshot"]),
        ("create_task", [*_MADE[:3], "delete_container", "remove_snapshot"]),
        ("start_task", [*_MADE, "delete_task", "delete_container", "remove_snapshot"]),
        (
            "loopback",
            [*_MADE, "kill_task", "delete_task", "delete_container", "remove_snapshot"],
        ),
    ],
)
def test_a_failed_containerd_restore_undoes_what_it_made(
    tmp_path: Path,
    containerd_artifact: Path,
    kernel: list[str],
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    calls: list[str],
) -> None:
    """A failure at each step of a containerd restore removes exactly what the steps before
    it made, the newest first (task, container, snapshot), and the lease ends."""
    client = FakeContainerd(tmp_path / "snapshots", fail=step)
    expected: type[BaseException] = cedana.CedanaError
    if step == "apply":
        monkeypatch.setattr(OverlaySnapshotter, "apply", _raise(OSError(28, "No space left")))
        expected = OSError
    elif step == "loopback":
        monkeypatch.setattr(namespaces, "restore_loopback", _raise(OSError(1, "no lo")))
        expected = OSError
    with pytest.raises(expected):
        _restore_containerd(tmp_path, containerd_artifact, client)
    assert client.calls == calls
    assert client.containers == {} and client.tasks == {} and client.snapshots == set()
    assert client.leases == 0


@pytest.mark.parametrize(
    "rootfs",
    [
        {"captured": True, "snapshotter": "zfs", "dir": "container"},  # no format recorded
        {**_ROOTFS, "format": "btrfs"},
    ],
)
def test_rootfs_changes_in_a_format_it_cannot_apply_are_refused(
    tmp_path: Path, rootfs: dict[str, Any]
) -> None:
    """Captured rootfs changes whose format this cedana cannot apply (one it does not know,
    or none recorded beside a store it does not know) are refused when the restore is
    planned, before anything is made; overlay's and podman's are the formats it applies."""
    from cedana.container.restore import plan_restore

    container = {**_container(tmp_path / "old-root"), "runtime": "runc"}
    artifact = _artifact(
        tmp_path, runtime="runc", workload={"container": container, "rootfs": rootfs}
    )
    with pytest.raises(cedana.ContainerError, match="which this cedana cannot apply"):
        plan_restore(
            cedana.open(artifact),
            name="c2",
            root=tmp_path / "r",
            bundle=tmp_path / "b",
            lower=[tmp_path],
        )
    assert not (tmp_path / "b").exists()
