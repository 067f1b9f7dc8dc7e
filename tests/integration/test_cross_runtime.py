"""Restoring a checkpoint of one runtime into another: runc, containerd, docker and podman,
each into each, against the real runtimes, daemons and CRIU.

The module starts one containerd and one dockerd (each in a temp dir of its own, as their
own test modules do) and gives podman a storage of its own; each runtime gets the busybox
image its own way (runc: a directory as the overlay's lower layer; containerd: an OCI
archive; docker: ``docker import``; podman: ``podman import``), so the images differ in
their bytes and a restore into another runtime has to bring the source's image over. Each
runtime's counter container is checkpointed once (module-scoped), after changing its root
filesystem, and that one artifact is restored into every runtime. The matrix of pairs is
printed at the end of the run (and in the JUnit properties).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cedana
from cedana.container import portable
from cedana.rootfs.mounts import is_mountpoint, mountinfo, umount
from tests.capabilities import (
    integration,
    requires_busybox,
    requires_docker,
    requires_runtime,
)
from tests.conftest import reap_zombie_children
from tests.helpers import (
    COUNTER,
    assert_counts_on,
    busybox_tree,
    craft,
    remove_runc_container,
    run_cedana,
    wait_count,
)
from tests.integration.test_containerd import Containerd, busybox_layer, oci_archive
from tests.integration.test_docker import Dockerd, image_tar
from tests.integration.test_podman import CONTAINERS_CONF, STORAGE_CONF, Podman

pytestmark = [
    *integration,
    requires_runtime("runc"),
    requires_runtime("containerd"),
    requires_runtime("ctr"),
    requires_runtime("podman"),
    requires_docker,
    requires_busybox,
]

RUNTIMES = ("runc", "containerd", "docker", "podman")
PREFIX = f"cedana-x{os.getpid()}"
#: What each source container does to its root filesystem before it counts.
CHANGES = (
    "echo written > /etc/new.txt; echo changed > /etc/image.txt; rm /etc/doomed.txt; "
    "rm -rf /www; mkdir /www; echo other > /www/other.html; "
)
#: How each image is named in its own store.
IMAGES = {
    "containerd": "localhost/cedana-x/busybox:ctd",
    "docker": "cedana-x/busybox:docker",
    "podman": "localhost/cedana-x/busybox:podman",
}
#: The result of each (source, target) pair, printed at the end of the run.
MATRIX: dict[tuple[str, str], str] = {}


# --- the runtimes -------------------------------------------------------------------------


class Runtimes:
    """The four runtimes of this module: runc's state root and lower layer, a containerd,
    a dockerd and podman with its own storage; what each restore made, for teardown."""

    def __init__(self, tmp: Path, containerd: Containerd, dockerd: Dockerd, podman: Podman):
        self.tmp = tmp
        self.runc_root = tmp / "runc"
        self.runc_root.mkdir()
        self.lower = tmp / "lower"
        self.containerd = containerd
        self.dockerd = dockerd
        self.podman = podman
        self.mounts: list[Path] = []
        self.restored: list[Any] = []
        self.checkpoints: dict[str, tuple[cedana.Checkpoint, list[int]]] = {}

    def checkpoint_of(self, runtime: str) -> tuple[cedana.Checkpoint, list[int]]:
        """The one checkpoint of ``runtime``'s counter (made on first use, killing the
        container; the exited container stays until the module ends: a restore into runc
        mounts the changes on the layers the checkpoint recorded, and docker's "-init"
        layer, its placeholders for /etc/hosts..., is the container's own), and the
        counts it holds."""
        if runtime not in self.checkpoints:
            c = self.run_counter(runtime)
            wait_count(c, 5)
            ckpt = c.checkpoint(self.tmp / f"{runtime}.tar.zst")
            with contextlib.suppress(AttributeError):
                c.close()
            assert ckpt.manifest.runtime == runtime
            self.checkpoints[runtime] = (ckpt, _checkpointed_counts(ckpt))
        return self.checkpoints[runtime]

    # the sources: a counter container of each runtime, its rootfs changed

    def run_counter(self, runtime: str) -> Any:
        """A running counter container of ``runtime`` that has changed its rootfs."""
        name = f"{PREFIX}-{runtime}"
        script = CHANGES + COUNTER
        if runtime == "runc":
            return self._run_runc(name, script)
        if runtime == "containerd":
            self.containerd.ctr("run", "-d", "--null-io", IMAGES[runtime], name, "sh", "-c", script)
            return cedana.ContainerdContainer(
                name, namespace=self.containerd.namespace, address=self.containerd.address
            )
        if runtime == "docker":
            self.dockerd.docker(
                "run", "-d", "--name", name, "--network", "none", IMAGES[runtime],
                "sh", "-c", script,
            )  # fmt: skip
            return cedana.DockerContainer(name, address=self.dockerd.address)
        self.podman(
            "run", "-d", "--name", name, "--network", "none", IMAGES[runtime],
            "/bin/sh", "-c", script,
        )  # fmt: skip
        return cedana.PodmanContainer(name)

    def _run_runc(self, name: str, script: str) -> cedana.RuncContainer:
        bundle = self.tmp / name
        rootfs = bundle / "rootfs"
        for d in ("upper", "work", "rootfs"):
            (bundle / d).mkdir(parents=True)
        data = f"lowerdir={self.lower},upperdir={bundle}/upper,workdir={bundle}/work"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", data, str(rootfs)], check=True)
        self.mounts.append(rootfs)
        subprocess.run(["runc", "spec"], cwd=bundle, check=True)
        config = json.loads((bundle / "config.json").read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = ["sh", "-c", script]
        config["root"] = {"path": "rootfs", "readonly": False}
        config["hostname"] = name
        (bundle / "config.json").write_text(json.dumps(config))
        subprocess.run(
            ["runc", "--root", str(self.runc_root), "run", "-d", "--bundle", str(bundle), name],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            check=True, timeout=60,
        )  # fmt: skip
        return cedana.RuncContainer(name, root=self.runc_root)

    def remove_source(self, runtime: str) -> None:
        name = f"{PREFIX}-{runtime}"
        if runtime == "runc":
            remove_runc_container(name, self.runc_root)
        elif runtime == "containerd":
            self.containerd.ctr("task", "rm", "-f", name, check=False)
            self.containerd.ctr("containers", "rm", name, check=False)
        elif runtime == "docker":
            self.dockerd.docker("rm", "-f", name, check=False)
        else:
            self.podman.remove(name)

    # the targets

    def restore_into(self, ckpt: cedana.Checkpoint, target: str, name: str) -> Any:
        """``cedana.restore(ckpt, into=target)`` with this module's daemons; the source's
        store is reachable at its daemon's socket."""
        source = ckpt.manifest.runtime
        options: dict[str, Any] = {"into": target, "name": name}
        if source == "containerd":
            options["source_address"] = self.containerd.address
        elif source == "docker":
            options["source_address"] = self.dockerd.address
        if target == "runc":
            options["root"] = self.runc_root
        elif target == "containerd":
            options.update(address=self.containerd.address, namespace=self.containerd.namespace)
        elif target == "docker":
            options["address"] = self.dockerd.address
        if target in (source, "runc"):  # their own, or no store
            options.pop("source_address", None)
        restored = cedana.restore(ckpt, **options)
        self.restored.append(restored)
        return restored

    def remove_restored(self) -> None:
        for restored in self.restored:
            with contextlib.suppress(cedana.CedanaError):
                if isinstance(restored, cedana.RuncContainer):
                    remove_runc_container(restored.id, restored.root)
                elif isinstance(restored, cedana.ContainerdContainer):
                    restored.delete()
                    restored.close()
                elif isinstance(restored, cedana.DockerContainer):
                    restored.remove()
                    restored.close()
                else:
                    restored.remove()
        self.restored.clear()
        reap_zombie_children()

    def cleanup(self) -> None:
        self.remove_restored()
        for runtime in RUNTIMES:
            self.remove_source(runtime)
        for path in reversed(self.mounts):
            with contextlib.suppress(OSError):
                while is_mountpoint(path):
                    umount(path, detach=True)


def _podman_image(podman: Podman, ref: str, root: Path) -> None:
    tar = root / "podman-image.tar"
    with tarfile.open(tar, "w") as out:
        for kind, path, content, mode in busybox_tree():
            info = tarfile.TarInfo(path)
            info.mode = mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                out.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, content
                out.addfile(info)
            else:
                info.size = len(content)
                out.addfile(info, io.BytesIO(content))
    podman("import", "--quiet", os.fspath(tar), ref)
    tar.unlink()


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtimes]:
    """The four runtimes, each daemon started once for the module, each with its image."""
    tmp = tmp_path_factory.mktemp("cross")
    containerd = Containerd(tmp_path_factory.mktemp("cross-ctd"))
    dockerd = Dockerd(tmp_path_factory.mktemp("cross-dockerd"))
    podman_root = tmp_path_factory.mktemp("cross-podman")
    (podman_root / "containers.conf").write_text(CONTAINERS_CONF)
    (podman_root / "storage.conf").write_text(STORAGE_CONF.format(root=podman_root))
    env = pytest.MonkeyPatch()
    env.setenv("CONTAINERS_CONF", os.fspath(podman_root / "containers.conf"))
    env.setenv("CONTAINERS_STORAGE_CONF", os.fspath(podman_root / "storage.conf"))
    podman = Podman(podman_root)
    r = Runtimes(tmp, containerd, dockerd, podman)
    try:
        r.lower.mkdir()
        for kind, rel, content, mode in busybox_tree():
            path = r.lower / rel
            if kind == "dir":
                path.mkdir()
                path.chmod(mode)
            elif kind == "link":
                path.symlink_to(content)
            else:
                path.write_bytes(content)
                path.chmod(mode)
        containerd.start()
        archive = tmp / "ctd-image.tar"
        oci_archive(archive, IMAGES["containerd"], busybox_layer())
        containerd.ctr("images", "import", str(archive))
        dockerd.start()
        dockerd.docker("import", str(image_tar(tmp / "docker-image.tar")), IMAGES["docker"])
        _podman_image(podman, IMAGES["podman"], podman_root)
        yield r
    finally:
        r.cleanup()
        containerd.stop()
        dockerd.stop()
        podman("rm", "--all", "--force", "--time", "0", check=False)
        podman("rmi", "--all", "--force", check=False)
        env.undo()
        for mount in sorted(
            (m.mountpoint for m in mountinfo() if m.mountpoint.startswith(str(podman_root))),
            key=lambda m: -len(str(m)),
        ):
            with contextlib.suppress(OSError, cedana.CedanaError):
                umount(Path(mount), detach=True)
        shutil.rmtree(podman_root, ignore_errors=True)


def _checkpointed_counts(ckpt: cedana.Checkpoint) -> list[int]:
    """The counter's lines in the checkpoint's rootfs changes (the frozen file)."""
    data = ckpt.read_member("container/rootfs-diff.tar")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("tmp/count.log")
        return [int(x) for x in member.read().split()] if member is not None else []


@pytest.fixture(scope="module", params=RUNTIMES)
def source(
    request: pytest.FixtureRequest, runtimes: Runtimes
) -> tuple[cedana.Checkpoint, list[int]]:
    """One checkpoint of each runtime's counter, shared by every target."""
    return runtimes.checkpoint_of(request.param)


def _read(container: Any, path: str) -> str | None:
    try:
        return Path(f"/proc/{container.pid}/root{path}").read_text()
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("target", RUNTIMES)
def test_restore_into_each_runtime(
    source: tuple[cedana.Checkpoint, list[int]],
    target: str,
    runtimes: Runtimes,
    record_property: Any,
) -> None:
    """A counter container checkpointed under one runtime restores into ``target``: the
    counter goes on from where it was frozen, and the files it wrote, changed and deleted
    are as they were; the image came into the target's store from the source's (for
    runc, from the layer directories it ran on), and nothing of cedana's files for it is
    left once the container is removed."""
    ckpt, before = source
    runtime = str(ckpt.manifest.runtime)
    name = f"{PREFIX}-{runtime}-in-{target}"
    MATRIX[(runtime, target)] = "FAIL"
    record_property(f"{runtime}->{target}", "FAIL")
    try:
        restored = runtimes.restore_into(ckpt, target, name)
        assert_counts_on(restored, before)
        assert _read(restored, "/etc/new.txt") == "written\n"
        assert _read(restored, "/etc/image.txt") == "changed\n"
        assert _read(restored, "/etc/doomed.txt") is None
        assert os.listdir(f"/proc/{restored.pid}/root/www") == ["other.html"]
    finally:
        runtimes.remove_restored()
    assert not _files_of(name)
    MATRIX[(runtime, target)] = "pass"
    record_property(f"{runtime}->{target}", "pass")


def _files_of(name: str) -> list[Path]:
    """What cedana made for container ``name`` under /var/lib/cedana/files."""
    root = portable.FILES_ROOT
    return sorted(root.glob(f"*-{name}-*")) if root.is_dir() else []


def matrix_lines() -> list[str]:
    """The pairs tried in this run as a table (source rows, target columns)."""
    if not MATRIX:
        return []
    lines = ["checkpoint \\ into".ljust(20) + "".join(t.ljust(12) for t in RUNTIMES)]
    for runtime in RUNTIMES:
        cells = [MATRIX.get((runtime, t), "-").ljust(12) for t in RUNTIMES]
        lines.append(runtime.ljust(20) + "".join(cells))
    return lines


def test_an_image_nowhere_to_be_found_is_named_with_its_commands(runtimes: Runtimes) -> None:
    """When the target's store lacks the image and the source's cannot be reached, the
    restore fails before anything is made, naming the image and the exact commands that
    bring it; no container, snapshot or files are left."""
    ckpt, _ = runtimes.checkpoint_of("docker")
    name = f"{PREFIX}-nowhere"
    empty = f"{runtimes.containerd.namespace}-empty"
    with pytest.raises(cedana.ImageNotFound) as exc:
        cedana.restore(
            ckpt,
            into="containerd",
            name=name,
            namespace=empty,
            address=runtimes.containerd.address,
            source_address=str(runtimes.tmp / "no-docker.sock"),
        )
    message = str(exc.value)
    assert f"image {IMAGES['docker']!r} (layers sha256:" in message
    assert "cannot be reached" in message
    assert f"save -o image.tar {IMAGES['docker']} && ctr -a" in message
    assert f"-n {empty} images import --snapshotter overlayfs image.tar" in message
    assert not runtimes.containerd.lines("containers", "ls", namespace=empty)
    assert not _files_of(name)


def test_cli_restores_a_docker_checkpoint_into_podman(runtimes: Runtimes) -> None:
    """``cedana restore CKPT --into podman --source-address SOCK --json``: the docker
    checkpoint runs on as a podman container, which podman lists."""
    ckpt, before = runtimes.checkpoint_of("docker")
    name = f"{PREFIX}-cli"
    done = run_cedana(
        "restore", str(ckpt.path), "--into", "podman", "--name", name,
        "--source-address", runtimes.dockerd.address, "--json",
    )  # fmt: skip
    try:
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert (out["runtime"], out["name"]) == ("podman", name)
        assert name in runtimes.podman.running()
        assert_counts_on(cedana.PodmanContainer(name), before)
    finally:
        runtimes.podman.remove(name)


def test_a_failed_restore_elsewhere_leaves_nothing_of_cedanas(runtimes: Runtimes) -> None:
    """A restore into containerd under a name that is taken fails (ContainerExists), and
    the files it made for docker's mounts are gone again; the first container runs on."""
    ckpt, before = runtimes.checkpoint_of("docker")
    name = f"{PREFIX}-taken"
    first = runtimes.restore_into(ckpt, "containerd", name)
    try:
        made = _files_of(name)
        assert len(made) == 1
        assert (made[0] / "etc-hosts").read_text().startswith("127.0.0.1\tlocalhost")
        with pytest.raises(cedana.ContainerExists):
            runtimes.restore_into(ckpt, "containerd", name)
        assert _files_of(name) == made
        assert_counts_on(first, before)
    finally:
        runtimes.remove_restored()
    assert not _files_of(name)


@pytest.mark.parametrize("target", ["runc", "containerd", "podman"])
@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mounts": [{"destination": "/data", "type": "bind", "source": "/etc"}]}, "'/etc'"),
        ({"hooks": {"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "id"]}]}}, "hooks"),
    ],
)
def test_confinement_holds_into_another_runtime(
    runtimes: Runtimes, tmp_path: Path, target: str, change: dict[str, Any], match: str
) -> None:
    """A docker checkpoint crafted to bind-mount a host directory, or to run a hook of
    its own (signed by a trusted key, so only confinement stands in the way), is refused
    by the target's restore as its own checkpoints are, before anything is made; only
    docker's own mounts and networking hook are replaced."""
    ckpt, _ = runtimes.checkpoint_of("docker")

    def edit(workload: dict[str, Any], images: Path) -> None:
        config = json.loads((images / "container/config.json").read_text())
        for key, value in change.items():
            config[key] = [*config.get(key, []), *value] if key == "mounts" else value
        (images / "container/config.json").write_text(json.dumps(config))

    crafted = craft(ckpt.path, tmp_path / "crafted.tar.zst", edit)
    name = f"{PREFIX}-crafted-{target}"
    with pytest.raises(cedana.UnsafeArtifact, match=match):
        runtimes.restore_into(cedana.open(crafted), target, name)
    assert not _files_of(name)
    assert name not in runtimes.podman.names()
    assert name not in runtimes.containerd.lines("containers", "ls")
    assert not (Path("/var/lib/cedana/bundles") / name).exists()


def test_a_container_name_with_slashes_makes_nothing_outside_cedanas_files(
    runtimes: Runtimes, tmp_path: Path
) -> None:
    """A docker checkpoint (signed by a trusted key) whose recorded container name climbs
    out with '..', restored into containerd without a name of the caller's: containerd
    refuses the name, and nothing was made outside /var/lib/cedana/files (nor left in it)
    on the way. Fails while the name is joined into the files directory's path."""
    ckpt, _ = runtimes.checkpoint_of("docker")
    escape = tmp_path / "escaped"
    hops = "../" * len(portable.FILES_ROOT.parts)

    def edit(workload: dict[str, Any], images: Path) -> None:
        workload["docker"]["name"] = f"/{hops}{str(escape).lstrip('/')}"

    crafted = craft(ckpt.path, tmp_path / "crafted.tar.zst", edit)
    before = set(portable.FILES_ROOT.iterdir()) if portable.FILES_ROOT.is_dir() else set()
    with pytest.raises(cedana.CedanaError):
        cedana.restore(
            cedana.open(crafted),
            into="containerd",
            namespace=runtimes.containerd.namespace,
            address=runtimes.containerd.address,
            source_address=runtimes.dockerd.address,
        )
    assert not list(tmp_path.glob("escaped*"))
    after = set(portable.FILES_ROOT.iterdir()) if portable.FILES_ROOT.is_dir() else set()
    assert after == before
