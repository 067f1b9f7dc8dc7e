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
into that layout, so podman's ``container restore --import`` can take it, and
:func:`from_podman_diff` converts podman's layout (from an archive podman exported,
recorded as the diff format :data:`PODMAN_FORMAT`) into an overlay diff, which every
restore path applies with its checks.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from cedana.errors import NotCheckpointable, UnsafeArtifact
from cedana.rootfs import OVERLAY, RootfsDiff
from cedana.rootfs.overlay import DIFF_NAME, OverlayLayers, OverlaySnapshotter, layers_json

__all__ = [
    "DELETED_FILES",
    "PODMAN_FORMAT",
    "ContainersStorageSnapshotter",
    "from_podman_diff",
    "podman_diff_paths",
    "to_podman_diff",
]

#: podman's list of deleted paths beside its ``rootfs-diff.tar``.
DELETED_FILES = "deleted.files"
#: The diff format of podman's own archives: ``rootfs-diff.tar`` (new and changed
#: entries, no whiteouts) plus ``deleted.files``; both members optional.
PODMAN_FORMAT = "podman"

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


def podman_diff_paths(name: str) -> tuple[str, ...]:
    """The components of a path in podman's diff (a tar entry or a deleted path), which
    must stay inside the root: leading ``/`` and ``./`` are dropped, ``..`` is refused.

    Raises:
        UnsafeArtifact: The path climbs out of the root.
    """
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts or "\0" in name:
        raise UnsafeArtifact(
            f"the checkpoint's rootfs changes name {name!r}, which leaves the root "
            "filesystem, so nothing was restored; do not use this checkpoint"
        )
    return parts


def _lower_dir(lower: Sequence[str], parts: tuple[str, ...]) -> os.stat_result | None:
    """The uppermost image layer's directory ``parts`` (None if the image has none)."""
    for layer in lower:
        try:
            st = os.lstat(os.path.join(layer, *parts))
        except OSError:
            continue
        return st if stat.S_ISDIR(st.st_mode) else None
    return None


def from_podman_diff(src: Path, dest: Path, *, lower: Sequence[str] = ()) -> Path:
    """Convert podman's diff in ``src`` (``rootfs-diff.tar`` and ``deleted.files``, each
    optional) into an overlay diff, ``dest/rootfs-diff.tar``; returns ``dest``.

    podman applies its tar and then removes the deleted paths, so a directory that
    was removed and made again loses its new content (podman 4.3 lists such a
    directory as deleted and its new files as added). The overlay diff says what the
    container saw: a deleted path with new entries below it becomes an opaque
    directory, any other a whiteout, and the tar's entries follow. Parent
    directories the tar leaves out are written with the attributes they have in the
    image's layers ``lower`` (uppermost first), so that the overlay shows them as
    they were. overlay's own attributes in podman's tar are dropped. Every entry is
    checked again when the diff is applied.

    Raises:
        UnsafeArtifact: A name leaves the root.
    """
    deleted_raw: list[str] = []
    if (src / DELETED_FILES).is_file():
        deleted_raw = json.loads((src / DELETED_FILES).read_text() or "[]") or []
    tar_path = src / DIFF_NAME
    names: dict[tuple[str, ...], bool] = {}  # entry -> it is a directory
    if tar_path.is_file():
        with tarfile.open(tar_path, "r:") as tar:
            for info in tar:
                names[podman_diff_paths(info.name)] = info.isdir()
    below = {parts[:i] for parts in names for i in range(1, len(parts))}
    deleted = sorted({podman_diff_paths(str(d)) for d in deleted_raw} - {()})
    replaced = [d for d in deleted if d in names or d in below]
    gone: list[tuple[str, ...]] = []
    for d in deleted:
        if d in replaced or any(d[: len(o)] == o for o in [*gone, *replaced] if o != d):
            continue
        gone.append(d)
    new_dirs = set(replaced)  # below these the image's content is hidden

    def image_dir(parts: tuple[str, ...]) -> os.stat_result | None:
        if any(parts[:i] in new_dirs for i in range(1, len(parts))):
            return None
        return _lower_dir(lower, parts)

    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    emitted: set[tuple[str, ...]] = set()
    with tarfile.open(dest / DIFF_NAME, "w:", format=tarfile.PAX_FORMAT) as out:

        def directory(parts: tuple[str, ...], like: tarfile.TarInfo | None = None) -> None:
            info = like or tarfile.TarInfo()
            info.name, info.type = "/".join(parts), tarfile.DIRTYPE
            if like is None:
                st = image_dir(parts)
                info.mode = stat.S_IMODE(st.st_mode) if st else 0o755
                info.uid, info.gid = (st.st_uid, st.st_gid) if st else (0, 0)
                info.mtime = int(st.st_mtime) if st else 0
            if parts in new_dirs:
                info.pax_headers = {**info.pax_headers, _OPAQUE_KEYS[0]: "y"}
            out.addfile(info)
            emitted.add(parts)

        def parents(parts: tuple[str, ...]) -> None:
            for i in range(1, len(parts)):
                if parts[:i] not in emitted and not names.get(parts[:i]):
                    directory(parts[:i])

        # The root first, as the image has it: overlay shows the upper directory's own
        # mode, which CRIU checks against the one it dumped (c/storage gives a
        # container's layer the mode of the image's top layer).
        root = _lower_dir(lower[:1], ())
        info = tarfile.TarInfo(".")
        info.type, info.mode = tarfile.DIRTYPE, stat.S_IMODE(root.st_mode) if root else 0o555
        info.uid, info.gid = (root.st_uid, root.st_gid) if root else (0, 0)
        info.mtime = int(root.st_mtime) if root else 0
        out.addfile(info)
        for parts in replaced:
            if not names.get(parts):
                parents(parts)
                directory(parts)
        for parts in gone:
            parents(parts)
            info = tarfile.TarInfo("/".join(parts))
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 0, 0
            out.addfile(info)
            emitted.add(parts)
        if tar_path.is_file():
            with tarfile.open(tar_path, "r:") as tar:
                for info in tar:
                    parts = podman_diff_paths(info.name)
                    if not parts or parts in emitted:
                        continue
                    parents(parts)
                    info.pax_headers = {
                        k: v for k, v in info.pax_headers.items() if not k.startswith(_OVERLAY_PAX)
                    }
                    if info.islnk():
                        info.linkname = "/".join(podman_diff_paths(info.linkname))
                    if info.isdir():
                        directory(parts, info)
                        continue
                    info.name = "/".join(parts)
                    out.addfile(info, tar.extractfile(info) if info.isreg() else None)
                    emitted.add(parts)
    return dest
