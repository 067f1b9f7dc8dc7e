"""The containerd snapshotter: a container's writable snapshot, captured and filled in.

containerd keeps a container's root filesystem as a chain of snapshots in one
of its snapshotters: the image's layers, committed, and on top of them the
container's own *active* snapshot, named by the container's snapshot key.
With the ``overlayfs`` snapshotter, containerd answers ``Mounts(snapshotter,
key)`` with an overlay mount whose ``upperdir`` is that active snapshot: what
the container changed. This module asks containerd for those mounts (never
reading containerd's private databases) and reuses the overlay snapshotter's
capture and apply (:mod:`cedana.rootfs.overlay`), so the member written is the
same ``rootfs-diff.tar``.

To restore, :meth:`ContainerdSnapshotter.prepare` makes a new active snapshot
on the image's top layer (its *chain id*), and :meth:`apply` fills its upper
directory before anything mounts it.

containerd itself is reached through a :class:`SnapshotStore`: the runtime
layer passes its API client, unit tests a fake.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs

from cedana.errors import NotCheckpointable
from cedana.rootfs import OVERLAY, RootfsDiff
from cedana.rootfs.idmap import IdShift
from cedana.rootfs.overlay import DIFF_NAME, OverlayLayers, OverlaySnapshotter, layers_json

__all__ = ["ContainerdSnapshotter", "Mount", "SnapshotStore", "overlay_layers"]


@attrs.frozen(kw_only=True)
class Mount:
    """One mount as containerd describes it (``containerd.types.Mount``).

    Attributes:
        type: The filesystem type (``overlay``, ``bind``...).
        source: The mount source.
        options: The mount options, ``upperdir=...`` and the like for overlay.
    """

    type: str
    source: str
    options: tuple[str, ...] = ()


class SnapshotStore(Protocol):
    """The part of containerd's Snapshots service a snapshotter needs."""

    def snapshot_mounts(self, snapshotter: str, key: str) -> list[Mount]:
        """``Snapshots.Mounts``: how to mount the active snapshot ``key``."""
        ...

    def prepare_snapshot(
        self, snapshotter: str, key: str, parent: str, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """``Snapshots.Prepare``: a new active snapshot ``key`` on ``parent``; its mounts."""
        ...

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        """``Snapshots.Remove``."""
        ...


def overlay_layers(mounts: Sequence[Mount]) -> OverlayLayers | None:
    """The overlay layers of a snapshot's mounts; None unless it is one writable overlay.

    containerd's overlayfs snapshotter answers a snapshot with no parent with a
    bind mount of its directory; a container's snapshot always has the image
    below it, so only an overlay with an upper directory is accepted.
    """
    if len(mounts) != 1 or mounts[0].type != "overlay":
        return None
    layers = OverlayLayers.from_options(list(mounts[0].options))
    if layers.upper is None:
        return None
    return layers


@attrs.define(eq=False)
class ContainerdSnapshotter:
    """A containerd active snapshot: captures its changes, or receives them.

    Implements :class:`cedana.rootfs.Snapshotter` for one snapshot.

    Args:
        store: containerd's Snapshots service (the runtime's API client).
        snapshotter: containerd's snapshotter name (``overlayfs``).
        key: The active snapshot's key (the container's ``snapshot_key``).
    """

    store: SnapshotStore = attrs.field(repr=False)
    snapshotter: str
    key: str
    parent: str | None = None
    labels: Mapping[str, str] | None = attrs.field(default=None, repr=False)
    #: The member files a diff of this store consists of.
    diff_members: ClassVar[tuple[str, ...]] = (DIFF_NAME,)
    name: str = attrs.field(default="containerd", init=False)
    format: str = attrs.field(default=OVERLAY, init=False)
    _layers: OverlayLayers | None = attrs.field(default=None, init=False, repr=False)

    def layers(self) -> OverlayLayers:
        """The snapshot's overlay layers, as containerd mounts them (asked once).

        Raises:
            NotCheckpointable: The snapshot is not a writable overlay (another
                snapshotter than ``overlayfs``, or a view).
        """
        if self._layers is None:
            mounts = self.store.snapshot_mounts(self.snapshotter, self.key)
            layers = overlay_layers(mounts)
            if layers is None:
                kinds = ", ".join(m.type for m in mounts) or "no mounts"
                raise NotCheckpointable(
                    f"containerd snapshot {self.key!r} of snapshotter {self.snapshotter!r} "
                    f"mounts as {kinds}, not as an overlay with an upper directory; cedana "
                    "captures the changes of overlay snapshots (the overlayfs snapshotter)"
                )
            self._layers = layers
        return self._layers

    def check_mounted_at(self, rootfs: Path, *, what: str) -> None:
        """Check that the overlay mounted at ``rootfs`` (container ``what``'s root) writes
        into this snapshot.

        Raises:
            NotCheckpointable: It is another filesystem, or another snapshot.
        """
        live = OverlayLayers.of(rootfs)
        upper = self.layers().upper
        if live is None or os.path.realpath(str(live.upper)) != os.path.realpath(str(upper)):
            raise NotCheckpointable(
                f"the root filesystem of {what!r} ({rootfs}) is not containerd "
                f"snapshot {self.key!r} of {self.snapshotter!r}"
            )

    def upper(self) -> Path:
        """The snapshot's upper directory: the container's writable layer."""
        upper = self.layers().upper
        assert upper is not None  # layers() accepts only writable overlays
        return Path(upper)

    def layers_json(self) -> dict[str, Any]:
        """The snapshot's lower layers (and ``userxattr``), as the manifest records them."""
        return layers_json(self.layers())

    def capture(self, rootfs: Path, dest: Path, *, shift: IdShift | None = None) -> RootfsDiff:
        """Write the snapshot's changes as ``dest/rootfs-diff.tar``.

        Args:
            rootfs: The container's mounted root filesystem, read for files
                whose upper copy holds only metadata.
            dest: The directory to write into (made if missing).
        """
        diff = OverlaySnapshotter(self.layers()).capture(rootfs, dest, shift=shift)
        return attrs.evolve(diff, snapshotter=self.name, format=self.format)

    def prepare(
        self, parent: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Make the active snapshot ``key`` on ``parent`` (an image's chain id; the one
        given when it was made by default); its mounts.

        Raises:
            NotCheckpointable: containerd made something other than a writable overlay
                (the new snapshot is removed again).
        """
        parent = parent if parent is not None else self.parent
        if parent is None:
            raise ValueError("ContainerdSnapshotter.prepare needs the parent snapshot (chain id)")
        labels = labels if labels is not None else self.labels
        mounts = self.store.prepare_snapshot(self.snapshotter, self.key, parent, labels)
        layers = overlay_layers(mounts)
        if layers is None:
            self.remove()
            raise NotCheckpointable(
                f"containerd snapshotter {self.snapshotter!r} made snapshot {self.key!r} as "
                f"{', '.join(m.type for m in mounts) or 'no mounts'}, not a writable overlay"
            )
        self._layers = layers
        return mounts

    def apply(
        self, diff: Path, target: Path | None = None, *, shift: IdShift | None = None
    ) -> RootfsDiff:
        """Apply ``diff/rootfs-diff.tar`` to ``target``, the snapshot's upper directory by default.

        The snapshot must be fresh (just prepared) and not yet mounted.
        """
        where = target if target is not None else self.upper()
        result = OverlaySnapshotter().apply(
            diff, where, userxattr=self.layers().userxattr, shift=shift
        )
        return attrs.evolve(result, snapshotter=self.name, format=self.format)

    def remove(self) -> None:
        """Remove the snapshot from containerd."""
        self.store.remove_snapshot(self.snapshotter, self.key)
        self._layers = None
