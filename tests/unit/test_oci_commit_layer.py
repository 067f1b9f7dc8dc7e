"""Overlay diffs as OCI layers: whiteouts and opaque directories converted, hostile
entries refused (cedana.rootfs.oci_layer)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cedana.errors import UnsafeArtifact, UnsupportedFormat
from cedana.rootfs.oci_layer import overlay_to_oci

Entry = tuple[str, str, dict[str, object]]


def _diff(path: Path, entries: list[Entry]) -> Path:
    """An overlay-format diff: (name, kind, fields) with kind dir/file/chr/blk/sym/lnk."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        root = tarfile.TarInfo(".")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        for name, kind, fields in entries:
            info = tarfile.TarInfo(name)
            data = fields.pop("data", b"")
            assert isinstance(data, bytes)
            info.type = {
                "dir": tarfile.DIRTYPE,
                "file": tarfile.REGTYPE,
                "chr": tarfile.CHRTYPE,
                "blk": tarfile.BLKTYPE,
                "sym": tarfile.SYMTYPE,
                "lnk": tarfile.LNKTYPE,
            }[kind]
            for key, value in fields.items():
                setattr(info, key, value)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _convert(tmp_path: Path, entries: list[Entry]) -> dict[str, tarfile.TarInfo]:
    out = io.BytesIO()
    overlay_to_oci(_diff(tmp_path / "diff.tar", entries), out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def test_whiteouts_and_opaque_dirs_become_oci_names(tmp_path: Path) -> None:
    """A 0:0 character device becomes DIR/.wh.NAME, a file marked overlay.whiteout too,
    and an opaque directory is kept with DIR/.wh..wh..opq inside; overlay's attributes
    are dropped, other attributes, owners and modes kept."""
    got = _convert(
        tmp_path,
        [
            ("etc", "dir", {"mode": 0o755}),
            ("etc/doomed.txt", "chr", {"devmajor": 0, "devminor": 0}),
            ("gone", "chr", {}),
            (
                "etc/xgone",
                "file",
                {"pax_headers": {"SCHILY.xattr.trusted.overlay.whiteout": "y"}},
            ),
            (
                "www",
                "dir",
                {
                    "mode": 0o750,
                    "uid": 33,
                    "gid": 33,
                    "pax_headers": {
                        "SCHILY.xattr.trusted.overlay.opaque": "y",
                        "SCHILY.xattr.user.note": "kept",
                    },
                },
            ),
            ("www/index.html", "file", {"data": b"hi", "uid": 33, "mode": 0o640}),
        ],
    )
    assert set(got) == {
        "etc",
        "etc/.wh.doomed.txt",
        ".wh.gone",
        "etc/.wh.xgone",
        "www",
        "www/.wh..wh..opq",
        "www/index.html",
    }
    assert got["etc/.wh.doomed.txt"].isreg() and got["etc/.wh.doomed.txt"].size == 0
    www = got["www"]
    assert www.isdir() and (www.mode, www.uid, www.gid) == (0o750, 33, 33)
    assert www.pax_headers.get("SCHILY.xattr.user.note") == "kept"
    assert not any("overlay" in k for k in www.pax_headers)
    page = got["www/index.html"]
    assert (page.size, page.uid, page.mode) == (2, 33, 0o640)


def test_links_are_kept(tmp_path: Path) -> None:
    """Hard links (to a file of the diff) and symlinks (inside the root, or absolute)
    stay links."""
    got = _convert(
        tmp_path,
        [
            ("d", "dir", {}),
            ("d/f", "file", {"data": b"deep"}),
            ("d/hard", "lnk", {"linkname": "d/f"}),
            ("d/rel", "sym", {"linkname": "../d/f"}),
            ("d/abs", "sym", {"linkname": "/etc/passwd"}),
        ],
    )
    assert got["d/hard"].islnk() and got["d/hard"].linkname == "d/f"
    assert got["d/rel"].issym() and got["d/rel"].linkname == "../d/f"
    assert got["d/abs"].linkname == "/etc/passwd"


@pytest.mark.parametrize(
    ("entries", "error", "match"),
    [
        ([("evil", "sym", {"linkname": "../../../etc/shadow"})], UnsafeArtifact, "outside"),
        ([("../evil", "file", {"data": b"x"})], UnsafeArtifact, r"'\.\.'"),
        ([("/abs", "file", {"data": b"x"})], UnsafeArtifact, "absolute"),
        ([("dev/mem", "chr", {"devmajor": 1, "devminor": 1})], UnsafeArtifact, "device"),
        ([("dev/sda", "blk", {"devmajor": 8})], UnsafeArtifact, "device"),
        ([("h", "lnk", {"linkname": "etc/shadow"})], UnsafeArtifact, "hard link"),
        ([(".wh.passwd", "file", {"data": b""})], UnsafeArtifact, "whiteout"),
        (
            [("d", "dir", {"pax_headers": {"SCHILY.xattr.trusted.overlay.redirect": "/x"}})],
            UnsupportedFormat,
            "renamed directory",
        ),
        (
            [("f", "file", {"pax_headers": {"SCHILY.xattr.trusted.evil": "1"}})],
            UnsafeArtifact,
            "host-only",
        ),
    ],
)
def test_hostile_diffs_are_refused(
    tmp_path: Path, entries: list[Entry], error: type[Exception], match: str
) -> None:
    """A diff with an escaping symlink or name, a device node, a hard link outside the
    diff, a name an image reads as a whiteout, a renamed directory or a host-only
    attribute is refused before anything is written."""
    out = io.BytesIO()
    with pytest.raises(error, match=match):
        overlay_to_oci(_diff(tmp_path / "diff.tar", entries), out)
    assert out.getvalue() == b""


@pytest.mark.parametrize(
    ("runtime", "record", "module", "client"),
    [
        (
            "containerd",
            {"address": "/tmp/elsewhere/evil.sock", "namespace": "n",
             "image": {"name": "x", "manifest_digest": "sha256:" + "a" * 64}},
            "cedana.runtimes._containerd_api",
            "ContainerdClient",
        ),
        (
            "docker",
            {"address": "tcp://attacker.example:2375", "image": {"name": "x", "id": "sha256:" + "b" * 64}},
            "cedana.runtimes._docker_api",
            "DockerClient",
        ),
    ],
)  # fmt: skip
def test_commit_reaches_no_socket_the_checkpoint_names(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    runtime: str,
    record: dict[str, object],
    module: str,
    client: str,
) -> None:
    """Without address=, commit reads the base image from the runtime's default socket,
    never from the one the checkpoint records (a host socket, or a tcp:// host, is not
    the artifact's to choose). Fails while the recorded address is dialled."""
    import importlib

    from cedana import commit
    from cedana.errors import ContainerError, ImageMismatch
    from tests.unit.test_restore_plans import _ROOTFS, _artifact, _container

    art = _artifact(
        tmp_path,
        runtime=runtime,
        workload={"container": _container(tmp_path), "rootfs": _ROOTFS, runtime: record},
    )
    dialled: list[object] = []

    class Refusing:
        def __init__(self, *args: object, **kwargs: object) -> None:
            dialled.append(kwargs.get("address", args[0] if args else None))
            raise ContainerError("not reachable in this test")

    monkeypatch.setattr(importlib.import_module(module), client, Refusing)
    with pytest.raises(ImageMismatch):
        commit(art, f"oci-archive:{tmp_path / 'out.tar'}")
    assert dialled and all(a in (None, "/run/containerd/containerd.sock") for a in dialled)
    assert not (tmp_path / "out.tar").exists()
