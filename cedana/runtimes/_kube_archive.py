"""The archives Kubernetes' checkpoint API makes (KEP-2008): CRI-O's and containerd's
flavours of the family :mod:`._criu_archive` reads, and cedana's checkpoints written as
either.

The kubelet asks the CRI runtime for a checkpoint archive (``CheckpointContainer`` with a
location); each runtime writes an uncompressed tar of the family's layout (read in their
sources: CRI-O's ``internal/lib/checkpoint.go``, containerd's
``internal/cri/server/container_checkpoint_linux.go``, checkpointctl's ``lib``):

CRI-O (``kubernetes``)
    ``checkpoint/``, ``config.dump`` (checkpointctl's ContainerConfig: ``id``, ``name``,
    ``rootfsImage``, ``rootfsImageRef`` (the image's id in containers/storage),
    ``rootfsImageName``, ``runtime``, ``createdTime``, ``checkpointedTime``,
    ``restoredTime``, ``restored``), ``spec.dump`` (annotated ``io.container.manager:
    cri-o``, ``io.kubernetes.cri-o.Metadata`` with the container's name,
    ``io.kubernetes.cri-o.Annotations`` with the CRI annotations, which CRI-O's restore
    reads), ``rootfs-diff.tar`` + ``deleted.files`` (podman's form), ``bind.mounts`` (each
    bind mount's source, destination, ``file_type`` and ``permissions``, so a restore can
    make a missing source of the right type), ``stats-dump`` and ``dump.log`` (CRIU's, at
    the top: CRIU's work directory), the container's log as ``io.kubernetes.cri-o.LogPath``.
containerd
    ``checkpoint/``, ``config.dump`` (the same ContainerConfig, ``rootfsImageRef`` the
    image's digest), ``spec.dump``, ``status.dump`` (the CRI ``ContainerStatus`` as JSON,
    which containerd's restore requires), ``status`` (containerd's own record: pid,
    times), ``rootfs-diff.tar`` (the rw snapshot's diff as a gzip OCI layer,
    :mod:`cedana.rootfs.oci_layer`), ``container.log``, ``stats-dump``, ``dump.log``.

Read: CRI-O's archive is on containers/storage, the store podman shares, so it is presented
as podman's archive is (:func:`._podman_archive.podman_manifest`, the image's layers found
in this host's podman store by ``rootfsImageRef``) and restores into podman or runc.
containerd's is presented as a containerd container checkpoint (the image by its name in
the target containerd, the OCI layer converted to overlay's form on restore) and restores
into containerd.

Written (:func:`export_archive`): from any cedana container checkpoint (runc, containerd,
podman, docker), the layout above with what the checkpoint knows: cedana's checkpoints hold
no container log, so there is none (as the runtimes do when the log file is gone).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from cedana.artifact.manifest import Manifest
from cedana.artifact.signing import KeySource, Trust
from cedana.checkpoint import Checkpoint
from cedana.container.runc import CONFIG_MEMBER as RUNC_CONFIG_MEMBER
from cedana.container.runc import CONTAINER_DIR
from cedana.errors import ArtifactExists, ContainerError, NotCheckpointable
from cedana.rootfs import OVERLAY, RootfsDiff, diff_format
from cedana.rootfs.containers_storage import PODMAN_FORMAT, to_podman_diff
from cedana.rootfs.oci_layer import OCI_LAYER_FORMAT, to_oci_layer
from cedana.rootfs.overlay import DIFF_NAME
from cedana.runtimes._containerd_api import SPEC_TYPE
from cedana.runtimes._criu_archive import (
    CONFIG_MEMBER,
    DIFF_MEMBER,
    FILES,
    SPEC_MEMBER,
    Flavour,
    Scan,
    register_flavour,
    write_archive,
)
from cedana.runtimes._podman_archive import podman_manifest
from cedana.runtimes._podman_layout import CEDANA_FILES
from cedana.staging import scratch_dir

__all__ = ["CONTAINERD_ARCHIVE", "CRIO_ARCHIVE", "KubeFormat", "export_archive"]

logger = logging.getLogger("cedana.runtimes")

KubeFormat = Literal["kubernetes", "containerd"]

#: CRI-O's name for the container's log in its archive (its ``LogPath`` annotation's key).
CRIO_LOG = "io.kubernetes.cri-o.LogPath"
#: The mounts CRI-O makes afresh and leaves out of ``bind.mounts`` (libpod's list).
_CONTAINER_MOUNTS = frozenset(
    {"/dev", "/dev/shm", "/proc", "/run", "/run/.containerenv", "/run/secrets", "/sys"}
)
_ZERO_TIME = "0001-01-01T00:00:00Z"
#: containerd's runc shim, the runtime its archives name.
RUNC_SHIM = "io.containerd.runc.v2"
#: CRI's ContainerState CONTAINER_RUNNING.
_RUNNING = 1


def _manager(scan: Scan) -> object:
    return scan.annotations.get("io.container.manager")


def _crio_manifest(path: Path, scan: Scan) -> Manifest:
    config = scan.json(CONFIG_MEMBER, dict)
    ref = str(config.get("rootfsImageRef") or "").removeprefix("sha256:")
    libpod = {
        "id": config.get("id"),
        "name": config.get("name"),
        "rootfsImageID": ref or None,
        "rootfsImageName": config.get("rootfsImageName") or config.get("rootfsImage"),
        "RawImageName": config.get("rootfsImage"),
        "createdTime": config.get("createdTime"),
        "runtime": config.get("runtime"),
    }
    return podman_manifest(
        path,
        scan,
        config={k: v for k, v in libpod.items() if v is not None},
        made_by="a CRI-O (Kubernetes) checkpoint archive",
        source="kubernetes",
    )


def _containerd_manifest(path: Path, scan: Scan) -> Manifest:
    from cedana.runtimes.containerd import CONTAINERD

    config = scan.json(CONFIG_MEMBER, dict)
    spec = scan.json(SPEC_MEMBER, dict)
    status = scan.json(FILES["status.dump"], dict)
    process = spec.get("process") if isinstance(spec.get("process"), dict) else {}
    annotations = scan.annotations
    metadata = status.get("metadata") if isinstance(status.get("metadata"), dict) else {}
    name = str(
        annotations.get("io.kubernetes.cri.container-name")
        or metadata.get("name")
        or config.get("name")
        or ""
    )
    diff = scan.diff or RootfsDiff(snapshotter="archive")
    created, host = scan.made("a containerd (Kubernetes) checkpoint archive")
    return Manifest(
        created=created,
        host=host,
        kind="container",
        runtime=CONTAINERD,
        options={},
        tree=scan.tree(),
        workload={
            "container": {
                "id": str(config.get("id") or ""),
                "runtime": CONTAINERD,
                "root": "",
                "bundle": "",
                "rootfs": "",
                "status": "checkpointed by containerd (Kubernetes)",
                "config": SPEC_MEMBER,
                "descriptors": scan.json("descriptors.json", list, b"[]"),
                "terminal": bool(process.get("terminal")),
                "cgroup_paths": {},
                "ext_unix_sk": False,
            },
            "containerd": {
                "id": str(config.get("id") or ""),
                "name": name,
                "namespace": "k8s.io",  # the CRI plugin's; restore(namespace=...) for another
                "image": {
                    "name": config.get("rootfsImageName") or config.get("rootfsImage"),
                    "digest": config.get("rootfsImageRef"),
                },
                "snapshotter": "overlayfs",
                "snapshot_key": str(config.get("id") or ""),
                "runtime": {"name": _containerd_runtime(path, config)},
                "spec_type": SPEC_TYPE,
                "labels": {},
                "spec": SPEC_MEMBER,
                "export": {"compression": scan.compression, "flavour": "containerd"},
            },
            "rootfs": {
                "captured": DIFF_MEMBER in {m.name for m in scan.members},
                "snapshotter": "archive",
                "format": OCI_LAYER_FORMAT,
                "dir": CONTAINER_DIR,
                "userxattr": False,
                "diff": {**diff.to_json(), "format": OCI_LAYER_FORMAT, "members": [DIFF_NAME]},
            },
        },
        members=scan.members,
    )


def _containerd_runtime(path: Path, config: Mapping[str, Any]) -> str:
    """containerd's runtime of the archive: its runc shim (``runc`` for cedana's own)."""
    runtime = str(config.get("runtime") or RUNC_SHIM)
    if runtime == "runc":
        return RUNC_SHIM
    if runtime not in ("io.containerd.runc.v1", RUNC_SHIM):
        raise NotCheckpointable(
            f"checkpoint archive {path} was made by containerd's runtime {runtime!r}; "
            "cedana restores checkpoints of containers run by runc (io.containerd.runc.v2)"
        )
    return runtime


_CRIU_FILES = frozenset({"stats-dump", "stats-restore", "dump.log", "restore.log"})

#: CRI-O's flavour (what the kubelet gets from a CRI-O node).
CRIO_ARCHIVE = register_flavour(
    Flavour(
        name="Kubernetes checkpoint archive (CRI-O)",
        engine="CRI-O",
        files=frozenset({"config.dump", "spec.dump", "rootfs-diff.tar", "deleted.files"})
        | {"bind.mounts"},
        unused=_CRIU_FILES | {CRIO_LOG},
        claims=lambda scan: _manager(scan) == "cri-o",
        manifest=_crio_manifest,
    )
)
#: containerd's flavour (what the kubelet gets from a containerd node).
CONTAINERD_ARCHIVE = register_flavour(
    Flavour(
        name="Kubernetes checkpoint archive (containerd)",
        engine="containerd",
        files=frozenset({"config.dump", "spec.dump", "rootfs-diff.tar", "status.dump"}),
        unused=_CRIU_FILES | {"status", "container.log"},
        claims=lambda scan: "status.dump" in scan.names and _manager(scan) is None,
        manifest=_containerd_manifest,
    )
)


# --- writing cedana's checkpoints as such archives -----------------------------------------


def _image_facts(manifest: Manifest) -> tuple[str, str]:
    """The checkpointed container's image: its name and its id (containers/storage's for
    podman, docker's image id, containerd's digest), empty when the runtime has none."""
    w = manifest.workload
    for key, ident in (("podman", "id"), ("docker", "id"), ("containerd", "digest")):
        image = (w.get(key) or {}).get("image")
        if isinstance(image, Mapping):
            return str(image.get("name") or ""), str(image.get(ident) or "")
    return "", ""


def _rfc3339(value: object) -> str:
    text = str(value or "")
    return text if text else _ZERO_TIME


def _bind_mounts(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """CRI-O's ``bind.mounts``: each bind mount's source and whether it is a file (looked
    at on this host; a directory when it is not here)."""
    out = []
    for m in spec.get("mounts") or ():
        if not isinstance(m, Mapping) or m.get("type") != "bind":
            continue
        if m.get("destination") in _CONTAINER_MOUNTS:
            continue
        source = str(m.get("source") or "")
        try:
            st = os.stat(source)
            kind = "directory" if os.path.isdir(source) else "file"
            perm = st.st_mode & 0o777
        except OSError:
            kind, perm = "directory", 0o755
        out.append(
            {
                "source": source,
                "destination": str(m.get("destination") or ""),
                "file_type": kind,
                "permissions": perm,
            }
        )
    return out


def _annotated(
    spec: dict[str, Any], fmt: KubeFormat, *, name: str, cid: str, created: str
) -> dict[str, Any]:
    """``spec`` with the annotations the engine's readers look for (``checkpointctl``'s
    container name and engine; CRI-O's restore reads ``io.kubernetes.cri-o.Annotations``);
    those the container already has are kept."""
    annotations = {
        str(k): str(v) for k, v in (spec.get("annotations") or {}).items() if isinstance(k, str)
    }
    annotations.pop("io.container.manager", None)  # the engine is the archive's
    if fmt == "kubernetes":
        plain = {k: v for k, v in annotations.items() if not k.startswith("io.kubernetes.cri-o.")}
        annotations["io.container.manager"] = "cri-o"
        annotations.setdefault(
            "io.kubernetes.cri-o.Metadata", json.dumps({"name": name}, separators=(",", ":"))
        )
        annotations.setdefault("io.kubernetes.cri-o.Annotations", json.dumps(plain))
        annotations.setdefault("io.kubernetes.cri-o.Created", created)
        annotations.setdefault("io.kubernetes.cri-o.ContainerID", cid)
        annotations.setdefault("io.kubernetes.cri-o.Name", name)
        annotations.setdefault("io.kubernetes.container.name", name)
    else:
        annotations.setdefault("io.kubernetes.cri.container-name", name)
        annotations.setdefault("io.kubernetes.cri.container-type", "container")
    return {**spec, "annotations": annotations}


def _ns(stamp: str) -> int:
    try:
        when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0
    return int(when.timestamp() * 1_000_000_000)


def export_archive(
    checkpoint: Checkpoint | str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    format: KubeFormat = "kubernetes",
    name: str | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    trust: Trust = "trusted",
    trusted_keys: Iterable[KeySource] | None = None,
) -> Path:
    """Write the container checkpoint ``checkpoint`` as the archive a Kubernetes node's
    runtime makes: CRI-O's (``format="kubernetes"``) or containerd's (``"containerd"``),
    the container named ``name`` (default: the checkpointed one's name).

    Returns:
        ``dest``: an uncompressed tar (files 0600), as the kubelet keeps them.

    Raises:
        ArtifactExists: ``dest`` exists.
        ContainerError: The checkpoint is not of a container, or its rootfs changes are in
            a form these archives cannot carry.
        UntrustedArtifact: As for a restore.
    """
    target = Path(dest)
    if target.exists():
        raise ArtifactExists(f"{target} already exists; choose another path or remove it")
    ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
    manifest = ckpt.manifest
    if manifest.kind != "container":
        raise ContainerError(
            f"{ckpt.path} holds a {manifest.kind} checkpoint, not one of a container, which "
            f"is what a {format} checkpoint archive holds; checkpoint a container (runc:ID, "
            "containerd:ID, podman:NAME, docker:NAME)"
        )
    info = manifest.workload["container"]
    rootfs_info = manifest.workload.get("rootfs") or {}
    form = diff_format(rootfs_info) if rootfs_info.get("captured") else None
    if form not in (None, OVERLAY, PODMAN_FORMAT):
        raise ContainerError(
            f"{ckpt.path} holds rootfs changes in the {form!r} format, which a {format} "
            "archive cannot carry"
        )
    members = {m.name for m in manifest.members}
    spec_member = str(info.get("config") or RUNC_CONFIG_MEMBER)
    if spec_member not in members:
        spec_member = RUNC_CONFIG_MEMBER
    spec = json.loads(ckpt.read_member(spec_member))
    ctd = manifest.workload.get("containerd") or {}
    pod = manifest.workload.get("podman") or {}
    docker = manifest.workload.get("docker") or {}
    name = name or str(
        pod.get("name") or docker.get("name") or ctd.get("id") or info.get("id") or ""
    )
    cid = str(info.get("id") or name)
    image_name, image_ref = _image_facts(manifest)
    created = manifest.created
    with scratch_dir(".cedana-export-", parent=work_dir, fills="CRIU's images") as work:
        images, top = work / "images", work / "top"
        ckpt.extract(images)
        top.mkdir(mode=0o700)
        diff_dir = images / str(rootfs_info.get("dir") or CONTAINER_DIR)
        if form == OVERLAY and format == "kubernetes":
            to_podman_diff(diff_dir, top, lower=list(rootfs_info.get("lower") or ()))
        elif form == OVERLAY:
            to_oci_layer(diff_dir, top / DIFF_NAME)
        elif form == PODMAN_FORMAT and format == "kubernetes":
            for part in (DIFF_NAME, "deleted.files"):
                if (diff_dir / part).is_file():
                    shutil.copyfile(diff_dir / part, top / part)
        elif form == PODMAN_FORMAT:
            raise ContainerError(
                f"{ckpt.path} holds podman's form of the rootfs changes (new files and a "
                "list of deleted ones), which containerd's archive (an OCI layer) cannot "
                "carry without the image's layers; export it --format kubernetes"
            )
        created_time = _rfc3339(pod.get("config", {}).get("createdTime") or created)
        config = {
            "id": cid,
            "name": name,
            "rootfsImage": image_name,
            "rootfsImageRef": image_ref,
            "rootfsImageName": image_name,
            "runtime": "runc" if format == "kubernetes" else RUNC_SHIM,
            "createdTime": created_time,
            "checkpointedTime": _rfc3339(created),
            "restoredTime": _ZERO_TIME,
            "restored": False,
        }
        spec = _annotated(spec, format, name=name, cid=cid, created=created)
        _write_json(top / "config.dump", config)
        _write_json(top / "spec.dump", spec)
        for criu_file in ("stats-dump", "dump.log"):
            if (images / criu_file).is_file():
                shutil.copyfile(images / criu_file, top / criu_file)
        if format == "kubernetes":
            binds = _bind_mounts(spec)
            if binds:
                _write_json(top / "bind.mounts", binds)
        else:
            pid = manifest.tree[0].pid if manifest.tree else 0
            _write_json(
                top / "status.dump",
                {
                    "id": cid,
                    "metadata": {"name": name},
                    "state": _RUNNING,
                    "created_at": _ns(created_time),
                    "started_at": _ns(created_time),
                    "image": {"image": image_name},
                    "image_ref": image_ref,
                    "annotations": spec["annotations"],
                    "labels": dict(ctd.get("labels") or {}),
                },
            )
            _write_json(
                top / "status",
                {"Pid": pid, "CreatedAt": _ns(created_time), "StartedAt": 0},
            )
        write_archive(
            work / "archive.tar",
            images=images,
            top=top,
            exclude=frozenset({*CEDANA_FILES, "stats-dump", "dump.log"}),
        )
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb") as out, open(work / "archive.tar", "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        except BaseException:
            target.unlink(missing_ok=True)  # no partial archive under the name
            raise
    logger.debug("exported %s as a %s archive %s", ckpt.path, format, target)
    return target


def _write_json(path: Path, value: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as f:
        json.dump(value, f, indent=2)
