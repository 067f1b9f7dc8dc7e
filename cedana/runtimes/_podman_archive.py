"""podman's own checkpoint archives (``podman container checkpoint --export``), read as
cedana artifacts: podman's flavour of the family :mod:`._criu_archive` reads.

podman exports a container's checkpoint as a tar of its ``userdata`` directory
(libpod's ``exportCheckpoint``), zstd-compressed by default (``--compress zstd``,
``gzip`` or ``none``): ``config.dump`` (libpod's ContainerConfig) and ``spec.dump``
(both mandatory), ``checkpoint/`` (CRIU's images), ``rootfs-diff.tar`` and
``deleted.files``, ``devshm-checkpoint.tar`` and ``network.status`` (optional),
``volumes/<name>.tar`` (refused: cedana restores no volumes yet), ``stats-dump``,
``ctr.log`` and ``artifacts/`` (not used). Its spec says ``io.container.manager:
libpod`` (older podmans: none, and a config.dump with libpod's ``rootfsImageID``).

It is presented as a manifest (kind ``container``, runtime ``podman``, the checked fields
of ``config.dump``, the processes from CRIU's ``pstree.img``) over members under cedana's
names (:mod:`._criu_archive`): the rootfs changes in ``container/`` (diff format
:data:`~cedana.rootfs.containers_storage.PODMAN_FORMAT`). Restore then runs as for
cedana's own podman checkpoints, with the same confinement.

The image's layers are looked up in this host's podman store by the image id that
``config.dump`` names (``podman image inspect``), never taken from the archive, and
recorded with their identity, so a restore into runc mounts those very layers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from cedana.artifact.manifest import Manifest
from cedana.errors import CedanaError, NotCheckpointable, UnsafeArtifact
from cedana.rootfs import RootfsDiff
from cedana.rootfs.containers_storage import PODMAN_FORMAT, podman_diff_paths
from cedana.rootfs.overlay import layer_identity
from cedana.runtimes._criu_archive import (
    CONFIG_MEMBER,
    DELETED_MEMBER,
    DIFF_MEMBER,
    SPEC_MEMBER,
    Flavour,
    Scan,
    damaged,
    refused,
    register_flavour,
)

__all__ = ["PODMAN_ARCHIVE", "deleted_paths", "podman_manifest"]

logger = logging.getLogger("cedana.podman")

_MAX_DELETED = 100_000


def _image_layers(image_id: str) -> tuple[list[str], list[str]]:
    """The layer directories of image ``image_id`` in this host's podman store (uppermost
    first) and their identities; empty when podman or the image is not there."""
    from cedana.runtimes._podman_layout import image_layers
    from cedana.runtimes.podman import PodmanCLI

    if not image_id:
        return [], []
    try:
        record = PodmanCLI().image(image_id)
    except CedanaError as exc:
        logger.debug("podman image inspect %s: %s", image_id, exc)
        return [], []
    if record is None or record.get("Id") != image_id:
        return [], []
    layers = [os.path.realpath(p) for p in image_layers(record)]
    try:
        return layers, [layer_identity(p) for p in layers]
    except OSError as exc:
        logger.debug("image %s's layers cannot be read: %s", image_id, exc)
        return [], []


def deleted_paths(scan: Scan) -> list[str]:
    """``deleted.files``'s paths, each checked to stay inside the root ([] without one).

    Raises:
        ArtifactCorrupt, UnsafeArtifact: It is not a list of such paths.
    """
    if DELETED_MEMBER not in scan.held:
        return []
    deleted: list[str] = scan.json(DELETED_MEMBER, list, b"[]")
    if len(deleted) > _MAX_DELETED or not all(isinstance(d, str) for d in deleted):
        raise damaged(scan.path, "its deleted.files is not a list of paths")
    for d in deleted:
        try:
            podman_diff_paths(d)
        except UnsafeArtifact:
            raise refused(scan.path, "deleted.files", f"names {d!r}, outside the root") from None
    return deleted


def podman_manifest(
    path: Path, scan: Scan, *, config: Mapping[str, Any], made_by: str, source: str
) -> Manifest:
    """An archive on containers/storage (podman's, or CRI-O's that shares its store)
    presented as a podman container checkpoint: ``config`` is its ContainerConfig in
    libpod's names, ``made_by`` the engine (for the manifest's unknown host facts),
    ``source`` the archive's flavour (recorded as ``podman.export.flavour``)."""
    from cedana.runtimes._podman_layout import checked_config
    from cedana.runtimes.podman import DEFAULT_RUNC_ROOT, PODMAN

    spec = scan.json(SPEC_MEMBER, dict)
    runtime = config.get("runtime") or "runc"
    if runtime != "runc" and not str(runtime).endswith("/runc"):
        raise NotCheckpointable(
            f"checkpoint archive {path} was made by the OCI runtime {runtime!r}; "
            "cedana restores checkpoints of containers run by runc"
        )
    deleted = deleted_paths(scan)
    descriptors = scan.json("descriptors.json", list, b"[]")
    process = spec.get("process") if isinstance(spec.get("process"), dict) else {}
    root = spec.get("root") if isinstance(spec.get("root"), dict) else {}
    fields = checked_config(config)
    image_id = str(fields.get("rootfsImageID") or "")
    lower, identities = _image_layers(image_id)
    diff = scan.diff or RootfsDiff(snapshotter="containers-storage")
    diff = attrs.evolve(
        diff,
        snapshotter="containers-storage",
        format=PODMAN_FORMAT,
        whiteouts=len(deleted),
        members=tuple(
            m.removeprefix("container/")
            for m in (DIFF_MEMBER, DELETED_MEMBER)
            if m in {x.name for x in scan.members}
        ),
    )
    created, host = scan.made(made_by)
    return Manifest(
        created=created,
        host=host,
        kind="container",
        runtime=PODMAN,
        options={},
        tree=scan.tree(),
        workload={
            "container": {
                "id": str(fields.get("id") or ""),
                "runtime": PODMAN,
                "root": os.fspath(DEFAULT_RUNC_ROOT),
                "bundle": str(config.get("staticDir") or ""),
                "rootfs": str(root.get("path") or ""),
                "status": f"checkpointed by {made_by}",
                "config": SPEC_MEMBER,
                "descriptors": descriptors,
                "terminal": bool(process.get("terminal")),
                "cgroup_paths": {},
                "ext_unix_sk": False,
            },
            "podman": {
                "id": fields.get("id"),
                "name": fields.get("name"),
                "image": {
                    "name": fields.get("rootfsImageName"),
                    "id": fields.get("rootfsImageID"),
                    "digest": None,
                },
                "config": fields,
                "export": {"compression": scan.compression, "flavour": source},
            },
            "rootfs": {
                "captured": True,
                "snapshotter": "containers-storage",
                "format": PODMAN_FORMAT,
                "dir": "container",
                "lower": lower,
                "lower_identity": identities,
                "userxattr": False,
                "image": image_id,
                "diff": diff.to_json(),
            },
        },
        members=scan.members,
    )


def _claims(scan: Scan) -> bool:
    manager = scan.annotations.get("io.container.manager")
    if manager is not None:
        return bool(manager == "libpod")
    config = scan.json(CONFIG_MEMBER, dict)
    return "status.dump" not in scan.names and "rootfsImageID" in config


def _manifest(path: Path, scan: Scan) -> Manifest:
    return podman_manifest(
        path,
        scan,
        config=scan.json(CONFIG_MEMBER, dict),
        made_by="a podman export",
        source="podman",
    )


#: podman's flavour of the family.
PODMAN_ARCHIVE = register_flavour(
    Flavour(
        name="podman checkpoint export",
        engine="podman",
        files=frozenset(
            {"config.dump", "spec.dump", "rootfs-diff.tar", "deleted.files"}
            | {"devshm-checkpoint.tar", "network.status"}
        ),
        unused=frozenset({"stats-dump", "stats-restore", "ctr.log", "dump.log", "restore.log"}),
        unused_dirs=frozenset({"artifacts"}),
        claims=_claims,
        manifest=_manifest,
    )
)
