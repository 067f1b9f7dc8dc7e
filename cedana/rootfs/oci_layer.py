"""Overlay diffs as OCI image layers: how containerd's checkpoint archive carries a
container's changes (its ``rootfs-diff.tar``: the rw snapshot's diff, a gzip layer).

An OCI layer (image-spec ``layer.md``) says a deletion with an empty file ``.wh.NAME``
beside where ``NAME`` was and a directory replaced as a whole with ``.wh..wh..opq`` in
it; overlay says them with a character device 0:0 and the ``overlay.opaque`` attribute.
:func:`to_oci_layer` writes cedana's overlay diff (:mod:`cedana.rootfs.overlay`) in the
layer's form, overlay's own attributes dropped.
"""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

from cedana.errors import NotCheckpointable
from cedana.rootfs.overlay import DIFF_NAME

__all__ = ["OCI_LAYER_FORMAT", "OPAQUE", "WHITEOUT", "from_oci_layer", "to_oci_layer"]

#: The diff format of an OCI layer tar (gzip): ``rootfs-diff.tar`` in containerd's archive.
OCI_LAYER_FORMAT = "oci-layer"
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

_OVERLAY_PAX = ("SCHILY.xattr.trusted.overlay.", "SCHILY.xattr.user.overlay.")


def to_oci_layer(diff: Path, dest: Path) -> dict[str, int]:
    """Write the overlay diff ``diff/rootfs-diff.tar`` as the gzip OCI layer ``dest``.

    Returns:
        What it holds: ``entries``, ``whiteouts``, ``opaque``.

    Raises:
        NotCheckpointable: An entry leaves the root (the diff was checked when its
            artifact was opened; this is checked again).
    """
    counts = {"entries": 0, "whiteouts": 0, "opaque": 0}
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with (
        open(fd, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as zipped,
        tarfile.open(diff / DIFF_NAME, "r:") as src,
        tarfile.open(fileobj=zipped, mode="w|", format=tarfile.PAX_FORMAT) as out,
    ):
        for info in src:
            name = os.path.normpath(info.name).lstrip("/")
            if name.startswith(".."):
                raise NotCheckpointable(f"rootfs diff entry {info.name!r} leaves the root")
            parent, base = os.path.split(name)
            if info.ischr() and info.devmajor == 0 and info.devminor == 0:
                out.addfile(_empty(os.path.join(parent, WHITEOUT + base), info))
                counts["whiteouts"] += 1
                continue
            opaque = any(
                k.startswith(_OVERLAY_PAX) and k.endswith(".opaque") and v == "y"
                for k, v in info.pax_headers.items()
            )
            info.pax_headers = {
                k: v for k, v in info.pax_headers.items() if not k.startswith(_OVERLAY_PAX)
            }
            data = src.extractfile(info) if info.isreg() else None
            out.addfile(info, data)
            counts["entries"] += 1
            if opaque and info.isdir() and name != ".":
                out.addfile(_empty(os.path.join(name, OPAQUE), info))
                counts["opaque"] += 1
    return counts


def from_oci_layer(diff: Path, dest: Path) -> Path:
    """Write the OCI layer ``diff/rootfs-diff.tar`` (gzip or plain) as the overlay diff
    ``dest/rootfs-diff.tar``: each ``.wh.NAME`` a whiteout (character device 0:0), each
    directory holding ``.wh..wh..opq`` opaque (``trusted.overlay.opaque``; made when the
    layer has no entry of its own for it), the other entries as they are.

    Returns:
        ``dest`` (the diff directory to apply).

    Raises:
        NotCheckpointable: An entry leaves the root (they are checked again on apply).
    """
    layer = diff / DIFF_NAME
    opaque: set[str] = set()
    dirs: set[str] = set()
    with tarfile.open(layer, "r:*") as src:
        for info in src:
            name = _inside(info.name)
            parent, base = os.path.split(name)
            if base == OPAQUE:
                opaque.add(parent or ".")
            elif info.isdir():
                dirs.add(name)
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (
        tarfile.open(layer, "r:*") as src,
        tarfile.open(dest / DIFF_NAME, "w:", format=tarfile.PAX_FORMAT) as out,
    ):
        for name in sorted(opaque - dirs, key=lambda n: n.count("/")):
            made = tarfile.TarInfo(name)
            made.type, made.mode = tarfile.DIRTYPE, 0o755
            made.pax_headers = {_OPAQUE_KEY: "y"}
            out.addfile(made)
        for info in src:
            name = _inside(info.name)
            parent, base = os.path.split(name)
            if base == OPAQUE:
                continue
            if base.startswith(WHITEOUT):
                gone = tarfile.TarInfo(os.path.join(parent, base[len(WHITEOUT) :]))
                gone.type, gone.devmajor, gone.devminor = tarfile.CHRTYPE, 0, 0
                gone.mode, gone.mtime = 0, info.mtime
                out.addfile(gone)
                continue
            if info.isdir() and name in opaque:
                info.pax_headers = {**info.pax_headers, _OPAQUE_KEY: "y"}
            out.addfile(info, src.extractfile(info) if info.isreg() else None)
    return dest


_OPAQUE_KEY = "SCHILY.xattr.trusted.overlay.opaque"


def _inside(raw: str) -> str:
    name = os.path.normpath(raw).lstrip("/")
    if name.startswith(".."):
        raise NotCheckpointable(f"rootfs diff entry {raw!r} leaves the root")
    return name


def _empty(name: str, like: tarfile.TarInfo) -> tarfile.TarInfo:
    marker = tarfile.TarInfo(name)
    marker.mtime, marker.uid, marker.gid, marker.mode = like.mtime, 0, 0, 0o644
    return marker
