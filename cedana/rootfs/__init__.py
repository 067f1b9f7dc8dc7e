"""Snapshotters: a container's root filesystem changes, captured and put back.

A container runs on a root filesystem made of read-only image layers plus one
writable layer holding what the container changed. A checkpoint carries only
those changes; restore puts them on the same image layers again. One small
interface, :class:`Snapshotter`, does that for every store, with one module per
store (``overlay`` first: the overlay upper directory is also what containerd's
overlayfs snapshotter, containers/storage and docker's overlay2 keep, so their
modules reuse it and add only how to find and create a layer in their store).

The changes travel as member files of the artifact (``container/rootfs-diff.tar``
for overlay), described by a :class:`RootfsDiff` recorded in the manifest. The
manifest records the diff's *format* (``"overlay"``: an overlay upper
directory's tar, whiteouts and opaque directories included) apart from the
*store* it came from (``"overlay"`` for a plain overlay mount, ``"containerd"``
for a containerd snapshot...), so a layer that restores decides whether it can
apply a diff from its format alone (:func:`diff_format`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from cedana.units import human_bytes

if TYPE_CHECKING:
    from cedana.rootfs.idmap import IdShift

__all__ = ["OVERLAY", "RootfsDiff", "Snapshotter", "diff_format", "snapshotter_for"]

#: The diff format of an overlay upper directory written as a tar (whiteouts as 0:0
#: character devices, overlay's tree attributes as pax xattrs).
OVERLAY = "overlay"

#: Artifacts written before the format was recorded named only the store, in the field
#: ``snapshotter``; these are the stores those cedanas had, and the format each wrote.
_FORMAT_OF_OLD_STORE = {"overlay": OVERLAY, "containerd": OVERLAY}


def diff_format(entry: Mapping[str, Any]) -> str | None:
    """The diff format of a manifest's ``rootfs`` entry (or of a diff's record).

    Read from ``format``; for an artifact that predates it, from the store it names
    (``snapshotter``). None when neither says.
    """
    recorded = entry.get("format")
    if isinstance(recorded, str) and recorded:
        return recorded
    return _FORMAT_OF_OLD_STORE.get(str(entry.get("snapshotter")))


@attrs.frozen(kw_only=True)
class RootfsDiff:
    """What a snapshotter captured (or applied): its member files and a count of entries.

    Attributes:
        snapshotter: The store it came from or went to (``"overlay"``, ``"containerd"``).
        format: The diff's format (``"overlay"``); when a record predates it, the format
            its store wrote (:func:`diff_format`), or empty if unknown.
        members: The member files, relative to the directory they were written to.
        files: Regular files (new or modified), hard links excluded.
        directories: Directories (new, or holding changes).
        symlinks: Symbolic links.
        hardlinks: Extra names of files already counted.
        whiteouts: Deleted image files and directories.
        opaque: Directories whose image content is hidden (replaced as a whole).
        special: FIFOs and device nodes other than whiteouts.
        bytes: Content bytes of the regular files.
        skipped: Entries that cannot be carried (sockets), by path.
    """

    snapshotter: str
    format: str = attrs.field(
        default=attrs.Factory(
            lambda self: diff_format({"snapshotter": self.snapshotter}) or "", takes_self=True
        )
    )
    members: tuple[str, ...] = ()
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    whiteouts: int = 0
    opaque: int = 0
    special: int = 0
    bytes: int = 0
    skipped: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (what the manifest records)."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RootfsDiff:
        """Read a :meth:`to_json` dict back; unknown keys are ignored."""
        names = {f.name for f in attrs.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for key in ("members", "skipped"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def describe(self) -> str:
        """One line for people: ``3 files (1.2 KiB), 1 deleted, 2 dirs, ...``."""
        parts = [f"{self.files} files ({human_bytes(self.bytes)})"]
        for count, what in (
            (self.whiteouts, "deleted"),
            (self.directories, "dirs"),
            (self.opaque, "opaque dirs"),
            (self.symlinks, "symlinks"),
            (self.hardlinks, "hard links"),
            (self.special, "special files"),
            (len(self.skipped), "skipped sockets"),
        ):
            if count:
                parts.append(f"{count} {what}")
        return ", ".join(parts)


class Snapshotter(Protocol):
    """One store's writable layer: captures a container's changes, or receives them.

    Its two halves:

    - **capture** (checkpoint): :meth:`layers_json` says which layers lie below the
      writable one, :meth:`capture` writes the changes. ``capture`` runs while the
      container is frozen (from CRIU's post-dump callback), so what it reads is
      consistent with the process images.
    - **restore**: :meth:`prepare` makes a new writable layer on the store,
      :meth:`apply` writes the changes into it (before anything mounts it), and
      :meth:`remove` takes it away again when the restore fails after ``prepare``.

    Attributes:
        name: The store (recorded as the ``rootfs`` entry's ``snapshotter``).
        format: The diff format it writes and applies (:data:`OVERLAY`).
    """

    name: str
    format: str

    def layers_json(self) -> dict[str, Any]:
        """The layers below the writable one, as the manifest's ``rootfs`` entry records
        them for restore to find again (overlay: ``lower`` and ``userxattr``)."""
        ...

    def capture(self, rootfs: Path, dest: Path, *, shift: IdShift | None = None) -> RootfsDiff:
        """Write the changes of the root filesystem mounted at ``rootfs`` into directory ``dest``;
        with ``shift`` (a container's user namespace mappings) owners are recorded as the
        container sees them.

        Returns:
            What was captured; ``members`` name the files written into ``dest``.
        """
        ...

    def prepare(self) -> object:
        """Make the new, empty writable layer on the store; what the store says of it
        (containerd: its mounts) is returned for the runtime to use."""
        ...

    def apply(self, diff: Path) -> RootfsDiff:
        """Apply the members in directory ``diff`` (from :meth:`capture`) to the layer
        :meth:`prepare` made, not yet mounted. (The stores' own ``apply`` also takes
        ``shift=``, the new container's mappings, for owners recorded as a container saw
        them.)

        Entries that would land outside the layer are refused with
        :class:`~cedana.errors.UnsafeArtifact`.
        """
        ...

    def remove(self) -> None:
        """Remove the layer :meth:`prepare` made (a failed restore's cleanup)."""
        ...


def snapshotter_for(rootfs: str | os.PathLike[str]) -> Snapshotter | None:
    """The snapshotter able to capture the root filesystem at ``rootfs``, or None.

    None means the root filesystem has no writable layer to capture (a plain
    directory, or an overlay without an upper directory).
    """
    from cedana.rootfs.overlay import OverlayLayers, OverlaySnapshotter

    layers = OverlayLayers.of(Path(rootfs))
    if layers is None or layers.upper is None:
        return None
    return OverlaySnapshotter(layers)
