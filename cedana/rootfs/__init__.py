"""Snapshotters: a container's root filesystem changes, captured and put back.

A container runs on a root filesystem made of read-only image layers plus one
writable layer holding what the container changed. A checkpoint carries only
those changes; restore puts them on the same image layers again. One small
interface, :class:`Snapshotter`, does that for every store, with one module per
store (``overlay`` first: the overlay upper directory is also what containerd's
overlayfs snapshotter, containers/storage and docker's overlay2 keep, so their
modules reuse it and add only how to find and create a layer in their store).

The changes travel as member files of the artifact (``container/rootfs-diff.tar``
for overlay), described by a :class:`RootfsDiff` recorded in the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs

from cedana.units import human_bytes

__all__ = ["RootfsDiff", "Snapshotter", "snapshotter_for"]


@attrs.frozen(kw_only=True)
class RootfsDiff:
    """What a snapshotter captured (or applied): its member files and a count of entries.

    Attributes:
        snapshotter: The snapshotter's name (``"overlay"``).
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
    """Captures a container's root filesystem changes and applies them to a new layer.

    ``capture`` runs while the container is frozen (from CRIU's post-dump
    callback), so what it reads is consistent with the process images.
    """

    name: str

    def layers_json(self) -> dict[str, Any]:
        """The layers below the writable one, as the manifest's ``rootfs`` entry records
        them for restore to find again (overlay: ``lower`` and ``userxattr``)."""
        ...

    def capture(self, rootfs: Path, dest: Path) -> RootfsDiff:
        """Write the changes of the root filesystem mounted at ``rootfs`` into directory ``dest``.

        Returns:
            What was captured; ``members`` name the files written into ``dest``.
        """
        ...

    def apply(self, diff: Path, target: Path) -> RootfsDiff:
        """Apply the members in directory ``diff`` (from :meth:`capture`) to ``target``.

        ``target`` is a fresh writable layer (an empty overlay upper directory),
        not yet mounted. Entries that would land outside ``target`` are refused
        with :class:`~cedana.errors.UnsafeArtifact`.
        """
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
