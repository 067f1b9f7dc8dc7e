"""cedana commit against real runtimes: a runc, podman and containerd container's
checkpoint committed as an OCI image that `podman load` / `ctr images import` accept and
run with the changes present, pushed to and pulled from a real registry; and the inputs
it must refuse (another base image, a registry down, a hostile diff, a process
checkpoint), each leaving no output behind.

The runtimes are the ones the runtime modules' tests use: podman with storage of its own
(tests/integration/test_podman.py's fixture), a containerd of its own
(test_containerd.py's), runc on an overlay over a busybox tree (test_runc.py's).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cedana
from cedana import oci
from cedana.errors import ImageMismatch, InvalidOption, RegistryUnavailable, UnsafeArtifact
from cedana.oci import media
from tests.capabilities import (
    integration,
    requires_busybox,
    requires_docker,
    requires_runtime,
    requires_tool,
)
from tests.helpers import COUNTER, craft, name_for, run_cedana, wait_count
from tests.integration.test_containerd import Containerd, containerd, image, layer
from tests.integration.test_containerd import Containers as CtrContainers
from tests.integration.test_docker import Containers as DockerContainers
from tests.integration.test_docker import Dockerd, dockerd
from tests.integration.test_podman import Podman, made, podman
from tests.integration.test_runc import Containers as RuncContainers
from tests.integration.test_runc import busybox_rootfs, runc_root
from tests.registry import Registry, oci_registry, requires_registry

pytestmark = [
    *integration,
    requires_busybox,
    requires_runtime("runc"),
    requires_runtime("podman"),
    requires_runtime("containerd"),
    requires_tool("ctr"),
    requires_registry,
]

# Fixtures of the runtime modules' tests, imported for pytest.
__all__ = [
    "busybox_rootfs",
    "containerd",
    "dockerd",
    "image",
    "layer",
    "made",
    "oci_registry",
    "podman",
    "runc_root",
]

#: What the container does to its files before the checkpoint: a new file, a changed
#: and a deleted image file, a directory replaced (its image content hidden), a symlink,
#: a hard link.
CHANGES = (
    "echo new > /etc/new.txt; echo changed > /etc/image.txt; rm /etc/doomed.txt; "
    "rm -r /www; mkdir /www; echo other > /www/other.html; mkdir -p /data/d; "
    "echo deep > /data/d/f; ln /data/d/f /data/d/hard; ln -s /etc/new.txt /data/link; "
)

#: Run in a container of the committed image: prints what the checks below read.
SHOW = (
    "cat /etc/new.txt /etc/image.txt /www/other.html /data/link; ls /www; "
    "test -e /etc/doomed.txt && echo doomed-there || echo doomed-gone; "
    "stat -c %i /data/d/f /data/d/hard"
)


def assert_shows_changes(out: str) -> None:
    """SHOW's output: the changes are in the image (the deleted file absent, the changed
    one changed, the replaced directory holding only its new file, links kept)."""
    lines = out.split()
    assert lines[:4] == ["new", "changed", "other", "new"], out
    assert lines[4] == "other.html", out  # the image's /www/index.html is hidden
    assert lines[5] == "doomed-gone", out
    assert lines[6] == lines[7], out  # the hard link is one inode


@pytest.fixture
def runc_containers(
    tmp_path: Path, busybox_rootfs: Path, runc_root: Path
) -> Iterator[RuncContainers]:
    c = RuncContainers(tmp_path, busybox_rootfs, runc_root)
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def ctr_containers(containerd: Containerd, image: str) -> Iterator[CtrContainers]:
    c = CtrContainers(containerd, image)
    try:
        yield c
    finally:
        c.cleanup()


def _runc_checkpoint(
    runc_containers: RuncContainers, tmp_path: Path, request: pytest.FixtureRequest
) -> cedana.Checkpoint:
    name = f"oci-{name_for(request)}".replace("[", "-").replace("]", "")
    c = runc_containers.run(name, CHANGES + COUNTER)
    wait_count(c, 3)
    return c.checkpoint(tmp_path / "runc.tar.zst")


def _podman_run(podman: Podman, made: list[str], image: str, name: str) -> str:
    made.append(name)
    return podman("run", "--name", name, "--network", "none", image, "sh", "-c", SHOW)


def _ctr_run(containerd: Containerd, image: str, name: str) -> str:
    try:
        return containerd.ctr(
            "run", "--rm", "--null-io=false", image, name, "sh", "-c", SHOW
        ).stdout
    finally:
        containerd.ctr("task", "rm", "-f", name, check=False)
        containerd.ctr("containers", "rm", name, check=False)


def _ctr_import(containerd: Containerd, archive: Path) -> list[str]:
    containerd.ctr("images", "import", str(archive))
    return containerd.lines("images", "ls")


def test_runc_checkpoint_commits_to_an_archive_podman_and_ctr_run(
    runc_containers: RuncContainers,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    podman: Podman,
    made: list[str],
    containerd: Containerd,
) -> None:
    """A runc container (overlay on a busybox directory, no image) commits as an OCI
    archive: its lower directory as the base layer plus a layer of its changes with OCI
    whiteouts, its command in the config; `podman load` and `ctr images import` take it
    and a container of it shows the changes."""
    ckpt = _runc_checkpoint(runc_containers, tmp_path, request)
    ref = "localhost/oci-commit/runc:v1"
    archive = tmp_path / "runc-image.tar"
    digest = cedana.commit(ckpt, f"oci-archive:{archive}:{ref}")
    image = oci.pull(f"oci-archive:{archive}", tmp_path / "check")
    assert image.digest == digest and len(image.layers) == 2
    assert image.config_json["config"]["Cmd"][:2] == ["sh", "-c"]
    new_layer = image.layout.blob_path(image.layers[1].digest)
    with tarfile.open(new_layer) as tar:
        names = set(tar.getnames())
    assert {"etc/.wh.doomed.txt", "www/.wh..wh..opq", "www/other.html"} <= names

    loaded = podman("load", "-i", str(archive))
    assert ref in loaded, loaded
    assert_shows_changes(_podman_run(podman, made, ref, f"oci-{name_for(request, '-p')}"))

    assert ref in _ctr_import(containerd, archive)
    assert_shows_changes(_ctr_run(containerd, ref, f"oci-{name_for(request, '-c')}"))


def test_podman_checkpoint_commits_and_runs_from_a_registry(
    podman: Podman,
    made: list[str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    oci_registry: Registry,
) -> None:
    """A podman container's checkpoint commits on its image (from podman's store, whose
    id the checkpoint records): pushed to a registry, podman pulls and runs it with the
    changes; the image's layers are the original's plus one; `cedana commit` to an
    archive gives the same image, which `podman load` takes."""
    name = f"oci-{name_for(request)}"
    c = podman.start(name)
    podman("exec", name, "sh", "-c", CHANGES)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "p.tar.zst", leave_running=True)
    original = json.loads(
        podman(
            "image", "inspect", "--format", "json", ckpt.manifest.workload["podman"]["image"]["id"]
        )
    )[0]

    ref = oci_registry.ref("oci-commit/podman", "v1")
    digest = cedana.commit(ckpt, ref)
    image = oci.pull(ref, tmp_path / "pulled")
    assert image.digest == digest
    assert len(image.layers) == len(original["RootFS"]["Layers"]) + 1
    assert image.diff_ids[:-1] == original["RootFS"]["Layers"]
    assert image.annotations["org.opencontainers.image.base.name"].endswith("cedana-busybox:test")

    pulled = f"{oci_registry.host}/oci-commit/podman:v1"
    podman("pull", "--tls-verify=false", pulled)
    assert_shows_changes(_podman_run(podman, made, pulled, f"{name}-r"))

    archive = tmp_path / "podman-image.tar"
    done = run_cedana(
        "commit",
        str(ckpt.path),
        "--to",
        f"oci-archive:{archive}:localhost/oci-commit/p:v2",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["digest"].startswith("sha256:")
    assert "localhost/oci-commit/p:v2" in podman("load", "-i", str(archive))
    assert_shows_changes(_podman_run(podman, made, "localhost/oci-commit/p:v2", f"{name}-l"))


def test_containerd_checkpoint_commits_and_ctr_runs_it(
    ctr_containers: CtrContainers,
    containerd: Containerd,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A containerd container's checkpoint commits on its image read from containerd's
    content store (checked by the layers' chain id); `ctr images import` takes the
    archive (and an oci: layout of it) and the image runs with the changes."""
    name = f"oci-{name_for(request)}"
    c = ctr_containers.run(name, CHANGES + COUNTER)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    ref = "localhost/oci-commit/ctr:v1"
    archive = tmp_path / "ctr-image.tar"
    cedana.commit(
        ckpt, f"oci-archive:{archive}:{ref}", compression="zstd", address=containerd.address
    )
    image = oci.pull(f"oci-archive:{archive}", tmp_path / "check")
    assert image.layers[-1].media_type == media.LAYER_ZSTD
    assert ref in _ctr_import(containerd, archive)
    assert_shows_changes(_ctr_run(containerd, ref, f"{name}-r"))


@requires_docker
def test_docker_checkpoint_commits_on_the_saved_image(
    dockerd: Dockerd,
    podman: Podman,
    made: list[str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A docker container's checkpoint commits on its image as docker saves it (the
    config as it is, its layers gzipped; checked by the image id); the archive loads into
    podman and runs with the changes."""
    containers = DockerContainers(dockerd)
    try:
        name = f"oci-{name_for(request)}"
        c = containers.run(name, CHANGES + COUNTER)
        wait_count(c, 3)
        ckpt = c.checkpoint(tmp_path / "d.tar.zst", leave_running=True)
        ref = "localhost/oci-commit/docker:v1"
        archive = tmp_path / "docker-image.tar"
        cedana.commit(ckpt, f"oci-archive:{archive}:{ref}", address=dockerd.address)
        image = oci.pull(f"oci-archive:{archive}", tmp_path / "check")
        assert image.annotations["org.opencontainers.image.base.digest"]
        assert all(d.media_type == media.LAYER_GZIP for d in image.layers)
        assert ref in podman("load", "-i", str(archive))
        assert_shows_changes(_podman_run(podman, made, ref, f"{name}-p"))
    finally:
        containers.cleanup()


def test_rootfs_only_checkpoints_commit(
    runc_containers: RuncContainers,
    podman: Podman,
    made: list[str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Rootfs-only checkpoints (kind rootfs: the same container/rootfs-diff.tar, no CRIU)
    of a runc and a podman container commit like container checkpoints, and podman runs
    the images with the changes."""
    name = f"oci-{name_for(request)}"
    r = runc_containers.run(name, CHANGES + COUNTER)
    p = podman.start(f"{name}-p")
    podman("exec", f"{name}-p", "sh", "-c", CHANGES)
    wait_count(r, 3)
    wait_count(p, 3)
    for container, tag in ((r, "runc"), (p, "podman")):
        ckpt = container.checkpoint(tmp_path / f"{tag}.tar.zst", rootfs_only=True)  # type: ignore[call-arg, unused-ignore]
        assert ckpt.kind == "rootfs"
        ref = f"localhost/oci-commit/rootfs-{tag}:v1"
        archive = tmp_path / f"{tag}.tar"
        cedana.commit(ckpt, f"oci-archive:{archive}:{ref}")
        assert ref in podman("load", "-i", str(archive))
        assert_shows_changes(_podman_run(podman, made, ref, f"{name}-{tag}-run"))


# --- what commit refuses ---------------------------------------------------------------


def _other_image(tmp_path: Path) -> Path:
    """An OCI archive of an unrelated one-layer image."""
    layout = oci.Layout.create(tmp_path / "other")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("unrelated")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    buf.seek(0)
    image = oci.write_image(layout, layers=[oci.add_layer(layout, buf)])
    archive = tmp_path / "other.tar"
    oci.push(image, f"oci-archive:{archive}")
    return archive


def test_refused_inputs_leave_nothing(
    podman: Podman,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    oci_registry: Registry,
    workloads: Any,
) -> None:
    """A base image the diff does not fit (another image's archive) is ImageMismatch; a
    registry that is down is RegistryUnavailable; a process checkpoint is InvalidOption;
    none of them leaves an output file or a scratch directory beside it."""
    name = f"oci-{name_for(request)}"
    c = podman.start(name)
    podman("exec", name, "sh", "-c", CHANGES)
    wait_count(c, 2)
    ckpt = c.checkpoint(tmp_path / "p.tar.zst", leave_running=True)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ImageMismatch, match="not fit"):
        cedana.commit(
            ckpt, f"oci-archive:{out / 'x.tar'}", base=f"oci-archive:{_other_image(tmp_path)}"
        )
    assert list(out.iterdir()) == []
    oci_registry.stop()
    with pytest.raises(RegistryUnavailable, match="cannot reach registry"):
        cedana.commit(ckpt, oci_registry.ref("oci-commit/down", "v1"))
    with pytest.raises(RegistryUnavailable):
        cedana.commit(
            ckpt,
            "oci-archive:" + str(out / "y.tar"),
            base=oci_registry.ref("oci-commit/base", "v1"),
        )
    assert list(out.iterdir()) == []

    proc, _log = workloads.python("import time\nwhile True: time.sleep(1)\n")
    process_ckpt = proc.checkpoint(tmp_path / "proc.tar.zst", leave_running=True)
    with pytest.raises(InvalidOption, match="process checkpoint"):
        cedana.commit(process_ckpt, f"oci-archive:{out / 'z.tar'}")
    done = run_cedana("commit", str(process_ckpt.path), "--to", f"oci:{out / 'dir'}")
    assert done.returncode == 1 and done.stderr.startswith("cedana: error: ")
    assert list(out.iterdir()) == []


def test_image_gone_or_other_is_refused(
    podman: Podman,
    ctr_containers: CtrContainers,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A checkpoint whose recorded image is not in the store (podman: an id podman does
    not have) or whose store image has other layers (containerd: the recorded chain id
    differs) is ImageMismatch, and nothing is written."""
    name = f"oci-{name_for(request)}"
    c = podman.start(name)
    wait_count(c, 2)
    ckpt = c.checkpoint(tmp_path / "p.tar.zst", leave_running=True)

    def other_id(workload: dict[str, Any], _images: Path) -> None:
        workload["podman"]["image"]["id"] = "f" * 64

    gone = craft(ckpt.path, tmp_path / "gone.tar.zst", other_id)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ImageMismatch, match="not in this host's podman store"):
        cedana.commit(gone, f"oci-archive:{out / 'x.tar'}")

    d = ctr_containers.run(f"{name}-c", CHANGES + COUNTER)
    wait_count(d, 2)
    ckpt = d.checkpoint(tmp_path / "c.tar.zst")

    def other_chain(workload: dict[str, Any], _images: Path) -> None:
        workload["containerd"]["image"]["chain_id"] = "sha256:" + "e" * 64

    moved = craft(ckpt.path, tmp_path / "moved.tar.zst", other_chain)
    with pytest.raises(ImageMismatch, match="would not fit"):
        cedana.commit(moved, f"oci-archive:{out / 'y.tar'}", address=ctr_containers.daemon.address)
    assert list(out.iterdir()) == []


def _add_to_diff(extra: tarfile.TarInfo):
    def edit(_workload: dict[str, Any], images: Path) -> None:
        diff = images / "container" / "rootfs-diff.tar"
        with tarfile.open(diff, "a", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(extra)

    return edit


@pytest.mark.parametrize("kind", ["escaping-symlink", "device"])
def test_hostile_diff_is_refused(
    runc_containers: RuncContainers, tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    """A checkpoint (validly signed, as anyone can make one) whose diff holds a symlink
    climbing out of the root or a device node is refused with UnsafeArtifact, and no
    image is written."""
    ckpt = _runc_checkpoint(runc_containers, tmp_path, request)
    info = tarfile.TarInfo("etc/evil")
    if kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 1
    else:
        info.type, info.linkname = tarfile.SYMTYPE, "../../../../etc/shadow"
    crafted = craft(ckpt.path, tmp_path / "crafted.tar.zst", _add_to_diff(info))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafeArtifact):
        cedana.commit(crafted, f"oci-archive:{out / 'x.tar'}")
    assert list(out.iterdir()) == []
    assert not os.path.exists(out / "x.tar")
