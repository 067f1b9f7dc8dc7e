"""The containerd snapshotter against a fake Snapshots service; no containerd, no root.

The "snapshots" are plain directories: the fake answers ``Mounts`` and ``Prepare``
with overlay options naming them, as containerd's overlayfs snapshotter does.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path

import attrs
import pytest

from cedana.errors import NotCheckpointable
from cedana.rootfs import Snapshotter
from cedana.rootfs.containerd import ContainerdSnapshotter, Mount, overlay_layers
from cedana.rootfs.overlay import DIFF_NAME, OverlaySnapshotter


class FakeSnapshots:
    """Snapshots as directories under ``root``: ``root/KEY/fs`` and ``root/KEY/work``."""

    def __init__(self, root: Path, *, kind: str = "overlay"):
        self.root = root
        self.kind = kind
        self.parents: dict[str, str] = {}
        self.removed: list[str] = []

    def _mounts(self, key: str) -> list[Mount]:
        if self.kind != "overlay":
            return [Mount(type="bind", source=str(self.root / key / "fs"), options=("rbind",))]
        return [
            Mount(
                type="overlay",
                source="overlay",
                options=(
                    "index=off",
                    f"workdir={self.root / key / 'work'}",
                    f"upperdir={self.root / key / 'fs'}",
                    f"lowerdir={self.root / 'image' / 'fs'}",
                ),
            )
        ]

    def snapshot_mounts(self, snapshotter: str, key: str) -> list[Mount]:
        assert snapshotter == "overlayfs"
        return self._mounts(key)

    def prepare_snapshot(
        self, snapshotter: str, key: str, parent: str, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        for d in ("fs", "work"):
            (self.root / key / d).mkdir(parents=True)
        self.parents[key] = parent
        return self._mounts(key)

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        self.removed.append(key)


def test_it_is_a_snapshotter(tmp_path: Path) -> None:
    """ContainerdSnapshotter implements the rootfs Snapshotter protocol, named containerd."""
    snap: Snapshotter = ContainerdSnapshotter(FakeSnapshots(tmp_path), "overlayfs", "c1")
    assert snap.name == "containerd"
    for snapshotter in (ContainerdSnapshotter, OverlaySnapshotter):
        for method in ("layers_json", "capture", "prepare", "apply", "remove"):  # the Protocol's
            want = list(inspect.signature(getattr(Snapshotter, method)).parameters)
            have = list(inspect.signature(getattr(snapshotter, method)).parameters)
            assert have[: len(want)] == want, (snapshotter.__name__, method, have)


def test_capture_then_apply_to_a_new_snapshot(tmp_path: Path) -> None:
    """The container's upper directory, found through Mounts, is captured as the overlay
    tar; applied to a snapshot made with Prepare on the image's chain id, it gives the
    same files, modes and symlinks."""
    store = FakeSnapshots(tmp_path / "snapshots")
    upper = tmp_path / "snapshots" / "c1" / "fs"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "motd").write_text("hello\n")
    os.chmod(upper / "etc" / "motd", 0o600)
    (upper / "tmp").mkdir()
    (upper / "tmp" / "link").symlink_to("/etc/motd")
    (tmp_path / "snapshots" / "c1" / "work").mkdir()

    source = ContainerdSnapshotter(store, "overlayfs", "c1")
    assert source.upper() == upper
    assert source.layers().lower == (str(tmp_path / "snapshots" / "image" / "fs"),)
    out = tmp_path / "out"
    diff = source.capture(tmp_path / "merged-unused", out)
    assert diff.snapshotter == "containerd"
    assert diff.members == (DIFF_NAME,) and (out / DIFF_NAME).is_file()
    assert (diff.files, diff.symlinks, diff.directories) == (1, 1, 2)

    target = ContainerdSnapshotter(store, "overlayfs", "c2")
    mounts = target.prepare("sha256:chain")
    assert store.parents == {"c2": "sha256:chain"}
    assert overlay_layers(mounts) == target.layers()
    applied = target.apply(out)
    assert applied.snapshotter == "containerd" and applied.files == 1
    new = tmp_path / "snapshots" / "c2" / "fs"
    assert (new / "etc" / "motd").read_text() == "hello\n"
    assert (new / "etc" / "motd").stat().st_mode & 0o777 == 0o600
    assert os.readlink(new / "tmp" / "link") == "/etc/motd"


def test_not_an_overlay_snapshot(tmp_path: Path) -> None:
    """A snapshot that does not mount as an overlay with an upper directory (the native
    snapshotter's bind mounts) is refused, naming the snapshotter; one that Prepare made
    so is removed again."""
    store = FakeSnapshots(tmp_path, kind="bind")
    with pytest.raises(NotCheckpointable, match="'overlayfs'.*bind"):
        ContainerdSnapshotter(store, "overlayfs", "c1").layers()
    with pytest.raises(NotCheckpointable, match="not a writable overlay"):
        ContainerdSnapshotter(store, "overlayfs", "c2").prepare("sha256:chain")
    assert store.removed == ["c2"]


def test_overlay_layers_of_mounts() -> None:
    """Only a single overlay mount with an upper directory counts as a writable snapshot."""
    rw = Mount(
        type="overlay", source="overlay", options=("upperdir=/u", "workdir=/w", "lowerdir=/a:/b")
    )
    ro = Mount(type="overlay", source="overlay", options=("lowerdir=/a:/b",))
    layers = overlay_layers([rw])
    assert layers is not None and layers.lower == ("/a", "/b") and layers.upper == "/u"
    assert overlay_layers([ro]) is None
    assert overlay_layers([rw, rw]) is None
    assert overlay_layers([]) is None


def test_diff_format_is_recorded_apart_from_the_store() -> None:
    """Both stores write the overlay format; a record from before the format was recorded
    (the store's name only, as ``snapshotter``) reads as the format that store wrote, and
    an unknown store as no known format."""
    from cedana.rootfs import OVERLAY, RootfsDiff, diff_format

    assert attrs.fields(ContainerdSnapshotter).format.default == OVERLAY
    assert diff_format({"snapshotter": "containerd", "format": "overlay"}) == OVERLAY
    assert diff_format({"snapshotter": "containerd"}) == OVERLAY
    assert diff_format({"snapshotter": "overlay"}) == OVERLAY
    assert diff_format({"snapshotter": "zfs"}) is None
    assert diff_format({"snapshotter": "overlay", "format": "zfs-send"}) == "zfs-send"
    old = RootfsDiff.from_json({"snapshotter": "containerd", "files": 1})
    assert (old.snapshotter, old.format, old.files) == ("containerd", OVERLAY, 1)
    assert RootfsDiff.from_json(old.to_json()) == old
