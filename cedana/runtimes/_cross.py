"""Restoring one runtime's checkpoint into another: each runtime's two halves of it.

A source half (``describe_*``) reads its own manifest facts into the runtime-neutral
:class:`~cedana.container.portable.PortableContainer` (name, image, config without the
runtime's own mounts and hooks). A target half (``into_*``) makes that description into
the facts its own restore reads from its own checkpoints, with the target's equivalents
of the source runtime's mounts, and brings the image into its store
(:func:`cedana.runtimes._images.bring`); then the target's own restore runs on that view
of the artifact (:func:`cedana.container.portable.translated`), confining it as it
confines its own checkpoints. So N runtimes need N of each half, not N x N restores.
Each runtime names its halves in its registry entry (``describe``, ``adopt``); a restore
into plain runc reads the description in its plan (:mod:`cedana.container.restore`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from cedana import registry
from cedana.artifact.manifest import thaw
from cedana.artifact.signing import KeySource, Trust
from cedana.checkpoint import Checkpoint
from cedana.container import confine, namespaces, portable
from cedana.container.portable import ImageFacts, PortableContainer
from cedana.criu import CriuBackend
from cedana.errors import ContainerError
from cedana.runtimes._containerd_api import DEFAULT_ADDRESS
from cedana.runtimes._images import (
    ContainerdImages,
    DockerImages,
    Found,
    ImageStore,
    PodmanImages,
    RuncLayers,
    bring,
)


def _register_runc() -> None:
    """Plain runc's source half (its layers made an image), added to its registry entry
    here: the container layer it registers from knows no image store."""
    runc = registry.lookup("runc")
    if runc is not None and runc.describe is None:
        registry.register(attrs.evolve(runc, describe=describe_runc))


__all__ = [
    "describe",
    "describe_containerd",
    "describe_docker",
    "describe_podman",
    "into_containerd",
    "into_docker",
    "into_podman",
]

#: The derived member holding the config a target reads (the artifact's, translated).
DERIVED_CONFIG = "container/cedana-translated/config.json"
#: What podman's default spec leaves open that the others close (the container had it).
_PODMAN_UNMASKED = ("/proc/asound",)


# --- the source halves -------------------------------------------------------------------


def _section(ckpt: Checkpoint, key: str) -> dict[str, Any]:
    section = thaw(ckpt.manifest.workload.get(key) or {})
    return section if isinstance(section, dict) else {}


def describe_containerd(ckpt: Checkpoint) -> PortableContainer:
    """A containerd checkpoint's neutral description (image: name, chain id, namespace)."""
    ctd = _section(ckpt, "containerd")
    image = ctd.get("image") or {}
    info = _section(ckpt, "container")
    return portable.describe(
        ckpt,
        name=str(info.get("id") or ""),
        source="containerd",
        image=ImageFacts(
            name=str(image.get("name") or ""),
            chain_id=image.get("chain_id") or None,
            ids={"containerd": str(image.get("digest") or "")},
            source="containerd",
            namespace=str(ctd.get("namespace") or "default"),
        ),
    )


def describe_docker(ckpt: Checkpoint) -> PortableContainer:
    """A docker checkpoint's neutral description (image: name, id, chain id)."""
    docker = _section(ckpt, "docker")
    image = docker.get("image") or {}
    return portable.describe(
        ckpt,
        name=str(docker.get("name") or "").lstrip("/"),
        source="docker",
        image=ImageFacts(
            name=str(image.get("name") or image.get("id") or ""),
            chain_id=image.get("chain_id") or None,
            ids={"docker": str(image.get("id") or "")},
            source="docker",
        ),
    )


def describe_podman(ckpt: Checkpoint) -> PortableContainer:
    """A podman checkpoint's neutral description (image: name, id, chain id); what
    podman's defaults leave open (``/proc/asound``) goes with it."""
    pod = _section(ckpt, "podman")
    image = pod.get("image") or {}
    config = pod.get("config") or {}
    desc = portable.describe(
        ckpt,
        name=str(config.get("name") or pod.get("name") or ""),
        source="podman",
        image=ImageFacts(
            name=str(image.get("name") or config.get("rootfsImageName") or ""),
            chain_id=image.get("chain_id") or None,
            ids={"podman": str(image.get("id") or config.get("rootfsImageID") or "")},
            source="podman",
        ),
    )
    return attrs.evolve(desc, unmasked=_PODMAN_UNMASKED)


def describe_runc(ckpt: Checkpoint) -> PortableContainer:
    """A plain runc checkpoint's neutral description: runc has no image store, so its
    image is the overlay layers the container ran on (checked to be the recorded ones,
    as a restore into runc checks them), named after the container."""
    info = _section(ckpt, "container")
    rootfs = _section(ckpt, "rootfs")
    cid = str(info.get("id") or "")
    layers: tuple[str, ...] = ()
    if rootfs.get("captured"):
        layers = confine.check_lower(
            list(rootfs.get("lower") or ()), rootfs.get("lower_identity"), given=None
        )
    ref = "localhost/cedana-runc/" + (
        re.sub(r"[^a-z0-9._-]+", "-", cid.lower()).strip("-._") or "x"
    )
    return portable.describe(
        ckpt,
        name=cid,
        source="runc",
        image=ImageFacts(name=f"{ref}:checkpoint", chain_id=None, source="runc", layers=layers)
        if layers
        else None,
    )


def describe(ckpt: Checkpoint) -> PortableContainer:
    """The neutral description of ``ckpt``, by its runtime's ``describe``.

    Raises:
        ContainerError: Its runtime does not describe its checkpoints.
    """
    source = registry.lookup(ckpt.manifest.runtime)
    if ckpt.manifest.kind != "container" or source is None or source.describe is None:
        raise ContainerError(
            f"{ckpt.path} holds a {ckpt.manifest.runtime or ckpt.manifest.kind} checkpoint, "
            "which does not restore into another runtime"
        )
    desc: PortableContainer = source.describe(ckpt)
    return desc


def _source_store(
    image: ImageFacts, address: str | None, config: Mapping[str, Any]
) -> ImageStore | None:
    """The source runtime's store: at ``address`` (the caller's), else its default place;
    for plain runc, its layer directories."""
    if image.source == "runc":
        return RuncLayers(image.layers, config)
    if image.source == "docker":
        return DockerImages(address)
    if image.source == "podman":
        return PodmanImages()
    if image.source == "containerd":
        return ContainerdImages(address or DEFAULT_ADDRESS, image.namespace or "default")
    return None


def _image(
    desc: PortableContainer,
    target: ImageStore,
    source_address: str | None,
    work_dir: str | os.PathLike[str] | None,
) -> Found:
    if desc.image is None or not desc.image.name:
        raise ContainerError(
            f"{desc.checkpoint.path} records no image, so no runtime can make the container "
            "from it; restore it into runc"
        )
    source = _source_store(desc.image, source_address, desc.config)
    try:
        return bring(desc.image, target, source, work_dir=work_dir)
    finally:
        for store in (source, target):
            close = getattr(store, "close", None)
            if close is not None:
                close()


def _grants(
    grants: confine.Grants | None, desc: PortableContainer, files: Path | None
) -> confine.Grants:
    """The caller's grants, plus the files cedana made and what the source runtime's
    defaults left open (the container had them; its CRIU images still do)."""
    g = grants or confine.Grants()
    return attrs.evolve(
        g,
        binds=(*g.binds, *([os.fspath(files)] if files else [])),
        unmasked=g.unmasked | set(desc.unmasked),
    )


def _make_files(
    desc: PortableContainer, mounts: tuple[portable.RuntimeMount, ...], runtime: str, name: str
) -> Path | None:
    if not mounts:
        return None
    files = portable.new_files_dir(runtime, name)
    return portable.make_files(files, mounts, hostname=desc.hostname)


# --- the target halves -------------------------------------------------------------------


def into_containerd(
    checkpoint: Checkpoint | str | os.PathLike[str],
    *,
    name: str | None = None,
    namespace: str | None = None,
    address: str | None = None,
    source_address: str | None = None,
    log: str | os.PathLike[str] | None = None,
    tcp_established: bool | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    hooks: Mapping[str, Any] | None = None,
    grants: confine.Grants | None = None,
    backend: CriuBackend | None = None,
    trust: Trust = "trusted",
    trusted_keys: Iterable[KeySource] | None = None,
) -> Any:
    """Restore another runtime's checkpoint as a containerd container.

    The image comes into ``namespace`` from the source's store (at ``source_address``,
    else its default place) unless it is there; the source runtime's mounts become files
    of cedana's (under ``/var/lib/cedana/files``, removed with the container by
    :meth:`~cedana.ContainerdContainer.delete`); the rest is
    :meth:`cedana.ContainerdContainer.restore`'s, keywords and confinement included.
    """
    from cedana.runtimes._containerd_api import SPEC_TYPE
    from cedana.runtimes.containerd import ContainerdContainer

    ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
    desc = describe(ckpt)
    name = name or desc.name
    namespace = namespace or "default"
    address = address or DEFAULT_ADDRESS
    found = _image(desc, ContainerdImages(address, namespace), source_address, work_dir)
    files = _make_files(desc, desc.runtime_mounts, "containerd", name)
    try:
        spec = desc.config_for(portable.files_binds(desc.runtime_mounts, files) if files else [])
        spec.setdefault("linux", {})["cgroupsPath"] = f"/{namespace}/{name}"
        labels = {portable.FILES_LABEL: os.fspath(files)} if files else {}
        ctd = {
            "id": name,
            "namespace": namespace,
            "image": {"name": found.ref, "chain_id": found.chain_id},
            "snapshotter": "overlayfs",
            "snapshot_key": name,
            "runtime": {"name": "io.containerd.runc.v2", "options_type": "", "options": ""},
            "spec_type": SPEC_TYPE,
            "spec": DERIVED_CONFIG,
            "labels": labels,
        }
        workload = {
            **thaw(ckpt.manifest.workload),
            "container": {**_section(ckpt, "container"), "id": name},
            "containerd": ctd,
        }
        view = portable.translated(
            ckpt,
            runtime="containerd",
            workload=workload,
            derived={DERIVED_CONFIG: json.dumps(spec).encode()},
            after_extract=portable.drop_root_slavery,
        )
        return ContainerdContainer.restore(
            view,
            name=name,
            namespace=namespace,
            address=address,
            log=log,
            tcp_established=tcp_established,
            work_dir=work_dir,
            hooks=hooks,
            grants=_grants(grants, desc, files),
            backend=backend,
            trust=trust,
            trusted_keys=trusted_keys,
        )
    except BaseException:
        if files is not None:
            portable.remove_files(files)
        raise


#: What docker makes in every container it creates from a create config (IpcMode
#: shareable gives a /dev/shm of its own as a bind mount).
_DOCKER_MAKES = frozenset({"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/shm"})


def into_docker(
    checkpoint: Checkpoint | str | os.PathLike[str],
    *,
    name: str | None = None,
    address: str | None = None,
    source_address: str | None = None,
    tcp_established: bool | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    grants: confine.Grants | None = None,
    backend: CriuBackend | None = None,
    trust: Trust = "trusted",
    trusted_keys: Iterable[KeySource] | None = None,
) -> Any:
    """Restore another runtime's checkpoint as a container docker manages.

    The image comes into docker from the source's store (at ``source_address``, else its
    default place) unless it is there; the container is created from the config's
    process (command, environment, working directory, hostname), with no network of its
    own beyond its namespace (``NetworkMode: none``) and docker's own ``/etc/hosts``,
    ``/etc/hostname``, ``/etc/resolv.conf`` and ``/dev/shm``; other mounts of the source
    runtime become files of cedana's, bound in (removed with the container by
    :meth:`~cedana.DockerContainer.remove`). The rest is
    :meth:`cedana.DockerContainer.restore`'s, keywords and confinement included.
    """
    from cedana.runtimes.docker import DockerContainer

    ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
    desc = describe(ckpt)
    name = name or desc.name
    found = _image(desc, DockerImages(address), source_address, work_dir)
    others = tuple(m for m in desc.runtime_mounts if m.destination not in _DOCKER_MAKES)
    files = _make_files(desc, others, "docker", name)
    try:
        process = desc.process
        args = [str(a) for a in process.get("args") or []]
        linux = desc.config.get("linux") or {}
        private_net = namespaces.private_network(linux.get("namespaces") or [])
        config = {
            "Entrypoint": args[:1],
            "Cmd": args[1:],
            "Env": [str(e) for e in process.get("env") or []],
            "WorkingDir": str(process.get("cwd") or "/"),
            "Hostname": desc.hostname[:63],
            "Tty": False,
            "Labels": {portable.FILES_LABEL: os.fspath(files)} if files else {},
        }
        host_config: dict[str, Any] = {"NetworkMode": "none" if private_net else "host"}
        if desc.needs("/dev/shm"):
            host_config["IpcMode"] = "shareable"
        if files is not None:
            host_config["Binds"] = [
                f"{files / m.slot}:{m.destination}{':ro' if 'ro' in m.options else ''}"
                for m in others
            ]
        docker = {
            "name": name,
            "image": {"name": found.ref, "id": found.id},
            "config": config,
            "host_config": host_config,
        }
        view = portable.translated(
            ckpt,
            runtime="docker",
            workload={**thaw(ckpt.manifest.workload), "docker": docker},
            after_extract=portable.drop_root_slavery,
        )
        return DockerContainer.restore(
            view,
            name=name,
            address=address,
            tcp_established=tcp_established,
            work_dir=work_dir,
            grants=_grants(grants, desc, files),
            backend=backend,
            trust=trust,
            trusted_keys=trusted_keys,
        )
    except BaseException:
        if files is not None:
            portable.remove_files(files)
        raise


#: What podman makes for a container without a network of its own (no resolv.conf).
_PODMAN_MAKES = frozenset({"/etc/hosts", "/etc/hostname", "/run/.containerenv", "/dev/shm"})


def _podman_root_mode(found: Found) -> int | None:
    """The mode podman gives the root of a new container of image ``found``
    (containers/storage makes a new layer's root like the image's top layer)."""
    from cedana.runtimes._podman_layout import image_layers
    from cedana.runtimes.podman import PodmanCLI

    layers = image_layers(PodmanCLI().image(found.id) or {})
    try:
        return os.stat(layers[0]).st_mode & 0o7777 if layers else None
    except OSError:
        return None


def into_podman(
    checkpoint: Checkpoint | str | os.PathLike[str],
    *,
    name: str | None = None,
    source_address: str | None = None,
    tcp_established: bool | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    hooks: Mapping[str, Any] | None = None,
    grants: confine.Grants | None = None,
    backend: CriuBackend | None = None,
    trust: Trust = "trusted",
    trusted_keys: Iterable[KeySource] | None = None,
) -> Any:
    """Restore another runtime's checkpoint as a podman container.

    The image comes into podman's store from the source's (at ``source_address``, else
    its default place) unless it is there; podman makes its own ``/etc/hosts``,
    ``/etc/hostname``, ``/etc/resolv.conf``, ``/run/.containerenv`` and ``/dev/shm``
    for the source runtime's. The rest is :meth:`cedana.PodmanContainer.restore`'s,
    keywords and confinement included.
    """
    from cedana.runtimes.podman import PodmanContainer

    ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
    desc = describe(ckpt)
    name = name or desc.name
    found = _image(desc, PodmanImages(), source_address, work_dir)
    mode = _podman_root_mode(found)
    unmade = [m.destination for m in desc.runtime_mounts if m.destination not in _PODMAN_MAKES]

    def adapt(images: Path) -> None:
        portable.drop_root_slavery(images)
        if mode is not None:
            portable.set_root_mode(images, mode)
        portable.drop_mounts(images, unmade)

    args = [str(a) for a in desc.process.get("args") or []]
    config = {
        "name": name,
        "rootfsImageID": found.id,
        "rootfsImageName": found.ref,
        "RawImageName": found.ref,
        "command": args,
        "createWorkingDir": True,
    }
    pod = {
        "name": name,
        "image": {"name": found.ref, "id": found.id},
        "config": config,
    }
    workload = {
        **thaw(ckpt.manifest.workload),
        "container": {**_section(ckpt, "container"), "config": DERIVED_CONFIG},
        "podman": pod,
    }
    view = portable.translated(
        ckpt,
        runtime="podman",
        workload=workload,
        derived={DERIVED_CONFIG: desc.config_bytes()},
        after_extract=adapt,
    )
    return PodmanContainer.restore(
        view,
        name=name,
        tcp_established=tcp_established,
        work_dir=work_dir,
        hooks=hooks,
        grants=_grants(grants, desc, None),
        backend=backend,
        trust=trust,
        trusted_keys=trusted_keys,
    )


_register_runc()
