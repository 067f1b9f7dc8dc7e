"""CRI-O's and containerd's checkpoint archives (the kubelet's) read by the family reader,
without root: the engine told apart, each layout held to its own names, the same hostile
input refused as for podman's, and images of another machine refused."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

import cedana
from cedana.artifact import foreign
from cedana.runtimes import _criu_archive, _podman_archive
from cedana.runtimes._criu_archive import ARCHIVE
from tests.unit.test_podman_archive import IMAGE_ID, Entry, _info, _sym, diff_tar, write

CORES: dict[str, Any] = {"core-1.img": [{"tc": {"comm": "sh"}, "mtype": "X86_64"}]}


@pytest.fixture(autouse=True)
def fake_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """CRIU's images as JSON (the cores say ``mtype`` as CORES does), no podman store."""

    def load(path: Path) -> dict[str, Any]:
        if path.name == "pstree.img":
            return {"entries": [{"pid": 1, "ppid": 0}]}
        return {"entries": CORES[path.name]}

    monkeypatch.setattr(_criu_archive, "load_image", load)
    monkeypatch.setattr(_podman_archive, "_image_layers", lambda image_id: ([], []))
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", "h", "6", "#1", "x86_64")))


def kube_layout(engine: str, *, extra: list[Entry] = (), spec: Any = None) -> list[Entry]:  # type: ignore[assignment]
    """What CRI-O (``"crio"``) or containerd writes for the kubelet."""
    annotations = {"io.container.manager": "cri-o"} if engine == "crio" else {}
    config = {
        "id": "ab" * 32,
        "name": "web",
        "rootfsImageRef": IMAGE_ID,
        "rootfsImageName": "registry.example/web:1",
        "runtime": "runc",
        "createdTime": "2026-01-01T00:00:00Z",
        "checkpointedTime": "2026-01-01T00:01:00Z",
    }
    files: dict[str, bytes | None] = {
        "stats-dump": b"\x00" * 46,
        "dump.log": b"",
        "checkpoint/": None,
        "checkpoint/core-1.img": b"core1",
        "checkpoint/inventory.img": b"inventory",
        "checkpoint/pages-1.img": os.urandom(4096),
        "checkpoint/pstree.img": b"pstree",
        "config.dump": json.dumps(config).encode(),
        "spec.dump": json.dumps(
            spec if spec is not None else {"annotations": annotations, "process": {}}
        ).encode(),
    }
    if engine == "crio":
        files["rootfs-diff.tar"] = diff_tar((_info("etc/new.txt"), b"new\n"))
        files["deleted.files"] = b'["/etc/doomed.txt"]'
        files["bind.mounts"] = b'[{"source": "/data", "destination": "/data"}]'
        files["io.kubernetes.cri-o.LogPath"] = b"log\n"
    else:
        layer = diff_tar((_info("etc/new.txt"), b"new\n"), (_info("etc/.wh.doomed.txt"), b""))
        files["rootfs-diff.tar"] = gzip.compress(layer)
        files["status.dump"] = b'{"id": "x", "metadata": {"name": "web"}}'
        files["status"] = b"{}"
        files["container.log"] = b""
    out = [
        (_info(n, tarfile.DIRTYPE if n.endswith("/") else tarfile.REGTYPE), d)
        for n, d in files.items()
    ]
    return out + list(extra)


def test_crio_archive_is_presented_as_a_containers_storage_checkpoint(tmp_path: Path) -> None:
    """A CRI-O archive (uncompressed, as the kubelet keeps it) is recognised, refused
    unsigned, and opened with trust='any' as a podman checkpoint (the store CRI-O shares):
    the image by rootfsImageRef, podman's diff format, the deletions counted."""
    archive = write(tmp_path / "a.tar", kube_layout("crio"), "none")
    assert foreign.recognise(archive) is ARCHIVE
    with pytest.raises(cedana.UntrustedArtifact, match="kubelet's checkpoint archive"):
        cedana.open(archive)
    ckpt = cedana.open(archive, trust="any")
    assert (ckpt.kind, ckpt.runtime) == ("container", "podman")
    pod = ckpt.manifest.workload["podman"]
    assert pod["image"]["id"] == IMAGE_ID and pod["export"]["flavour"] == "kubernetes"
    assert ckpt.manifest.workload["rootfs"]["diff"]["whiteouts"] == 1
    assert "container/dump/bind.mounts" in {m.name for m in ckpt.manifest.members}


def test_containerd_archive_is_presented_as_a_containerd_checkpoint(tmp_path: Path) -> None:
    """containerd's archive (status.dump, no engine annotation, a gzip OCI layer) opens as
    a containerd checkpoint whose diff is an OCI layer, on the runc shim, in the CRI
    plugin's namespace, its image by name."""
    ckpt = cedana.open(write(tmp_path / "a.tar", kube_layout("containerd"), "none"), trust="any")
    assert (ckpt.kind, ckpt.runtime) == ("container", "containerd")
    rootfs = ckpt.manifest.workload["rootfs"]
    assert rootfs["format"] == "oci-layer" and rootfs["diff"]["files"] == 2
    ctd = ckpt.manifest.workload["containerd"]
    assert ctd["runtime"]["name"] == "io.containerd.runc.v2" and ctd["namespace"] == "k8s.io"
    assert ctd["image"]["name"] == "registry.example/web:1"


HOSTILE = {
    "podman's file in CRI-O's archive": (
        lambda: kube_layout("crio", extra=[(_info("network.status"), b"{}")]),
        cedana.UnsafeArtifact,
        "not part of CRI-O's checkpoint layout",
    ),
    "CRI-O's file in containerd's archive": (
        lambda: kube_layout("containerd", extra=[(_info("bind.mounts"), b"[]")]),
        cedana.UnsafeArtifact,
        "not part of containerd's checkpoint layout",
    ),
    "traversal": (
        lambda: kube_layout("crio", extra=[(_info("checkpoint/../../etc/x"), b"x")]),
        cedana.UnsafeArtifact,
        "unsafe name",
    ),
    "link": (
        lambda: kube_layout("crio", extra=[(_sym("checkpoint/x.img", "/etc/shadow"), None)]),
        cedana.UnsafeArtifact,
        "symbolic link",
    ),
    "device in the layer": (
        lambda: [
            e if e[0].name != "rootfs-diff.tar" else (e[0], gzip.compress(_dev_tar()))
            for e in kube_layout("containerd")
        ],
        cedana.UnsafeArtifact,
        "device node 1:3",
    ),
    "no engine": (
        lambda: [e for e in kube_layout("containerd") if e[0].name != "status.dump"],
        cedana.ArtifactCorrupt,
        "names no engine",
    ),
    "another machine": (
        lambda: kube_layout("crio"),
        cedana.NotCheckpointable,
        "aarch64 machine",
    ),
}


def _dev_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.addfile(_info("dev/null2", tarfile.CHRTYPE, devmajor=1, devminor=3))
    return out.getvalue()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_kubernetes_archive_is_refused_while_it_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Each hostile or foreign archive is refused while it is opened, naming what is
    wrong: another engine's files, traversal, links and devices, no engine at all, and
    CRIU images of another machine."""
    entries, error, message = HOSTILE[case]
    if case == "another machine":
        monkeypatch.setitem(CORES, "core-1.img", [{"tc": {"comm": "sh"}, "mtype": "AARCH64"}])
    archive = write(tmp_path / "a.tar", entries(), "none")
    with pytest.raises(error, match=message):
        cedana.open(archive, trust="any")
    assert sorted(os.listdir(tmp_path)) == ["a.tar"]


def test_oci_image_export_needs_a_reference_and_files_need_a_path(tmp_path: Path) -> None:
    """``--format oci-image`` writes to ``--to REF``, the archive formats to ``-o OUT``:
    either mixed up is a clear error before anything is read."""
    from cedana.cli import main

    for argv in (
        ["export", "x.tar.zst", "--format", "oci-image", "-o", "out.tar"],
        ["export", "x.tar.zst", "--format", "kubernetes", "--to", "oci:dir"],
        ["export", "x.tar.zst", "--format", "kubernetes"],
    ):
        assert main(argv) == 1
    with pytest.raises(cedana.InvalidOption, match="to="):
        cedana.export("x.tar.zst", format="oci-image")


def test_checkpoint_image_is_told_by_its_annotations_and_has_one_layer(tmp_path: Path) -> None:
    """An image is a checkpoint image by any engine's name annotation (CRI-O's,
    containerd's org.criu key, podman's); one of them with two layers is refused, an image
    without them is no checkpoint image (None)."""
    from cedana import oci
    from cedana.runtimes._kube_image import NAME_KEYS, checkpoint_layer

    layout = oci.Layout.create(tmp_path / "layout")

    def layer(name: str) -> oci.Layer:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.addfile(tarfile.TarInfo(name))
        buf.seek(0)
        return oci.add_layer(layout, buf)

    one = layer("config.dump")
    for key in NAME_KEYS:
        image = oci.write_image(layout, layers=[one], annotations={key: "web"})
        assert checkpoint_layer(image) == one.descriptor
    assert checkpoint_layer(oci.write_image(layout, layers=[one])) is None
    two = oci.write_image(layout, layers=[one, layer("x")], annotations={NAME_KEYS[0]: "w"})
    with pytest.raises(cedana.UnsupportedFormat, match="2 layers"):
        checkpoint_layer(two)


def test_a_failed_export_leaves_no_partial_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the copy of the finished archive to its destination fails midway (a full
    disk), nothing is left at the destination. Fails while the partial file stays under
    the name asked for."""
    import errno

    from cedana.runtimes import _kube_archive
    from tests.unit.test_restore_plans import _ROOTFS, _artifact, _container

    art = _artifact(
        tmp_path, runtime="runc", workload={"container": _container(tmp_path), "rootfs": _ROOTFS}
    )

    def full(src: Any, dst: Any, length: int = 0) -> None:
        dst.write(src.read(100))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_kube_archive.shutil, "copyfileobj", full)  # type: ignore[attr-defined]
    dest = tmp_path / "out.tar"
    with pytest.raises(OSError):
        _kube_archive.export_archive(art, dest, work_dir=tmp_path)
    assert not dest.exists()
