"""Overlay diffs as OCI image layers and back: overlay's whiteouts and OCI's.

The overlay format (:mod:`cedana.rootfs.overlay`) records a deleted path as a character
device 0:0 (or, on kernels from 6.7, a file carrying ``overlay.whiteout``) and a directory
whose lower content is hidden with ``overlay.opaque=y``. An OCI layer (image-spec
``layer.md``) says the same with names: ``DIR/.wh.NAME`` deletes ``DIR/NAME``, and
``DIR/.wh..wh..opq`` hides what lower layers have in ``DIR``. :func:`overlay_to_oci`
converts one into the other; everything else (files, directories, symlinks, hard links,
owners, modes, times, extended attributes other than overlay's own) is copied as it is.

The diff is untrusted: every entry is checked before the first is written, as
:func:`cedana.rootfs.overlay.apply_upper` checks it (names inside the root, hard links to
files of the same diff, relative symlinks that stay inside the root, no device nodes but
whiteouts, no host-only attributes), and so is what only an image could misread: an entry
whose own name begins with ``.wh.`` is refused. A renamed directory (``overlay.redirect``)
has no OCI form and is refused too.

:func:`to_oci_layer` writes such a layer gzipped, as containerd's checkpoint archive
carries a container's changes (its ``rootfs-diff.tar``), and :func:`from_oci_layer` reads
one back into the overlay format.
"""

from __future__ import annotations

import gzip
import logging
import os
import tarfile
from pathlib import Path
from typing import IO

import attrs

from cedana.errors import NotCheckpointable, UnsafeArtifact, UnsupportedFormat
from cedana.rootfs.overlay import DIFF_NAME, _checked_entries, _overlay_xattr

__all__ = [
    "OCI_LAYER_FORMAT",
    "OPAQUE",
    "WHITEOUT",
    "LayerCounts",
    "from_oci_layer",
    "overlay_to_oci",
    "to_oci_layer",
]

logger = logging.getLogger("cedana.rootfs")

#: The diff format of an OCI layer tar (gzip): ``rootfs-diff.tar`` in containerd's archive.
OCI_LAYER_FORMAT = "oci-layer"
WHITEOUT = WHITEOUT_PREFIX = ".wh."
OPAQUE = OPAQUE_MARKER = ".wh..wh..opq"
_XATTR_PAX = "SCHILY.xattr."
_CHUNK = 1 << 20


@attrs.frozen(kw_only=True)
class LayerCounts:
    """What a conversion wrote: entries copied, whiteouts and opaque markers made."""

    entries: int
    whiteouts: int
    opaque: int


def _overlay_keys(info: tarfile.TarInfo) -> dict[str, str]:
    """The entry's overlay attributes: short name -> value."""
    out = {}
    for key, value in info.pax_headers.items():
        if key.startswith(_XATTR_PAX):
            short = _overlay_xattr(key[len(_XATTR_PAX) :])
            if short is not None:
                out[short] = value
    return out


def _marker(name: str, info: tarfile.TarInfo | None = None) -> tarfile.TarInfo:
    out = tarfile.TarInfo(name)
    out.type = tarfile.REGTYPE
    out.size = 0
    out.mode = 0o644
    out.mtime = info.mtime if info is not None else 0
    return out


def overlay_to_oci(diff: Path, out: IO[bytes]) -> LayerCounts:
    """Write the overlay diff tar ``diff`` to ``out`` as an OCI layer tar (uncompressed).

    Raises:
        UnsafeArtifact: An entry that escapes, links outside, is a device, sets a
            host-only attribute, or is named like a whiteout.
        UnsupportedFormat: A renamed directory (``overlay.redirect``).
    """
    entries = whiteouts = opaque = 0
    with (
        tarfile.open(diff, mode="r:", encoding="utf-8", errors="surrogateescape") as src,
        tarfile.open(
            fileobj=out,
            mode="w:",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
        ) as dst,
    ):
        checked = _checked_entries(src)  # every header, before anything is written
        for info, parts in checked:
            if parts and parts[-1].startswith(WHITEOUT_PREFIX):
                raise UnsafeArtifact(
                    f"the root filesystem changes hold {info.name!r}, a name an image layer "
                    "reads as a whiteout; commit refuses it"
                )
            if "redirect" in _overlay_keys(info):
                raise UnsupportedFormat(
                    f"the root filesystem changes hold a renamed directory {info.name!r} "
                    "(overlay redirect_dir), which an OCI layer cannot express"
                )
        for info, parts in checked:
            if not parts:
                continue  # the root directory itself
            name = "/".join(parts)
            keys = _overlay_keys(info)
            is_whiteout = (info.ischr() and info.devmajor == 0 and info.devminor == 0) or (
                info.isreg() and "whiteout" in keys
            )
            if is_whiteout:
                parent = "/".join(parts[:-1])
                target = (parent + "/" if parent else "") + WHITEOUT_PREFIX + parts[-1]
                dst.addfile(_marker(target, info))
                whiteouts += 1
                continue
            copy = _copied(info, name)
            if info.isreg():
                f = src.extractfile(info)
                assert f is not None
                dst.addfile(copy, f)
            else:
                dst.addfile(copy)
            entries += 1
            if info.isdir() and keys.get("opaque") == "y":
                dst.addfile(_marker(f"{name}/{OPAQUE_MARKER}", info))
                opaque += 1
    counts = LayerCounts(entries=entries, whiteouts=whiteouts, opaque=opaque)
    logger.debug("overlay diff %s as an OCI layer: %s", diff, counts)
    return counts


def _copied(info: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    """The entry with a normalised name, overlay's own attributes dropped."""
    copy = tarfile.TarInfo(name + ("/" if info.isdir() else ""))
    for field in ("mode", "uid", "gid", "size", "mtime", "type", "linkname", "uname", "gname"):
        setattr(copy, field, getattr(info, field))
    copy.devmajor, copy.devminor = info.devmajor, info.devminor
    if info.islnk():
        copy.linkname = "/".join(p for p in info.linkname.split("/") if p not in ("", "."))
    copy.pax_headers = {
        k: v
        for k, v in info.pax_headers.items()
        if k not in ("path", "linkpath", "size", "uid", "gid", "uname", "gname")
        and not (k.startswith(_XATTR_PAX) and _overlay_xattr(k[len(_XATTR_PAX) :]) is not None)
    }
    return copy


def to_oci_layer(diff: Path, dest: Path) -> dict[str, int]:
    """Write the overlay diff ``diff/rootfs-diff.tar`` as the gzip OCI layer ``dest``
    (made new, mode 0600), checked as :func:`overlay_to_oci` checks it.

    Returns:
        What it holds: ``entries``, ``whiteouts``, ``opaque``.
    """
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with (
            open(fd, "wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0) as zipped,
        ):
            counts = overlay_to_oci(diff / DIFF_NAME, zipped)  # type: ignore[arg-type]
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return {"entries": counts.entries, "whiteouts": counts.whiteouts, "opaque": counts.opaque}


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
