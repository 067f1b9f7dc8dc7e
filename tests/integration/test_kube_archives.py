"""Kubernetes' checkpoint archives (CRI-O's and containerd's flavours) written by cedana
export from real runc, containerd and podman checkpoints, read by Debian trixie's
checkpointctl, and read back by cedana: podman's store serves a CRI-O archive's image, so
a round trip through ``--format kubernetes`` restores into podman and the counter goes on.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cedana
from cedana import oci
from tests.capabilities import (
    integration,
    requires_busybox,
    requires_docker,
    requires_runtime,
    requires_tool,
)
from tests.helpers import COUNTER, assert_counts_on, count, name_for, run_cedana, wait_count
from tests.integration.test_containerd import Containerd, containerd, image, layer  # noqa: F401
from tests.integration.test_containerd import Containers as CtdContainers
from tests.integration.test_docker import Containers as DockerContainers
from tests.integration.test_docker import Dockerd, dockerd  # noqa: F401
from tests.integration.test_podman import (  # noqa: F401
    CHANGES,
    PODMAN_CHANGES,
    Podman,
    assert_changes_there,
    assert_podman_changes_there,
    made,
    podman,
)
from tests.integration.test_runc import Containers as RuncContainers
from tests.integration.test_runc import busybox_rootfs, runc_root  # noqa: F401
from tests.registry import Registry, oci_registry, requires_registry  # noqa: F401

pytestmark = [
    *integration,
    requires_runtime("podman"),
    requires_runtime("runc"),
    requires_runtime("containerd"),
    requires_tool("checkpointctl"),
    requires_busybox,
]


@pytest.fixture
def ctd(containerd: Containerd, image: str) -> Iterator[CtdContainers]:  # noqa: F811
    c = CtdContainers(containerd, image)
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def runc_containers(
    tmp_path: Path,
    busybox_rootfs: Path,  # noqa: F811
    runc_root: Path,  # noqa: F811
) -> Iterator[RuncContainers]:
    c = RuncContainers(tmp_path, busybox_rootfs, runc_root)
    try:
        yield c
    finally:
        c.cleanup()


def checkpointctl(*args: str) -> str:
    done = subprocess.run(
        [shutil.which("checkpointctl") or "checkpointctl", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"checkpointctl {' '.join(args)}: {done.stderr}"
    return done.stdout


def export(ckpt: Path, out: Path, fmt: str) -> Path:
    done = run_cedana("export", os.fspath(ckpt), "--format", fmt, "-o", os.fspath(out))
    assert done.returncode == 0, done.stderr
    return out


def assert_checkpointctl_reads(archive: Path, name: str, engine: str) -> None:
    """``checkpointctl show`` lists the container (name, engine) and a checkpoint size that
    is the size of the archive's checkpoint/ (as checkpointctl counts it); ``inspect``
    reads the archive through, its process tree included."""
    shown = checkpointctl("show", os.fspath(archive))
    row = next(line for line in shown.splitlines() if name in line and "from" not in line)
    assert engine in row
    with tarfile.open(archive) as tar:
        size = sum(
            i.size for i in tar if i.isreg() and i.name.removeprefix("./").startswith("checkpoint")
        )
    assert size > 0
    sizes = re.findall(r"(\d+(?:\.\d+)?) (B|KiB|MiB|GiB)", row)
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    assert any(abs(float(n) * units[u] - size) <= size * 0.06 for n, u in sizes), (row, size)
    inspected = checkpointctl("inspect", "--ps-tree", os.fspath(archive))
    assert name in inspected and "sh" in inspected


def test_podman_checkpoint_round_trip_through_a_kubernetes_archive(
    podman: Podman,  # noqa: F811
    made: list[str],  # noqa: F811
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A podman container's cedana checkpoint exported ``--format kubernetes`` is CRI-O's
    layout (checkpoint/, config.dump with checkpointctl's fields, spec.dump marked cri-o,
    rootfs-diff.tar + deleted.files, stats-dump); checkpointctl shows it as CRI-O's;
    ``cedana inspect`` reads it back; ``cedana restore`` refuses it unsigned, then with
    --insecure-accept-unsigned brings it back into podman: counter on, changes there."""
    name = name_for(request)
    c = podman.start(name)
    podman("exec", name, "sh", "-c", CHANGES)
    before = wait_count(c, 4)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    podman("rm", "--force", name)
    archive = export(ckpt.path, tmp_path / "checkpoint.tar", "kubernetes")

    with tarfile.open(archive) as tar:  # uncompressed, as the kubelet keeps it
        names = {i.name for i in tar}
        config = json.load(tar.extractfile("config.dump"))  # type: ignore[arg-type]
        spec = json.load(tar.extractfile("spec.dump"))  # type: ignore[arg-type]
    assert {"config.dump", "spec.dump", "checkpoint/inventory.img", "rootfs-diff.tar"} <= names
    assert "deleted.files" in names and "manifest.json" not in names
    assert {"id", "name", "rootfsImageRef", "rootfsImageName", "checkpointedTime"} <= set(config)
    assert config["name"] == name
    assert spec["annotations"]["io.container.manager"] == "cri-o"
    assert_checkpointctl_reads(archive, name, "CRI-O")

    done = run_cedana("inspect", os.fspath(archive), "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["container"]["rootfs"]["format"] == "podman"
    assert {p["command"] for p in shown["images"]["processes"]} >= {"sh"}
    refused = run_cedana("restore", os.fspath(archive))
    assert refused.returncode == 1 and "--insecure-accept-unsigned" in refused.stderr

    done = run_cedana("restore", os.fspath(archive), "--insecure-accept-unsigned", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == name
    assert_changes_there(podman, name)
    assert_counts_on(cedana.PodmanContainer(name), before)


def test_containerd_archive_of_a_podman_checkpoint(
    podman: Podman,  # noqa: F811
    made: list[str],  # noqa: F811
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """``--format containerd`` writes containerd's flavour (status.dump, status, the
    rootfs changes as a gzip OCI layer with whiteouts and an opaque marker, no cri-o
    marks); checkpointctl shows it as containerd's; ``cedana inspect`` shows it as a
    containerd checkpoint; the podman container it came from runs on."""
    name = name_for(request)
    c = podman.start(name)
    podman("exec", name, "sh", "-c", CHANGES)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    archive = export(ckpt.path, tmp_path / "checkpoint.tar", "containerd")
    with tarfile.open(archive) as tar:
        names = {i.name for i in tar}
        status = json.load(tar.extractfile("status.dump"))  # type: ignore[arg-type]
        layer = tar.extractfile("rootfs-diff.tar").read()  # type: ignore[union-attr]
    assert {"status.dump", "status", "config.dump", "spec.dump"} <= names
    assert "deleted.files" not in names and status["metadata"]["name"] == name
    assert layer[:2] == b"\x1f\x8b"
    with tarfile.open(fileobj=io.BytesIO(layer)) as diff:
        entries = set(diff.getnames())
    assert "etc/.wh.doomed.txt" in entries and "www/.wh..wh..opq" in entries
    assert_checkpointctl_reads(archive, name, "containerd")

    done = run_cedana("inspect", os.fspath(archive), "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["checkpoint"]["runtime"] == "containerd"
    assert shown["container"]["rootfs"]["format"] == "oci-layer"
    assert {p["command"] for p in shown["images"]["processes"]} >= {"sh"}
    assert podman.status(name) == "running"


def test_containerd_checkpoint_round_trip_through_a_containerd_archive(
    ctd: CtdContainers,
    containerd: Containerd,  # noqa: F811
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A containerd container's checkpoint exported ``--format containerd`` restores with
    ``cedana restore ARCHIVE --insecure-accept-unsigned`` into containerd under a new
    name (the image found by its name, the OCI layer turned into overlay's form): the
    counter goes on and the file changes (new, changed, deleted, a replaced directory)
    are there."""
    script = (
        "echo written inside > /tmp/new.txt; echo changed > /etc/image.txt; "
        "rm /etc/doomed.txt; rm -rf /www; mkdir /www; echo new page > /www/other.html; " + COUNTER
    )
    name, new = name_for(request), name_for(request, "-r")
    c = ctd.run(name, script)
    before = wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    archive = export(ckpt.path, tmp_path / "checkpoint.tar", "containerd")
    done = run_cedana(
        "restore",
        os.fspath(archive),
        "--insecure-accept-unsigned",
        "--address",
        containerd.address,
        "--name",
        f"{containerd.namespace}/{new}",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    ctd.names.append(new)
    r = ctd.handle(new)
    root = Path(f"/proc/{r.pid}/root")
    assert (root / "tmp/new.txt").read_text() == "written inside\n"
    assert (root / "etc/image.txt").read_text() == "changed\n"
    assert not (root / "etc/doomed.txt").exists()
    assert sorted(os.listdir(root / "www")) == ["other.html"]
    assert_counts_on(r, before)


@pytest.mark.parametrize("fmt", ["kubernetes", "containerd"])
def test_runc_and_containerd_checkpoints_export_for_checkpointctl(
    runc_containers: RuncContainers,
    ctd: CtdContainers,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    fmt: str,
) -> None:
    """A runc container's and a containerd container's checkpoints export in each
    Kubernetes flavour; checkpointctl lists each (name, engine, checkpoint size) and
    inspects it; cedana opens each back as the flavour it is."""
    engine = "CRI-O" if fmt == "kubernetes" else "containerd"
    runc_name, ctd_name = name_for(request, "-runc"), name_for(request, "-ctd")
    r = runc_containers.run(runc_name)
    wait_count(r, 2)
    runc_ckpt = r.checkpoint(tmp_path / "r.tar.zst", leave_running=True)
    c = ctd.run(ctd_name)
    wait_count(c, 2)
    ctd_ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    for ckpt, name in ((runc_ckpt, runc_name), (ctd_ckpt, ctd_name)):
        archive = export(ckpt.path, tmp_path / f"{name}.tar", fmt)
        assert_checkpointctl_reads(archive, name, engine)
        opened = cedana.open(archive, trust="any")
        assert opened.kind == "container"
        assert opened.runtime == ("podman" if fmt == "kubernetes" else "containerd")


@pytest.fixture
def docker_containers(dockerd: Dockerd) -> Iterator[DockerContainers]:  # noqa: F811
    c = DockerContainers(dockerd)
    try:
        yield c
    finally:
        c.cleanup()


@requires_docker
@pytest.mark.parametrize("fmt", ["kubernetes", "containerd"])
def test_docker_checkpoint_exports_for_checkpointctl(
    docker_containers: DockerContainers,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    fmt: str,
) -> None:
    """A docker container's checkpoint (its overlay2 changes included) exports in each
    Kubernetes flavour under its docker name; checkpointctl lists and inspects it, with
    the rootfs changes counted (a deletion and a replaced directory)."""
    name = name_for(request)
    script = "rm /etc/doomed.txt; rm -rf /www; mkdir /www; echo p > /www/p.html; " + COUNTER
    c = docker_containers.run(name, script)
    wait_count(c, 2)
    ckpt = c.checkpoint(tmp_path / "d.tar.zst", leave_running=True)
    archive = export(ckpt.path, tmp_path / "checkpoint.tar", fmt)
    assert_checkpointctl_reads(archive, name, "CRI-O" if fmt == "kubernetes" else "containerd")
    with tarfile.open(archive) as tar:
        if fmt == "kubernetes":
            deleted = json.load(tar.extractfile("deleted.files"))  # type: ignore[arg-type]
            assert "/etc/doomed.txt" in deleted
        else:
            layer = tar.extractfile("rootfs-diff.tar").read()  # type: ignore[union-attr]
            with tarfile.open(fileobj=io.BytesIO(layer)) as diff:
                assert {"etc/.wh.doomed.txt", "www/.wh..wh..opq"} <= set(diff.getnames())


# --- checkpoint OCI images ------------------------------------------------------------------


def _index_and_manifest(oci_archive: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    with tarfile.open(oci_archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        digest = index["manifests"][0]["digest"].removeprefix("sha256:")
        manifest = json.load(tar.extractfile(f"blobs/sha256/{digest}"))  # type: ignore[arg-type]
    return index, manifest


@requires_registry
def test_podman_checkpoint_image_through_an_oci_archive_and_a_registry(
    podman: Podman,  # noqa: F811
    made: list[str],  # noqa: F811
    oci_registry: Registry,  # noqa: F811
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """``cedana export --format oci-image --to oci-archive:...`` writes one gzip layer (the
    CRI-O archive at /) on no base, annotated with CRI-O's checkpoint name and the
    org.criu.checkpoint keys; ``--to docker://`` pushes the same to a registry; ``cedana
    restore docker://... --insecure-accept-unsigned`` pulls it back and restores it into
    podman: counter on, changes there; a plain image is refused as no checkpoint image."""
    name = name_for(request)
    c = podman.start(name)
    podman("exec", name, "sh", "-c", CHANGES)
    before = wait_count(c, 4)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    podman("rm", "--force", name)
    local = tmp_path / "ckpt.oci.tar"
    done = run_cedana(
        "export", os.fspath(ckpt.path), "--format", "oci-image", "--to", f"oci-archive:{local}"
    )
    assert done.returncode == 0, done.stderr
    _, manifest = _index_and_manifest(local)
    notes = manifest["annotations"]
    assert notes["io.kubernetes.cri-o.annotations.checkpoint.name"] == name
    assert notes["org.criu.checkpoint.container.name"] == name
    assert notes["org.criu.checkpoint.engine.name"] == "CRI-O"
    assert [la["mediaType"] for la in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ]

    ref = oci_registry.ref("cedana-kube/web", "ckpt")
    done = run_cedana("export", os.fspath(ckpt.path), "--format", "oci-image", "--to", ref)
    assert done.returncode == 0, done.stderr
    done = run_cedana("restore", ref, "--insecure-accept-unsigned", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == name
    assert_changes_there(podman, name)
    assert_counts_on(cedana.PodmanContainer(name), before)

    plain = tmp_path / "plain"
    layout = oci.Layout.create(plain)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("empty"))
    buf.seek(0)
    oci.write_image(layout, layers=[oci.add_layer(layout, buf)], tag="x")
    with pytest.raises(
        cedana.UnsupportedFormat, match="neither a cedana checkpoint nor a checkpoint image"
    ):
        cedana.restore(f"oci:{plain}:x", trust="any")


def test_podman_made_checkpoint_image_restores_with_cedana(
    podman: Podman,  # noqa: F811
    made: list[str],  # noqa: F811
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """podman 4.3's own checkpoint image (``podman container checkpoint --create-image``),
    saved as an oci-archive, restores with ``cedana restore oci-archive:...``: the image's
    layer is podman's archive, read and checked as one; the counter goes on in podman, and
    the changes podman's archive carries are there (as for podman's --export)."""
    name = name_for(request)
    made_image = f"localhost/{name}-ckpt:1"
    c = podman.start(name)
    podman("exec", name, "sh", "-c", PODMAN_CHANGES)
    before = wait_count(c, 4)
    podman("container", "checkpoint", "--create-image", made_image, name)
    saved = tmp_path / "podman-ckpt.tar"
    podman("save", "--format", "oci-archive", "-o", os.fspath(saved), made_image)
    podman("rm", "--force", name)
    _, manifest = _index_and_manifest(saved)
    assert "io.podman.annotations.checkpoint.name" in manifest.get("annotations", {})
    done = run_cedana("restore", f"oci-archive:{saved}", "--insecure-accept-unsigned", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == name
    assert_podman_changes_there(
        lambda *p: podman.cat(name, *p), lambda d: podman("exec", name, "ls", d).split()
    )
    assert_counts_on(cedana.PodmanContainer(name), before)


@requires_registry
def test_containerd_checkpoint_image_through_a_registry(
    ctd: CtdContainers,
    containerd: Containerd,  # noqa: F811
    oci_registry: Registry,  # noqa: F811
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A containerd checkpoint exported as a checkpoint image of containerd's archive
    (``--archive containerd``) is pushed to a registry, ``cedana inspect REF`` shows it
    (containerd's archive, its process tree), and it is restored from the registry into
    containerd under a new name; the counter goes on. Its layer tampered with in the registry's
    storage, a restore from it is refused (the digest does not match) and makes nothing."""
    name, new = name_for(request), name_for(request, "-r")
    c = ctd.run(name)
    before = wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    ref = oci_registry.ref("cedana-kube/ctd", "ckpt")
    done = run_cedana(
        "export", os.fspath(ckpt.path), "--format", "oci-image", "--archive", "containerd",
        "--to", ref,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = run_cedana("inspect", ref, "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["checkpoint"]["path"] == ref and shown["checkpoint"]["kind"] == "container"
    assert shown["images"]["processes"], "the archive's CRIU images are decoded"
    done = run_cedana(
        "restore", ref, "--insecure-accept-unsigned", "--address", containerd.address,
        "--name", f"{containerd.namespace}/{new}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ctd.names.append(new)
    assert_counts_on(ctd.handle(new), before)

    pushed = oci.pull(ref, tmp_path / "pulled").layers[0]
    blob = oci_registry.blob_path(pushed.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    again = name_for(request, "-t")
    done = run_cedana(
        "restore", ref, "--insecure-accept-unsigned", "--address", containerd.address,
        "--name", f"{containerd.namespace}/{again}",
    )  # fmt: skip
    assert done.returncode == 1 and "digest" in done.stderr, done.stderr
    assert again not in containerd.lines("containers", "ls")


def test_podman_restores_cedanas_podman_checkpoint_image(
    podman: Podman,  # noqa: F811
    made: list[str],  # noqa: F811
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """``--format oci-image --archive podman`` writes podman's variant of the checkpoint
    image (podman's import archive at /, io.podman.annotations.checkpoint.*), which
    ``podman container restore IMAGE`` restores by itself once the image is in its store:
    the counter goes on, the changes are there."""
    name, new = name_for(request), name_for(request, "-2")
    made.append(new)
    c = podman.start(name)
    podman("exec", name, "sh", "-c", CHANGES)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    saved = tmp_path / "podman-image.tar"
    done = run_cedana(
        "export", os.fspath(ckpt.path), "--format", "oci-image", "--archive", "podman",
        "--to", f"oci-archive:{saved}:localhost/{name}-ckpt:1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _, manifest = _index_and_manifest(saved)
    assert manifest["annotations"]["io.podman.annotations.checkpoint.name"] == name
    podman("pull", "--quiet", f"oci-archive:{saved}")
    podman("container", "restore", "--name", new, f"localhost/{name}-ckpt:1")
    assert new in podman.running()
    assert_changes_there(podman, new)
    restored = cedana.PodmanContainer(new)
    assert_counts_on(restored, count(restored)[:3])
