"""The bundles a runc restore makes: root-only directories, the writable layer prepared and
the checkpoint's changes applied to it, the overlay mounted as ``rootfs``, the new
``config.json``, and the marker that lets :meth:`~cedana.RuncContainer.delete` remove them."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from cedana.container import cgroups
from cedana.container.mounts import is_bind
from cedana.errors import ContainerError, ContainerExists, UnsafeArtifact
from cedana.rootfs import RootfsDiff
from cedana.rootfs.idmap import IdShift
from cedana.rootfs.mounts import is_mountpoint, mountinfo, umount
from cedana.rootfs.overlay import OverlayLayers, OverlaySnapshotter

__all__ = [
    "BUNDLE_MARKER",
    "DEFAULT_BUNDLES",
    "MadeBundle",
    "bundle_config",
    "check_new_bundle",
    "load_config",
    "make_overlay_bundle",
    "private_dir",
    "write_private",
]

logger = logging.getLogger("cedana.runc")

#: Where restore makes bundles unless given ``bundle=``.
DEFAULT_BUNDLES = Path("/var/lib/cedana/bundles")

#: Marks a bundle restore made, so :meth:`~cedana.RuncContainer.delete` may remove it.
BUNDLE_MARKER = "cedana-bundle.json"


def load_config(bundle: Path) -> tuple[bytes, dict[str, Any]]:
    """The bundle's ``config.json``, as bytes and parsed."""
    try:
        raw = (bundle / "config.json").read_bytes()
        config: dict[str, Any] = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise ContainerError(f"cannot read {bundle}/config.json: {exc}") from exc
    return raw, config


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


def check_new_bundle(bundle: Path) -> None:
    if bundle.is_symlink() or (bundle.exists() and (not bundle.is_dir() or any(bundle.iterdir()))):
        raise ContainerExists(
            f"bundle directory {bundle} exists and is not empty (left by an earlier restore? "
            "delete that container with cedana, or remove the directory); or pass another bundle= "
            "(--bundle)"
        )


@attrs.define
class MadeBundle:
    """A bundle restore made: removed (overlay unmounted first) if restore fails."""

    path: Path
    created: bool

    def remove(self) -> None:
        # The overlay at rootfs, and what a restore mounted beside it (a /dev/shm tmpfs).
        below = [
            Path(m.mountpoint) for m in mountinfo() if m.mountpoint.startswith(f"{self.path}/")
        ]
        for mounted in sorted(set(below), key=lambda p: -len(str(p))):
            with contextlib.suppress(OSError):
                while is_mountpoint(mounted):
                    umount(mounted, detach=True)
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            for child in list(self.path.iterdir()) if self.path.is_dir() else []:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


def bundle_config(raw: bytes, *, original_bundle: str, old_id: str, name: str) -> dict[str, Any]:
    """The checkpoint's config.json for a new bundle: rootfs ``rootfs``, absolute bind sources.

    Raises:
        UnsafeArtifact: ``raw`` is not an OCI config.
    """
    try:
        config: dict[str, Any] = json.loads(raw)
        config["root"] = {**(config.get("root") or {}), "path": "rootfs"}
        for m in config.get("mounts") or []:
            source = m.get("source")
            if is_bind(m) and source and not os.path.isabs(source):
                m["source"] = os.path.join(original_bundle, source)
        linux = config.get("linux") or {}
        if linux.get("cgroupsPath"):
            linux["cgroupsPath"] = cgroups.rename_path(str(linux["cgroupsPath"]), old_id, name)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnsafeArtifact(
            f"the checkpoint's config.json is not an OCI config ({exc}), so nothing was "
            "restored; do not use this checkpoint"
        ) from None
    return config


def private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) root-only: a restored root filesystem holds
    setuid files and file capabilities that no other user of the host may reach."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
    os.chmod(path, 0o700)


def _check_binds_in(bundle: Path, config: Mapping[str, Any]) -> None:
    """Bind sources in the new bundle, now that it holds the artifact's files.

    Confinement let them through by their names, before the bundle existed; runc follows
    every symlink of a source on the host, so a link of the diff (or of an image layer,
    seen through ``rootfs``) on the way would bind whatever host path it names. Each must
    still lead inside the bundle.

    Raises:
        UnsafeArtifact: One leads outside it.
    """
    names = {os.path.normpath(os.path.abspath(bundle)), os.path.realpath(bundle)}

    def inside(path: str) -> bool:
        return any(path == n or path.startswith(n.rstrip("/") + "/") for n in names)

    for i, m in enumerate(config.get("mounts") or []):
        source = str(m.get("source") or "")
        if not is_bind(m) or not os.path.isabs(source) or not inside(os.path.normpath(source)):
            continue  # not in the bundle: a granted source, checked as the caller's
        real = os.path.realpath(source)
        if not inside(real):
            raise UnsafeArtifact(
                f"the checkpoint's config.json field mounts[{i}] ({m.get('destination')}) "
                f"bind-mounts {source!r}, which leads to {real} on the host through a "
                "symlink of the checkpoint's files, so nothing was restored; do not use "
                "this checkpoint"
            )


def make_overlay_bundle(
    bundle: Path,
    diff_dir: Path,
    config: Mapping[str, Any],
    lower: tuple[str, ...],
    *,
    name: str,
    userxattr: bool,
    shift: IdShift | None = None,
) -> MadeBundle:
    """A new bundle: config.json, upper (the changes applied), work, rootfs (the overlay).

    The writable layer is an overlay store's (:class:`~cedana.rootfs.overlay.OverlaySnapshotter`:
    prepared, then the changes applied to it). Every directory is root-only (0700), the
    bundle first: the upper directory holds the container's files, setuid ones included
    (moby's CVE-2021-41091). ``shift`` (the container's user namespace mappings) stores
    owners a diff records as a container saw them under host ids.
    """
    made = MadeBundle(bundle, created=not bundle.exists())
    with contextlib.ExitStack() as undo:
        undo.callback(made.remove)
        private_dir(bundle)
        rootfs = bundle / "rootfs"
        store = OverlaySnapshotter(
            OverlayLayers(
                lower=lower,
                upper=os.fspath(bundle / "upper"),
                work=os.fspath(bundle / "work"),
                userxattr=userxattr,
            )
        )
        layers = store.prepare()
        assert isinstance(layers, OverlayLayers)
        undo.callback(store.remove)
        rootfs.mkdir(mode=0o700)
        applied: RootfsDiff = store.apply(diff_dir, shift=shift)
        logger.debug("bundle %s: rootfs changes applied: %s", bundle, applied.describe())
        fd = os.open(
            bundle / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        with open(fd, "w") as f:
            f.write(json.dumps(config, indent=2))
        layers.mount(rootfs)
        _check_binds_in(bundle, config)
        (bundle / BUNDLE_MARKER).write_text(
            json.dumps({"container": name, "overlay": "rootfs", "lower": list(layers.lower)})
        )
        undo.pop_all()
    return made
