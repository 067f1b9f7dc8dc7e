"""The containers/storage snapshotter: a podman (or CRI-O) container's layer.

containers/storage, the store podman and CRI-O share, keeps a container's root
filesystem with its ``overlay`` driver as the image's layers (``overlay/<layer>/diff``,
reached through the short links in ``overlay/l/``) plus the container's own layer,
whose ``diff`` directory is the overlay upper directory: what the container changed.
podman tells where it is (``podman container inspect``: ``GraphDriver.Data.UpperDir``
and ``LowerDir``); this module checks that this is what the container's root is
mounted from and reuses the overlay snapshotter's capture and apply
(:mod:`cedana.rootfs.overlay`), so the diff is the same ``"overlay"`` format.

podman's own checkpoint archives carry the changes differently: ``rootfs-diff.tar``
(new and changed files only, no whiteouts) plus ``deleted.files`` (a JSON list of
removed paths, applied after the tar). :func:`to_podman_diff` converts an overlay diff
into that layout, so podman's ``container restore --import`` can take it.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from cedana.errors import NotCheckpointable
from cedana.rootfs import OVERLAY, RootfsDiff
from cedana.rootfs.overlay import DIFF_NAME, OverlayLayers, OverlaySnapshotter, layers_json

__all__ = ["DELETED_FILES", "ContainersStorageSnapshotter", "to_podman_diff"]

#: podman's list of deleted paths beside its ``rootfs-diff.tar``.
DELETED_FILES = "deleted.files"

_OPAQUE_KEYS = ("SCHILY.xattr.trusted.overlay.opaque", "SCHILY.xattr.user.overlay.opaque")
_OVERLAY_PAX = ("SCHILY.xattr.trusted.overlay.", "SCHILY.xattr.user.overlay.")


def _strings(values: Iterable[object]) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


@attrs.define(eq=False)
class ContainersStorageSnapshotter:
    """A containers/storage container layer (overlay driver): captures its changes, or
    receives them.

    Implements :class:`cedana.rootfs.Snapshotter` for one layer.

    Args:
        upper: The layer's ``diff`` directory (``GraphDriver.Data.UpperDir``).
        lower: The image's layer directories, uppermost first (``LowerDir``).
        work: The layer's overlay work directory (``WorkDir``).
    """

    upper: Path = attrs.field(converter=Path)
    lower: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    work: str | None = None
    #: The member files a diff of this store consists of.
    diff_members: ClassVar[tuple[str, ...]] = (DIFF_NAME,)
    name: str = attrs.field(default="containers-storage", init=False)
    format: str = attrs.field(default=OVERLAY, init=False)
    _layers: OverlayLayers | None = attrs.field(default=None, init=False, repr=False)

    @classmethod
    def from_graph_driver(
        cls, graph: Mapping[str, Any], *, what: str
    ) -> ContainersStorageSnapshotter:
        """The layer podman describes as ``GraphDriver`` (``{"Name": "overlay", "Data":
        {"UpperDir": ..., "LowerDir": "a:b", "WorkDir": ...}}``).

        Raises:
            NotCheckpointable: Another storage driver than overlay (vfs, btrfs...).
        """
        data = graph.get("Data") or {}
        if graph.get("Name") != "overlay" or not data.get("UpperDir"):
            raise NotCheckpointable(
                f"podman container {what!r} is stored by containers/storage's "
                f"{graph.get('Name')!r} driver; cedana captures the changes of the overlay "
                'driver (storage.conf: driver = "overlay")'
            )
        lower = tuple(p for p in str(data.get("LowerDir") or "").split(":") if p)
        return cls(Path(str(data["UpperDir"])), lower, data.get("WorkDir"))

    def check_mounted_at(self, rootfs: Path, *, what: str) -> None:
        """Check that the overlay mounted at ``rootfs`` (container ``what``'s root) writes
        into this layer, and keep its layers as mounted (the short ``l/`` links).

        Raises:
            NotCheckpointable: It is another filesystem, or another layer.
        """
        live = OverlayLayers.writing_into(rootfs, self.upper)
        if live is None:
            raise NotCheckpointable(
                f"the root filesystem of podman container {what!r} ({rootfs}) is not its "
                f"containers/storage layer {self.upper}"
            )
        # podman mounts the image's layers through their short links (overlay/l/...):
        # record the layer directories themselves, which restore can check and mount.
        self._layers = attrs.evolve(live, lower=tuple(os.path.realpath(p) for p in live.lower))

    def layers(self) -> OverlayLayers:
        """The layer's overlay layers: as mounted once checked, else as podman said."""
        if self._layers is None:
            return OverlayLayers(lower=self.lower, upper=os.fspath(self.upper), work=self.work)
        return self._layers

    def layers_json(self) -> dict[str, Any]:
        """The image's layers (and ``userxattr``), as the manifest records them."""
        return layers_json(self.layers())

    def capture(self, rootfs: Path, dest: Path) -> RootfsDiff:
        """Write the layer's changes as ``dest/rootfs-diff.tar`` (the overlay format)."""
        diff = OverlaySnapshotter(self.layers()).capture(rootfs, dest)
        return attrs.evolve(diff, snapshotter=self.name, format=self.format)

    def prepare(self) -> Path:
        """Check that the layer (made by podman, not yet mounted) is there and empty.

        containers/storage creates layers itself (``podman create``, ``restore
        --import``); cedana does not write its layer database.

        Raises:
            NotCheckpointable: The layer's diff directory is missing or not empty.
        """
        if not self.upper.is_dir() or any(self.upper.iterdir()):
            raise NotCheckpointable(
                f"containers/storage layer {self.upper} is missing or not fresh; let podman "
                "create the container first"
            )
        return self.upper

    def apply(self, diff: Path) -> RootfsDiff:
        """Apply ``diff/rootfs-diff.tar`` to the layer's diff directory (not yet mounted)."""
        result = OverlaySnapshotter().apply(diff, self.upper, userxattr=self.layers().userxattr)
        return attrs.evolve(result, snapshotter=self.name, format=self.format)

    def remove(self) -> None:
        """Empty the layer again; the layer itself is podman's to remove (``podman rm``)."""
        if self.upper.is_dir():
            for child in self.upper.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


def _lower_children(lower: Sequence[str], directory: str) -> set[str]:
    """The names in ``directory`` (relative) of the image's layers; unreadable ones skipped."""
    names: set[str] = set()
    for layer in lower:
        path = os.path.join(layer, directory)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            names.update(os.listdir(path))
        except OSError:
            continue
    return names


def to_podman_diff(diff: Path, dest: Path, *, lower: Sequence[str] = ()) -> list[str]:
    """Convert the overlay diff ``diff/rootfs-diff.tar`` into podman's layout in ``dest``.

    ``dest/rootfs-diff.tar`` gets the new and changed entries (overlay's own
    attributes dropped), ``dest/deleted.files`` the deleted paths: each whiteout,
    and for a directory replaced as a whole (opaque) the image's entries in it
    (read from ``lower``, the image's layers) that the new one does not have.
    podman untars the first over the container's new root, then removes the second.
    The input's names were checked when the artifact was opened and are checked
    again here (no absolute paths, no ``..``).

    Returns:
        The deleted paths written.
    """
    deleted: list[str] = []
    opaque: list[str] = []
    present: set[str] = set()
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (
        tarfile.open(diff / DIFF_NAME, "r:") as src,
        tarfile.open(dest / DIFF_NAME, "w:", format=tarfile.PAX_FORMAT) as out,
    ):
        for info in src:
            name = os.path.normpath(info.name).lstrip("/")
            if name.startswith("..") or os.path.isabs(info.name.lstrip("./") or "."):
                raise NotCheckpointable(f"rootfs diff entry {info.name!r} leaves the root")
            if info.ischr() and info.devmajor == 0 and info.devminor == 0:
                deleted.append("/" + name)
                continue
            if name != "." and any(info.pax_headers.get(k) == "y" for k in _OPAQUE_KEYS):
                opaque.append(name)
            info.pax_headers = {
                k: v for k, v in info.pax_headers.items() if not k.startswith(_OVERLAY_PAX)
            }
            present.add(name)
            out.addfile(info, src.extractfile(info) if info.isreg() else None)
    for directory in opaque:
        for child in sorted(_lower_children(lower, directory)):
            if os.path.join(directory, child) not in present:
                deleted.append(f"/{directory}/{child}")
    (dest / DELETED_FILES).write_text(json.dumps(deleted))
    return deleted
