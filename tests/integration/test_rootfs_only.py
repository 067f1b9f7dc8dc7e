"""Rootfs-only checkpoints against real runc, containerd, docker and podman: no CRIU.

Each runtime's container runs the counter, then changes its root filesystem (files written,
changed and deleted, a directory replaced, a symlink, a hard link, an owner changed, an
extended attribute). A rootfs-only checkpoint must leave it running throughout (its counter
advances, its cgroup is thawed afterwards) and record those changes; a restore must start a
*new* container of the same runtime from the image plus the changes: the files are there,
and its counter starts again from 1 (no memory was carried). The daemons and images are the
runtime modules' own fixtures (containerd and dockerd started in temp dirs, podman on a temp
storage), imported here; every container a test makes is removed at teardown.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import cedana
from cedana.container import DEFAULT_BUNDLES
from cedana.rootfs.containerd import ContainerdSnapshotter
from cedana.rootfs.containers_storage import ContainersStorageSnapshotter
from cedana.rootfs.overlay2 import Overlay2Snapshotter
from tests.capabilities import integration, requires_busybox, requires_docker, requires_runtime
from tests.conftest import wait_for
from tests.helpers import COUNTER, count, craft, name_for, wait_count
from tests.integration import test_containerd as ctd
from tests.integration import test_docker as dkr
from tests.integration import test_podman as pdm
from tests.integration import test_runc as rnc
from tests.integration.test_containerd import containerd, image, layer  # noqa: F401 (fixtures)
from tests.integration.test_docker import dockerd  # noqa: F401 (a fixture)
from tests.integration.test_podman import podman  # noqa: F401 (a fixture)
from tests.integration.test_runc import busybox_rootfs, runc_root  # noqa: F401 (fixtures)

pytestmark = [*integration, requires_runtime("runc"), requires_busybox]

#: What the container changes in its root filesystem before the checkpoint.
CHANGES = (
    "echo new > /etc/new.txt; echo changed > /etc/image.txt; rm /etc/doomed.txt; "
    "rm -r /www; mkdir /www; echo other > /www/other.html; mkdir -p /data/d; "
    "echo deep > /data/d/f; ln /data/d/f /data/d/hard; ln -s ../etc/new.txt /data/link; "
    "echo mine > /data/owned"
)


def change(container: Any, run: Callable[[str], object]) -> None:
    """Make the :data:`CHANGES` in ``container`` (``run`` runs a shell line inside), and
    change an owner and set an extended attribute from the host (runc's default
    capabilities have no CAP_CHOWN)."""
    run(CHANGES)
    os.chown(f"/proc/{container.pid}/root/data/owned", 4321, 8765)
    os.setxattr(f"/proc/{container.pid}/root/data/owned", "user.cedana", b"kept")


def assert_changes_in(root: Path) -> None:
    """The changes of :data:`CHANGES` are in the root filesystem at ``root``."""
    assert (root / "etc/new.txt").read_text() == "new\n"
    assert (root / "etc/image.txt").read_text() == "changed\n"
    assert not (root / "etc/doomed.txt").exists()
    assert os.listdir(root / "www") == ["other.html"]
    assert (root / "data/d/f").read_text() == "deep\n"
    assert (root / "data/d/f").stat().st_ino == (root / "data/d/hard").stat().st_ino
    assert os.readlink(root / "data/link") == "../etc/new.txt"
    owned = (root / "data/owned").stat()
    assert (owned.st_uid, owned.st_gid) == (4321, 8765)
    assert os.getxattr(root / "data/owned", "user.cedana") == b"kept"


def freezer_state(runc: cedana.RuncContainer) -> str:
    return Path(runc.cgroup_paths["freezer"], "freezer.state").read_text().strip()


class Watch:
    """Samples a running container's counter in a thread while a checkpoint runs."""

    def __init__(self, container: Any):
        self.container = container
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append(len(count(self.container)))

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def checkpoint_while_running(
    container: Any, runc: cedana.RuncContainer, path: Path, **options: Any
) -> cedana.Checkpoint:
    """A rootfs-only checkpoint of ``container``, which must run on throughout: its counter
    advances before, while and after it, and its cgroup is thawed once it returned."""
    before = len(wait_count(container, 3))
    with Watch(container) as watch:
        ckpt: cedana.Checkpoint = container.checkpoint(path, rootfs_only=True, **options)
    assert freezer_state(runc) == "THAWED"
    assert runc.status == "running"
    wait_count(container, max([*watch.samples, before]) + 5)
    assert watch.samples == sorted(watch.samples)
    return ckpt


def assert_rootfs_checkpoint(ckpt: cedana.Checkpoint, runtime: str) -> None:
    """The manifest says rootfs, of ``runtime``, no processes; the diff member is there."""
    m = ckpt.manifest
    assert (m.kind, m.runtime, m.tree) == ("rootfs", runtime, ())
    names = {member.name for member in m.members}
    assert "container/rootfs-diff.tar" in names and "container/config.json" in names
    assert not [n for n in names if n.endswith(".img")]
    rootfs = m.workload["rootfs"]
    assert rootfs["captured"] and rootfs["format"] == "overlay"
    assert rootfs["diff"]["whiteouts"] >= 1 and rootfs["diff"]["hardlinks"] == 1


def assert_started_fresh(container: Any, checkpointed: int) -> None:
    """The new container's counter log holds the checkpointed counts, then counts again
    from 1: the file came with the rootfs, the process started anew."""
    wait_for(
        lambda: len(count(container)) >= checkpointed + 3,
        20,
        "the fresh container counting",
    )
    counts = count(container)
    assert counts[:checkpointed] == list(range(1, checkpointed + 1))
    assert counts[checkpointed : checkpointed + 3] == [1, 2, 3]


def checkpointed_counts(ckpt: cedana.Checkpoint) -> int:
    """How many counts the checkpoint's ``/tmp/count.log`` holds."""
    data = ckpt.read_member("container/rootfs-diff.tar")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        log = tar.extractfile("tmp/count.log")
        assert log is not None
        return len(log.read().split())


# --- runc -----------------------------------------------------------------------------


@pytest.fixture
def runc_containers(
    tmp_path: Path,
    busybox_rootfs: Path,  # noqa: F811
    runc_root: Path,  # noqa: F811
) -> Iterator[rnc.Containers]:
    c = rnc.Containers(tmp_path, busybox_rootfs, runc_root)
    try:
        yield c
    finally:
        c.cleanup()


def test_runc_rootfs_only_checkpoint_and_fresh_restore(
    runc_containers: rnc.Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A running runc container is checkpointed rootfs-only while it keeps counting (thawed
    after); ``cedana.restore`` starts a new runc container on the same layers with every
    change present, counting from 1 again; the original runs on beside it."""
    name, new = name_for(request), name_for(request, "-2")
    c = runc_containers.run(name)
    change(c, lambda line: c.exec(["sh", "-c", line]))
    ckpt = checkpoint_while_running(c, c, tmp_path / "r.tar.zst")
    assert_rootfs_checkpoint(ckpt, "runc")
    runc_containers.track(new)
    restored = cedana.restore(ckpt.path, name=new, root=runc_containers.root)
    assert isinstance(restored, cedana.RuncContainer) and restored.id == new
    assert restored.status == "running" and c.status == "running"
    assert_changes_in(Path(f"/proc/{restored.pid}/root"))
    assert_started_fresh(restored, checkpointed_counts(ckpt))


def test_runc_fresh_bind_through_a_diff_symlink_is_refused(
    runc_containers: rnc.Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A bind source inside the new bundle passes confinement, but the bundle is made from
    the artifact: a re-signed checkpoint whose config binds ``<bundle>/upper/hostetc`` and
    whose diff makes that a symlink to ``/etc`` would have runc bind the host's /etc into
    the container. Refused once the bundle exists, before runc runs: no container, no
    bundle, and /etc is mounted nowhere new."""
    import json

    name, new = name_for(request), name_for(request, "-2")
    c = runc_containers.run(name)
    ckpt = c.checkpoint(tmp_path / "r.tar.zst", rootfs_only=True)
    bundle = tmp_path / "fresh"
    diff_edit = _diff_plus(_symlink("hostetc", "/etc"))

    def edit(workload: dict[str, Any], images: Path) -> None:
        diff_edit(workload, images)
        path = images / "container" / "config.json"
        config = json.loads(path.read_text())
        config["mounts"].append(
            {
                "destination": "/hostetc",
                "type": "bind",
                "source": str(bundle / "upper" / "hostetc"),
                "options": ["rbind", "rw"],
            }
        )
        path.write_text(json.dumps(config))

    bad = craft(ckpt.path, tmp_path / "bind.tar.zst", edit)
    mounts_before = Path("/proc/self/mountinfo").read_text().count(" /etc ")
    runc_containers.track(new)
    with pytest.raises(cedana.UnsafeArtifact, match="bind-mounts.*/etc"):
        cedana.restore(bad, name=new, root=runc_containers.root, bundle=bundle)
    assert not (runc_containers.root / new).exists() and not bundle.exists()
    assert Path("/proc/self/mountinfo").read_text().count(" /etc ") == mounts_before


def test_runc_paused_container_stays_paused(
    runc_containers: rnc.Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A paused container is read as it is and left paused (cedana did not freeze it, so it
    does not thaw it)."""
    c = runc_containers.run(name_for(request))
    wait_count(c, 3)
    runc_containers.runc("pause", c.id)
    c.checkpoint(tmp_path / "p.tar.zst", rootfs_only=True)
    assert c.status == "paused" and freezer_state(c) == "FROZEN"
    runc_containers.runc("resume", c.id)


def test_runc_cli_checkpoint_inspect_restore(
    runc_containers: rnc.Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``cedana checkpoint runc:ID --rootfs-only``, ``cedana inspect`` says it is a rootfs
    checkpoint (no processes), ``cedana restore --name`` starts it fresh."""
    from tests.helpers import run_cedana

    name, new = name_for(request), name_for(request, "-2")
    c = runc_containers.run(name)
    change(c, lambda line: c.exec(["sh", "-c", line]))
    wait_count(c, 3)
    out = tmp_path / "cli.tar.zst"
    root = str(runc_containers.root)
    done = run_cedana("checkpoint", f"runc:{name}", "--rootfs-only", "-o", str(out), "--root", root)
    assert done.returncode == 0, done.stderr
    assert c.status == "running"
    shown = run_cedana("inspect", str(out))
    assert shown.returncode == 0, shown.stderr
    assert ": rootfs (runc)" in shown.stdout and "rootfs only" in shown.stdout
    runc_containers.track(new)
    done = run_cedana("restore", str(out), "--name", new, "--root", root, "--json")
    assert done.returncode == 0, done.stderr
    restored = cedana.RuncContainer(new, root=runc_containers.root)
    assert_changes_in(Path(f"/proc/{restored.pid}/root"))


def test_runc_user_namespace_owners_shifted(
    runc_containers: rnc.Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """In a container whose root is host uid 100000 (a user namespace), ``shift_owners``
    records the files its root made as owned by 0 (as the container sees them), and the
    manifest keeps the mappings; without it the diff holds the host's 100000. Started
    fresh under the same mappings, the files are the host's 100000 again, root's inside."""
    import json

    name, new = name_for(request), name_for(request, "-2")
    # The container's root (host uid 100000) must reach its rootfs: the test's directories
    # are root's 0700 ones, so let others through (not list) them.
    for path in (tmp_path, runc_containers.lower):
        for step in (path, *path.parents):
            step.chmod(step.stat().st_mode | 0o001)
    bundle = runc_containers.bundle(name, COUNTER)
    config = json.loads((bundle / "config.json").read_text())
    mapping = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    config["linux"]["namespaces"].append({"type": "user"})
    config["linux"]["uidMappings"] = config["linux"]["gidMappings"] = mapping
    (bundle / "config.json").write_text(json.dumps(config))
    (bundle / "upper").chmod(0o755)  # the lower is root's; the container's root is 100000
    runc_containers.names.append(name)
    subprocess.run(
        ["runc", "--root", str(runc_containers.root), "run", "-d", "--bundle", str(bundle), name],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        check=True, timeout=60,
    )  # fmt: skip
    c = cedana.RuncContainer(name, root=runc_containers.root)
    c.exec(["sh", "-c", "mkdir /tmp/d && echo mine > /tmp/d/f"])
    assert (bundle / "upper/tmp/d/f").stat().st_uid == 100000

    def owners(ckpt: cedana.Checkpoint) -> tuple[int, int]:
        data = ckpt.read_member("container/rootfs-diff.tar")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.getmember("tmp/d/f")
            return member.uid, member.gid

    plain = c.checkpoint(tmp_path / "host.tar.zst", rootfs_only=True)
    assert owners(plain) == (100000, 100000)
    assert plain.manifest.workload["rootfs"]["owners"] == "host"
    shifted = checkpoint_while_running(c, c, tmp_path / "in.tar.zst", shift_owners=True)
    assert owners(shifted) == (0, 0)
    rootfs = shifted.manifest.workload["rootfs"]
    assert rootfs["owners"] == "container"
    assert rootfs["mappings"]["uidMappings"][0]["hostID"] == 100000

    runc_containers.track(new)
    restored = cedana.restore(
        shifted.path, name=new, root=runc_containers.root, bundle=tmp_path / "fresh"
    )
    made = Path(f"/proc/{restored.pid}/root/tmp/d/f")
    assert made.read_text() == "mine\n" and made.stat().st_uid == 100000
    assert restored.exec(["stat", "-c", "%u", "/tmp/d/f"]).split() == [b"0"]


def test_runc_bad_inputs(
    runc_containers: rnc.Containers,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A container that does not exist is a clear error and writes nothing; a capture that
    fails leaves the container running and thawed, and no artifact; a diff with an escaping
    symlink or a device node, or recorded layers that are not the ones on this host, are
    refused before anything is made (no container, no bundle); a restore that fails once
    its bundle is made removes it; a container on a plain directory has no writable layer
    to capture (refused, left running and thawed)."""
    root = runc_containers.root
    with pytest.raises(cedana.ContainerNotFound):
        cedana.RuncContainer("cedana-nope", root=root).checkpoint(
            tmp_path / "none.tar.zst", rootfs_only=True
        )
    assert not (tmp_path / "none.tar.zst").exists()

    name = name_for(request)
    c = runc_containers.run(name)
    change(c, lambda line: c.exec(["sh", "-c", line]))
    good = c.checkpoint(tmp_path / "good.tar.zst", rootfs_only=True).path

    from cedana.rootfs.overlay import OverlaySnapshotter

    def broken(self: object, rootfs: Path, dest: Path, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    n = len(wait_count(c, 3))
    with monkeypatch.context() as patch:
        patch.setattr(OverlaySnapshotter, "capture", broken)
        with pytest.raises(OSError, match="(?i)no space"):
            c.checkpoint(tmp_path / "fail.tar.zst", rootfs_only=True)
    assert c.status == "running" and freezer_state(c) == "THAWED"
    wait_count(c, n + 5)
    assert not (tmp_path / "fail.tar.zst").exists()

    for label, entry in (
        ("escape", _symlink("etc/evil", "../../../../../../etc/passwd")),
        ("device", _device("dev/sda-copy", 8, 0)),
    ):
        bad = craft(good, tmp_path / f"{label}.tar.zst", _diff_plus(entry))
        new = name_for(request, f"-{label}")
        runc_containers.track(new)
        with pytest.raises(cedana.UnsafeArtifact):
            cedana.restore(bad, name=new, root=root)
        assert not (root / new).exists() and not (DEFAULT_BUNDLES / new).exists()

    def other_layers(workload: dict[str, Any], _images: Path) -> None:
        workload["rootfs"]["lower_identity"] = ["sha256:00:00"]

    bad = craft(good, tmp_path / "layers.tar.zst", other_layers)
    new = name_for(request, "-layers")
    runc_containers.track(new)
    with pytest.raises(cedana.UnsafeArtifact, match="identity differs"):
        cedana.restore(bad, name=new, root=root)
    assert not (root / new).exists() and not (DEFAULT_BUNDLES / new).exists()
    assert c.status == "running"

    from cedana.rootfs.overlay import OverlaySnapshotter as Overlay

    with monkeypatch.context() as patch:
        failing_apply(patch, Overlay)
        new = name_for(request, "-full")
        runc_containers.track(new)
        with pytest.raises(OSError, match="(?i)no space"):
            cedana.restore(good, name=new, root=root)
    assert not (root / new).exists() and not (DEFAULT_BUNDLES / new).exists()

    plain = runc_containers.run(name_for(request, "-plain"), overlay=False)
    wait_count(plain, 3)
    with pytest.raises(cedana.NotCheckpointable, match="no writable layer"):
        plain.checkpoint(tmp_path / "plain.tar.zst", rootfs_only=True)
    assert plain.status == "running" and freezer_state(plain) == "THAWED"


def failing_apply(monkeypatch: pytest.MonkeyPatch, cls: type[Any]) -> None:
    """Make ``cls.apply`` (a store's) fail as a full disk does, after the store's new layer
    or container was made: what a restore made must then be removed again."""

    def broken(self: object, diff: Path, *args: object, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cls, "apply", broken)


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _device(name: str, major: int, minor: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor, info.mode = tarfile.BLKTYPE, major, minor, 0o600
    return info


def _diff_plus(entry: tarfile.TarInfo) -> Callable[[dict[str, Any], Path], None]:
    """An edit for :func:`craft`: the rootfs diff with ``entry`` appended."""

    def edit(_workload: dict[str, Any], images: Path) -> None:
        diff = images / "container" / "rootfs-diff.tar"
        with tarfile.open(diff, "a") as tar:
            tar.addfile(entry)

    return edit


# --- containerd ---------------------------------------------------------------------------


@pytest.fixture
def ctd_containers(containerd: ctd.Containerd, image: str) -> Iterator[ctd.Containers]:  # noqa: F811
    c = ctd.Containers(containerd, image)
    try:
        yield c
    finally:
        c.cleanup()


@requires_runtime("containerd")
@requires_runtime("ctr")
def test_containerd_rootfs_only_and_fresh_restore(
    ctd_containers: ctd.Containers,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A running containerd container keeps running through a rootfs-only checkpoint; the
    restore is a new containerd container (its own task, started fresh) with the changes;
    an image whose layers differ from the recorded chain id, or an escaping symlink, is
    refused with nothing made; a restore that fails once its snapshot is made removes it."""
    name, new = name_for(request), name_for(request, "-2")
    c = ctd_containers.run(name)
    change(
        c,
        lambda line: ctd_containers.daemon.ctr(
            "task", "exec", "--exec-id", "chg", name, "sh", "-c", line
        ),
    )
    ckpt = checkpoint_while_running(c, c.runc, tmp_path / "c.tar.zst")
    assert_rootfs_checkpoint(ckpt, "containerd")
    address = ctd_containers.daemon.address
    restored = ctd_containers.track(cedana.restore(ckpt.path, name=new, address=address))
    assert isinstance(restored, cedana.ContainerdContainer) and restored.id == new
    assert ctd_containers.daemon.tasks().get(new) == "RUNNING"
    assert c.status == "running"
    assert_changes_in(Path(f"/proc/{restored.pid}/root"))
    assert_started_fresh(restored, checkpointed_counts(ckpt))

    def other_base(workload: dict[str, Any], _images: Path) -> None:
        workload["containerd"]["image"]["chain_id"] = "sha256:" + "0" * 64

    bad = craft(ckpt.path, tmp_path / "base.tar.zst", other_base)
    other = name_for(request, "-3")
    with pytest.raises(cedana.ContainerError, match="other layers"):
        cedana.restore(bad, name=other, address=address)
    escaping = craft(ckpt.path, tmp_path / "esc.tar.zst", _diff_plus(_symlink("x", "../../..")))
    with pytest.raises(cedana.UnsafeArtifact, match="outside the root"):
        cedana.restore(escaping, name=other, address=address)
    assert other not in ctd_containers.daemon.lines("containers", "ls", "-q")
    with monkeypatch.context() as patch:
        failing_apply(patch, ContainerdSnapshotter)
        with pytest.raises(OSError, match="(?i)no space"):
            cedana.restore(ckpt.path, name=other, address=address)
    assert other not in ctd_containers.daemon.lines("containers", "ls", "-q")
    keys = {line.split()[0] for line in ctd.snapshot_keys(ctd_containers.daemon) if line}
    assert other not in keys and new in keys
    with pytest.raises(cedana.ContainerNotFound):
        ctd_containers.handle("cedana-nope").checkpoint(tmp_path / "n.tar.zst", rootfs_only=True)
    assert not (tmp_path / "n.tar.zst").exists()


# --- docker -------------------------------------------------------------------------------


@pytest.fixture
def docker_containers(dockerd: dkr.Dockerd) -> Iterator[dkr.Containers]:  # noqa: F811
    c = dkr.Containers(dockerd)
    try:
        yield c
    finally:
        c.cleanup()


@requires_docker
def test_docker_rootfs_only_and_fresh_restore(
    docker_containers: dkr.Containers,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A running docker container keeps running through a rootfs-only checkpoint; the
    restore is a new docker container (``docker ps`` lists it) started fresh with the
    changes in its overlay2 layer; a device node in the diff is refused with nothing made,
    and a restore that fails once docker made the container removes it."""
    name, new = name_for(request), name_for(request, "-2")
    c = docker_containers.run(name)
    change(c, lambda line: docker_containers.daemon.docker("exec", name, "sh", "-c", line))
    ckpt = checkpoint_while_running(c, c.runc, tmp_path / "d.tar.zst")
    assert_rootfs_checkpoint(ckpt, "docker")
    restored = docker_containers.track(
        cedana.restore(ckpt.path, name=new, address=docker_containers.daemon.address)
    )
    assert isinstance(restored, cedana.DockerContainer)
    assert new in docker_containers.daemon.running() and name in docker_containers.daemon.running()
    assert_changes_in(Path(f"/proc/{restored.pid}/root"))
    assert_started_fresh(restored, checkpointed_counts(ckpt))
    device = craft(ckpt.path, tmp_path / "dev.tar.zst", _diff_plus(_device("dev/disk", 8, 0)))
    other = name_for(request, "-3")
    with pytest.raises(cedana.UnsafeArtifact, match="device node"):
        cedana.restore(device, name=other, address=docker_containers.daemon.address)
    assert other not in docker_containers.daemon.names()
    with monkeypatch.context() as patch:
        failing_apply(patch, Overlay2Snapshotter)
        with pytest.raises(OSError, match="(?i)no space"):
            cedana.restore(ckpt.path, name=other, address=docker_containers.daemon.address)
    assert other not in docker_containers.daemon.names()
    with pytest.raises(cedana.ContainerNotFound):
        docker_containers.handle("cedana-nope").checkpoint(tmp_path / "n.tar.zst", rootfs_only=True)


# --- podman -------------------------------------------------------------------------------


@pytest.fixture
def podman_made(podman: pdm.Podman) -> Iterator[list[str]]:  # noqa: F811
    names: list[str] = []
    yield names
    for name in names + podman.made:
        podman.remove(name)
    podman.made.clear()


@requires_runtime("podman")
def test_podman_rootfs_only_and_fresh_restore(
    podman: pdm.Podman,  # noqa: F811
    podman_made: list[str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A running podman container keeps running through a rootfs-only checkpoint; the
    restore is a new podman container (``podman ps`` lists it, ``exec`` works) started fresh
    with the changes in its containers/storage layer; a taken name, an escaping symlink or
    a missing image is refused with nothing made, and a restore that fails once podman made
    the container removes it."""
    name, new = name_for(request), name_for(request, "-2")
    c = podman.start(name)
    change(c, lambda line: podman("exec", name, "sh", "-c", line))
    ckpt = checkpoint_while_running(c, c.runc, tmp_path / "p.tar.zst")
    assert_rootfs_checkpoint(ckpt, "podman")
    podman_made.append(new)
    restored = cedana.restore(ckpt.path, name=new)
    assert isinstance(restored, cedana.PodmanContainer) and restored.name == new
    assert {name, new} <= podman.running()
    assert podman.cat(new, "/etc/new.txt") == "new\n"
    shown = podman("container", "inspect", "--format", "{{.ImageName}}", new).strip()
    assert shown == pdm.IMAGE
    assert_changes_in(Path(f"/proc/{restored.pid}/root"))
    assert_started_fresh(restored, checkpointed_counts(ckpt))
    with pytest.raises(cedana.ContainerExists):
        cedana.restore(ckpt.path, name=new)
    escaping = craft(ckpt.path, tmp_path / "esc.tar.zst", _diff_plus(_symlink("x", "../../..")))
    other = name_for(request, "-3")
    with pytest.raises(cedana.UnsafeArtifact, match="outside the root"):
        cedana.restore(escaping, name=other)
    assert other not in podman.names()

    def other_image(workload: dict[str, Any], _images: Path) -> None:
        workload["podman"]["config"]["rootfsImageID"] = "0" * 64

    with monkeypatch.context() as patch:
        failing_apply(patch, ContainersStorageSnapshotter)
        with pytest.raises(OSError, match="(?i)no space"):
            cedana.restore(ckpt.path, name=other)
    assert other not in podman.names()
    missing = craft(ckpt.path, tmp_path / "img.tar.zst", other_image)
    with pytest.raises(cedana.ImageNotFound):
        cedana.restore(missing, name=other)
    assert other not in podman.names()
    with pytest.raises(cedana.ContainerNotFound):
        cedana.PodmanContainer("cedana-nope").checkpoint(tmp_path / "n.tar.zst", rootfs_only=True)
    assert {name, new} <= podman.running()


def test_a_process_has_no_rootfs_only_checkpoint(tmp_path: Path) -> None:
    """``rootfs_only`` on a bare process is refused before anything is looked at."""
    with pytest.raises(cedana.InvalidOption, match="no root filesystem"):
        cedana.Process(os.getpid()).checkpoint(tmp_path / "x.tar.zst", rootfs_only=True)
    assert not (tmp_path / "x.tar.zst").exists()


@requires_docker
def test_docker_fresh_restore_takes_no_networking_config(
    docker_containers: dkr.Containers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The create body's ``NetworkingConfig`` is no setting of the container's config, and
    docker attaches a container to every network it names, whatever ``NetworkMode`` (the
    field cedana confines) says: a re-signed docker rootfs checkpoint whose config adds one
    (joining docker's ``host`` network) is refused, and docker makes no container."""
    name, other = name_for(request), name_for(request, "-2")
    c = docker_containers.run(name)
    ckpt = c.checkpoint(tmp_path / "d.tar.zst", rootfs_only=True)

    def join_host(workload: dict[str, Any], _images: Path) -> None:
        workload["docker"]["config"]["NetworkingConfig"] = {"EndpointsConfig": {"host": {}}}

    bad = craft(ckpt.path, tmp_path / "net.tar.zst", join_host)
    with pytest.raises(cedana.UnsafeArtifact, match="NetworkingConfig"):
        cedana.restore(bad, name=other, address=docker_containers.daemon.address)
    assert other not in docker_containers.daemon.names()
