"""The overlay diff <-> OCI layer conversion of containerd's checkpoint archives, without
root: whiteouts and opaque directories both ways, overlay's attributes dropped, and names
that leave the root refused."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from cedana.errors import NotCheckpointable
from cedana.rootfs.oci_layer import from_oci_layer, to_oci_layer


def _tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _entry(name: str, kind: bytes = tarfile.REGTYPE, **pax: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.pax_headers = dict(pax)
    return info


def test_overlay_diff_and_oci_layer_convert_both_ways(tmp_path: Path) -> None:
    """A whiteout becomes ``.wh.NAME`` and back, an opaque directory ``.wh..wh..opq`` and
    back; overlay's own attributes are not in the layer (it is gzip); file content stays."""
    src = tmp_path / "overlay"
    src.mkdir()
    gone = _entry("etc/doomed.txt", tarfile.CHRTYPE)
    gone.devmajor = gone.devminor = 0
    _tar(
        src / "rootfs-diff.tar",
        [
            (_entry("etc", tarfile.DIRTYPE), None),
            (_entry("etc/new.txt"), b"new\n"),
            (gone, None),
            (_entry("www", tarfile.DIRTYPE, **{"SCHILY.xattr.trusted.overlay.opaque": "y"}), None),
            (_entry("www/p.html"), b"p\n"),
        ],
    )
    layer_dir = tmp_path / "layer"
    layer_dir.mkdir()
    counts = to_oci_layer(src, layer_dir / "rootfs-diff.tar")
    assert (counts["whiteouts"], counts["opaque"]) == (1, 1)
    raw = (layer_dir / "rootfs-diff.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw))) as layer:
        names = {i.name: i for i in layer}
    assert {"etc/.wh.doomed.txt", "www/.wh..wh..opq", "etc/new.txt"} <= set(names)
    assert not any(k.startswith("SCHILY.xattr") for i in names.values() for k in i.pax_headers)

    back = from_oci_layer(layer_dir, tmp_path / "back")
    with tarfile.open(back / "rootfs-diff.tar") as tar:
        entries = {i.name: i for i in tar}
        assert tar.extractfile("etc/new.txt").read() == b"new\n"  # type: ignore[union-attr]
    assert entries["etc/doomed.txt"].ischr() and entries["etc/doomed.txt"].devmajor == 0
    assert entries["www"].pax_headers.get("SCHILY.xattr.trusted.overlay.opaque") == "y"
    assert not any(".wh." in n for n in entries)


def test_opaque_marker_without_its_directory_and_escapes(tmp_path: Path) -> None:
    """A layer that marks a directory opaque without an entry of its own gets one made;
    an entry that leaves the root is refused."""
    src = tmp_path / "layer"
    src.mkdir()
    _tar(src / "rootfs-diff.tar", [(_entry("a/b/.wh..wh..opq"), b"")])
    with tarfile.open(from_oci_layer(src, tmp_path / "out") / "rootfs-diff.tar") as tar:
        made = tar.getmember("a/b")
    assert made.isdir() and made.pax_headers["SCHILY.xattr.trusted.overlay.opaque"] == "y"
    _tar(src / "rootfs-diff.tar", [(_entry("../../etc/cron.d/x"), b"x")])
    with pytest.raises(NotCheckpointable, match="leaves the root"):
        from_oci_layer(src, tmp_path / "out2")
