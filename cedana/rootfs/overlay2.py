"""Docker's overlay2 graph driver: a container's writable layer, captured and filled in.

Docker keeps each container's root filesystem as overlay2 layers under its data
root: the image's layers, the container's ``-init`` layer (``/etc/hosts`` and
the like) and on top the container's own layer, whose ``diff`` directory is the
overlay's upper directory: what the container changed. The daemon reports all
of them in the container's inspect record (``GraphDriver.Data``: ``UpperDir``,
``LowerDir`` uppermost first, ``WorkDir``, ``MergedDir``), so this module reads
them from there, never from docker's private layer database, and reuses the
overlay snapshotter's capture and apply (:mod:`cedana.rootfs.overlay`): the
member written is the same ``rootfs-diff.tar`` in the ``"overlay"`` format.

To restore, docker itself makes the new container's layer when the container
is created (``POST /containers/create``); :meth:`Overlay2Snapshotter.prepare`
checks that it is the fresh, empty layer of a container not yet started, and
:meth:`~Overlay2Snapshotter.apply` fills it before docker mounts it at start.
The layer belongs to the container: removing the container removes it, so
:meth:`~Overlay2Snapshotter.remove` has nothing of its own to remove.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs

from cedana.errors import ContainerError, NotCheckpointable
from cedana.rootfs import OVERLAY, RootfsDiff
from cedana.rootfs.idmap import IdShift
from cedana.rootfs.overlay import DIFF_NAME, OverlayLayers, OverlaySnapshotter, layers_json

__all__ = ["OVERLAY2", "Overlay2Snapshotter"]

#: The store's name (docker's graph driver), recorded as the rootfs entry's ``snapshotter``.
OVERLAY2 = "overlay2"


@attrs.define(eq=False)
class Overlay2Snapshotter:
    """One docker container's overlay2 layer.

    Implements :class:`cedana.rootfs.Snapshotter`.

    Args:
        layers: The container's overlay: ``GraphDriver.Data`` of its inspect record.
        merged: Where docker mounts it (``MergedDir``).
    """

    layers: OverlayLayers
    merged: str | None = None
    #: The member files a diff of this store consists of.
    diff_members: ClassVar[tuple[str, ...]] = (DIFF_NAME,)
    name: str = attrs.field(default=OVERLAY2, init=False)
    format: str = attrs.field(default=OVERLAY, init=False)

    @classmethod
    def of(cls, inspect: Mapping[str, Any], *, what: str) -> Overlay2Snapshotter:
        """The snapshotter of the container whose inspect record is ``inspect``.

        Raises:
            NotCheckpointable: The container's graph driver is not overlay2.
        """
        driver = inspect.get("GraphDriver") or {}
        data = driver.get("Data") or {}
        if driver.get("Name") != OVERLAY2 or not data.get("UpperDir"):
            raise NotCheckpointable(
                f"docker container {what!r} keeps its files with graph driver "
                f"{driver.get('Name')!r}; cedana captures the changes of overlay2 containers "
                "(dockerd --storage-driver overlay2, docker's default)"
            )
        lower = tuple(p for p in str(data.get("LowerDir") or "").split(":") if p)
        return cls(
            OverlayLayers(
                lower=lower, upper=str(data["UpperDir"]), work=data.get("WorkDir") or None
            ),
            merged=data.get("MergedDir") or None,
        )

    def upper(self) -> Path:
        """The layer's upper directory (``.../overlay2/<mount-id>/diff``)."""
        assert self.layers.upper is not None  # of() requires one
        return Path(self.layers.upper)

    def check_mounted_at(self, rootfs: Path, *, what: str) -> None:
        """Check that the overlay mounted at ``rootfs`` (container ``what``'s root) writes
        into this layer.

        Raises:
            NotCheckpointable: It is another filesystem, or another layer.
        """
        if OverlayLayers.writing_into(rootfs, self.upper()) is None:
            raise NotCheckpointable(
                f"the root filesystem of docker container {what!r} ({rootfs}) is not the "
                f"overlay2 layer docker reports ({self.upper()})"
            )

    # --- capture ----------------------------------------------------------------

    def layers_json(self) -> dict[str, Any]:
        """The lower layers (image layers and the ``-init`` layer, each with its identity)."""
        return layers_json(self.layers)

    def capture(self, rootfs: Path, dest: Path, *, shift: IdShift | None = None) -> RootfsDiff:
        """Write the layer's changes as ``dest/rootfs-diff.tar``.

        Args:
            rootfs: The container's mounted root filesystem, read for files
                whose upper copy holds only metadata.
            dest: The directory to write into (made if missing).
        """
        diff = OverlaySnapshotter(self.layers).capture(rootfs, dest, shift=shift)
        return attrs.evolve(diff, snapshotter=self.name, format=self.format)

    # --- restore ----------------------------------------------------------------

    def prepare(self) -> OverlayLayers:
        """Check the layer docker made at create: empty and not mounted; its layers.

        Raises:
            ContainerError: The layer is missing, mounted, or holds files already.
        """
        upper = self.upper()
        if not upper.is_dir() or any(upper.iterdir()):
            what = "not empty" if upper.is_dir() else "missing"
            raise ContainerError(
                f"docker's new layer {upper} is {what}; "
                "the checkpoint's changes apply only to the fresh layer of a new container"
            )
        if self.merged and os.path.ismount(self.merged):
            raise ContainerError(
                f"docker's new layer is mounted at {self.merged} already (the container "
                "started?); the changes apply before it starts"
            )
        return self.layers

    def apply(self, diff: Path, *, shift: IdShift | None = None) -> RootfsDiff:
        """Apply ``diff/rootfs-diff.tar`` to the layer's upper directory, not yet mounted."""
        result = OverlaySnapshotter().apply(
            diff, self.upper(), userxattr=self.layers.userxattr, shift=shift
        )
        return attrs.evolve(result, snapshotter=self.name, format=self.format)

    def remove(self) -> None:
        """Nothing: the layer is docker's and goes with its container (removed by the
        runtime when a restore fails)."""
