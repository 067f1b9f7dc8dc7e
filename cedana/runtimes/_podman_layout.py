"""podman's checkpoint-import layout, as cedana writes it for ``podman container restore
--import``: the ``config.dump`` (libpod's ContainerConfig reduced to what a restore needs,
through an allow-list), the ``spec.dump`` (confined like any checkpoint's), ``checkpoint/``
with CRIU's images, ``rootfs-diff.tar`` and ``deleted.files`` (libpod's
``exportCheckpoint``, read in podman's source).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from cedana.container import RuncContainer, confine
from cedana.rootfs.containers_storage import to_podman_diff

__all__ = [
    "CEDANA_FILES",
    "DEVSHM_MEMBER",
    "DEVSHM_NAME",
    "PODMAN_MOUNTS",
    "PODMAN_UNMASKED",
    "checked_config",
    "checked_spec",
    "image_layers",
    "podman_config",
    "write_import",
]

#: The mounts podman makes afresh for every container it creates or restores (libpod's
#: setupContainer drops them from an imported spec): never taken from a checkpoint.
PODMAN_MOUNTS = frozenset(
    {
        "/dev/shm",
        "/etc/resolv.conf",
        "/etc/hostname",
        "/etc/hosts",
        "/run/.containerenv",
        "/run/secrets",
        "/var/run/.containerenv",
        "/var/run/secrets",
    }
)
#: The ContainerConfig fields cedana records and writes back into ``config.dump``, with
#: the type each must have (the artifact is untrusted: nothing else is passed to podman).
_CONFIG_FIELDS: Mapping[str, type | tuple[type, ...]] = {
    "id": str,
    "name": str,
    "RawImageName": str,
    "rootfsImageID": str,
    "rootfsImageName": str,
    "command": list,
    "entrypoint": list,
    "stopSignal": int,
    "stopTimeout": int,
    "createdTime": str,
    "umask": str,
    "passwd": bool,
    "shmSize": int,
    "createWorkingDir": bool,
    "CreateCommand": list,
}
#: What podman's default spec (containers/common) leaves open that runc's and containerd's
#: defaults close: a podman container restored into podman may have it, as podman gives it.
PODMAN_UNMASKED = ("/proc/asound",)

DEVSHM_NAME = "devshm-checkpoint.tar"
DEVSHM_MEMBER = RuncContainer.member(f"podman/{DEVSHM_NAME}")
#: cedana's own files beside CRIU's images in an unpacked artifact: not CRIU images.
CEDANA_FILES = ("manifest.json", "manifest.sig")


def checked_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded ContainerConfig fields, each of the type podman expects; others dropped.

    Raises:
        UnsafeArtifact: A field a restore uses has another type.
    """
    out: dict[str, Any] = {}
    for key, kind in _CONFIG_FIELDS.items():
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise confine.refused(
                f"manifest field podman.config.{key}",
                f"is a {type(value).__name__}, not a {getattr(kind, '__name__', kind)}",
                "do not use this checkpoint",
            )
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise confine.refused(
                f"manifest field podman.config.{key}",
                "is not a list of strings",
                "do not use this checkpoint",
            )
        out[key] = value
    return out


def checked_spec(
    raw: bytes,
    *,
    name: str,
    hooks: Mapping[str, Any] | None,
    grants: confine.Grants | None,
) -> dict[str, Any]:
    """The checkpointed spec for podman, confined: the mounts podman makes itself dropped,
    its root and cgroup left to podman, hooks and host-facing fields checked."""
    try:
        spec = json.loads(raw)
        spec["mounts"] = [
            m for m in spec.get("mounts") or () if m.get("destination") not in PODMAN_MOUNTS
        ]
        spec["root"] = {**(spec.get("root") or {}), "path": "rootfs"}
        linux = spec.get("linux")
        if isinstance(linux, dict):
            linux.pop("cgroupsPath", None)
    except (AttributeError, TypeError, ValueError) as exc:
        raise confine.refused(
            "spec", f"is not an OCI spec ({exc})", "do not use this checkpoint"
        ) from None
    given = grants or confine.Grants()
    podman_defaults = attrs.evolve(given, unmasked=given.unmasked | set(PODMAN_UNMASKED))
    return confine.check_config(
        spec, name=name, bundle=None, grants=podman_defaults, hooks=hooks, what="spec"
    )


def image_layers(image: Mapping[str, Any]) -> list[str]:
    """The image's layer directories, uppermost first (its ``GraphDriver``)."""
    data = (image.get("GraphDriver") or {}).get("Data") or {}
    layers = [str(data["UpperDir"])] if data.get("UpperDir") else []
    return layers + [p for p in str(data.get("LowerDir") or "").split(":") if p]


def podman_config(record: Mapping[str, Any]) -> dict[str, Any]:
    """libpod's ContainerConfig fields a restore needs, from ``podman container inspect``."""
    config = record.get("Config") or {}
    host = record.get("HostConfig") or {}
    entrypoint = config.get("Entrypoint")
    values = {
        "id": record.get("Id"),
        "name": record.get("Name"),
        "RawImageName": config.get("Image") or record.get("ImageName"),
        "rootfsImageID": record.get("Image"),
        "rootfsImageName": record.get("ImageName"),
        "command": config.get("Cmd"),
        "entrypoint": entrypoint.split() if isinstance(entrypoint, str) and entrypoint else None,
        "stopSignal": config.get("StopSignal"),
        "stopTimeout": config.get("StopTimeout"),
        "createdTime": record.get("Created"),
        "umask": config.get("Umask"),
        "passwd": config.get("Passwd"),
        "shmSize": host.get("ShmSize"),
        "createWorkingDir": True,
        "CreateCommand": config.get("CreateCommand"),
    }
    return {k: v for k, v in values.items() if v is not None}


def write_import(
    images: Path,
    archive: Path,
    *,
    config: Mapping[str, Any],
    spec: Mapping[str, Any],
    diff_dir: Path,
    lower: Sequence[str],
    exclude: Iterable[str] = (),
    extra: Mapping[str, Path] | None = None,
) -> None:
    """Write podman's checkpoint-import layout as the tar ``archive``.

    ``checkpoint/`` holds CRIU's images (every file of ``images`` but ``exclude``),
    ``config.dump`` libpod's ContainerConfig (``config`` with ``spec``, runtime runc),
    ``spec.dump`` the OCI spec, ``rootfs-diff.tar`` and ``deleted.files`` the rootfs
    changes in podman's form (:func:`~cedana.rootfs.containers_storage.to_podman_diff`);
    ``extra`` more files at the top (name -> file: ``devshm-checkpoint.tar``).
    """
    skip = set(exclude)
    layout = archive.parent / "import"
    layout.mkdir(mode=0o700)
    to_podman_diff(diff_dir, layout, lower=lower)
    (layout / "config.dump").write_text(json.dumps({**config, "spec": spec, "runtime": "runc"}))
    (layout / "spec.dump").write_text(json.dumps(spec))
    for member, source in (extra or {}).items():
        shutil.copyfile(source, layout / member)
    with tarfile.open(archive, "w:") as tar:
        for member in sorted(os.listdir(layout)):
            tar.add(layout / member, arcname=member)
        tar.add(images, arcname="checkpoint", recursive=False)
        for member in sorted(os.listdir(images)):
            if member not in skip and (images / member).is_file():
                tar.add(images / member, arcname=f"checkpoint/{member}")
    shutil.rmtree(layout, ignore_errors=True)
