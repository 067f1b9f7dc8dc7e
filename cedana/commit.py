"""commit: a container's root filesystem changes as a new OCI image on its original one.

``commit(ckpt, to)`` takes a container checkpoint (kind ``container``) or a rootfs-only
one (kind ``rootfs``), both of which carry the changes as ``container/rootfs-diff.tar``,
and writes an image whose layers are the original image's, unchanged, plus one layer with
the changes, overlay's whiteouts turned into OCI's (:mod:`cedana.rootfs.oci_layer`). Any
runtime, or a Kubernetes node pulling it from a registry, then starts a container with
the changes in place.

Where the original layers come from (the base), and how it is checked to be the image
the changes were made on:

==========  ================================================  ============================
runtime     base                                              checked against the record
==========  ================================================  ============================
podman      ``podman image save --format oci-archive`` of      config digest = the image id
            the image id the checkpoint records
containerd  containerd's content store (its API), the          the layers' chain id = the
            manifest the checkpoint records                    container snapshot's parent
docker      ``docker save`` of the recorded image id (the      config digest = the image id
            Engine API), its layers gzipped
runc        the container's lower directories, each as a       each directory's identity,
            layer (it has no image)                            recorded at checkpoint
==========  ================================================  ============================

``base=`` names the base image instead (``oci-archive:``, ``oci:``, ``docker://``), checked
the same way; a runc checkpoint records no image to check one against, so it takes none.
An image that does not match is refused (:class:`~cedana.ImageMismatch`), as is a diff that
the checks of :mod:`cedana.rootfs.oci_layer` refuse; the output is written only when the
image is complete (see :func:`cedana.oci.push`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import tarfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cedana import oci
from cedana.artifact.signing import KeySource, Trust
from cedana.checkpoint import Checkpoint
from cedana.errors import CedanaError, ImageMismatch, InvalidOption, UnsupportedFormat
from cedana.oci import media
from cedana.oci.reference import Reference
from cedana.oci.transfer import check_destination
from cedana.rootfs import OVERLAY, diff_format
from cedana.rootfs.oci_layer import overlay_to_oci
from cedana.rootfs.overlay import DIFF_NAME, capture_upper
from cedana.staging import scratch_dir

__all__ = ["commit"]

logger = logging.getLogger("cedana.commit")

ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
_CONTAINER_DIR = "container"
_KINDS = ("container", "rootfs")


def commit(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    to: str | Reference,
    *,
    base: str | Reference | None = None,
    registry: oci.RegistryOptions | None = None,
    compression: oci.Compression = "gzip",
    overwrite: bool = False,
    address: str | None = None,
    trust: Trust = "trusted",
    trusted_keys: Iterable[KeySource] | None = None,
) -> str:
    """Commit a container checkpoint's rootfs changes as an OCI image; return its digest.

    Args:
        checkpoint: A container or rootfs-only checkpoint (its signer must be trusted, as
            for a restore, unless ``trust="any"``).
        to: ``oci-archive:PATH[:NAME]``, ``oci:DIR[:NAME]`` or ``docker://HOST/REPO:TAG``;
            give NAME a whole image name (``localhost/app:v1``) for ``podman load`` and
            ``ctr images import`` to name the image by.
        base: The original image, when not taken from the runtime's store (see the module's
            table); pulled from ``registry`` when a ``docker://`` reference.
        registry: How to reach registries (:class:`cedana.oci.RegistryOptions`).
        compression: Of the new layer: gzip (every runtime) or zstd.
        overwrite: Replace an existing ``oci-archive:`` file.
        address: The API socket of the runtime the base image is read from (containerd,
            docker); default: the runtime's own (never the one the checkpoint records:
            a checkpoint does not choose a host socket).

    Raises:
        InvalidOption: A process checkpoint, or one without captured rootfs changes.
        ImageMismatch: The base is not the image the changes were made on, or cannot be
            found where the checkpoint says.
        UnsafeArtifact: The diff holds an escaping entry, a device, or a whiteout's name.
        UntrustedArtifact: The signer is not trusted.
        RegistryError: A registry was down or refused (nothing is left half-written).
    """
    ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
    manifest = ckpt.manifest
    if manifest.kind not in _KINDS:
        raise InvalidOption(
            f"{ckpt.path} is a {manifest.kind} checkpoint; commit takes a container's "
            "(its root filesystem changes): checkpoint a container, or with rootfs_only=True"
        )
    rootfs = manifest.workload.get("rootfs") or {}
    if not rootfs.get("captured"):
        raise InvalidOption(
            f"{ckpt.path} holds no root filesystem changes "
            f"({rootfs.get('reason') or 'the container had no writable layer'}); "
            "there is nothing to commit"
        )
    form = diff_format(rootfs)
    members = [m.name for m in manifest.members]
    diff_dir = str(rootfs.get("dir") or _CONTAINER_DIR)
    if form == OVERLAY and f"{diff_dir}/{DIFF_NAME}" not in members:
        raise UnsupportedFormat(f"{ckpt.path} lacks its rootfs diff {diff_dir}/{DIFF_NAME}")
    if form not in (OVERLAY, "podman"):
        raise UnsupportedFormat(f"{ckpt.path} holds rootfs changes in a {form!r} format")
    ref = check_destination(to, overwrite=overwrite)
    started = time.monotonic()
    parent = _scratch_parent(ref)
    with scratch_dir(".cedana-commit-", parent=parent, fills="the image being built") as tmp:
        layout = oci.Layout.create(tmp / "layout")
        base_image, base_name = _base(
            ckpt, layout, tmp, base=base, registry=registry, address=address
        )
        diff = _overlay_diff(ckpt, tmp, diff_dir, form)
        converted = tmp / "layer.tar"
        with open(converted, "wb") as out:
            counts = overlay_to_oci(diff, out)
        layer = oci.add_layer(layout, converted, compression=compression)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        config = oci.image_config(
            [layer],
            base=base_image.config_json,
            created=now,
            comment=f"cedana commit: rootfs changes of {manifest.runtime or 'a'} container "
            f"checkpointed {manifest.created}",
        )
        annotations = {
            media.ANNOTATION_CREATED: now,
            ANNOTATION_BASE_DIGEST: base_image.digest,
            **({ANNOTATION_BASE_NAME: base_name} if base_name else {}),
        }
        base_layers = [
            oci.Descriptor(media_type=media.oci_type(d.media_type), digest=d.digest, size=d.size)
            for d in base_image.layers
        ]
        image = oci.write_image(
            layout,
            layers=[*base_layers, layer],
            config=config,
            annotations=annotations,
        )
        digest = oci.push(image, ref, registry=registry, overwrite=overwrite)
    logger.debug(
        "committed %s to %s (%s, %d base layers, %s) in %.3fs",
        ckpt.path,
        ref,
        digest,
        len(base_layers),
        counts,
        time.monotonic() - started,
    )
    return digest


def _scratch_parent(ref: Reference) -> Path | None:
    if ref.path is not None:
        where = ref.path.resolve().parent
        return where if where.is_dir() else None
    return None


def _overlay_diff(ckpt: Checkpoint, tmp: Path, diff_dir: str, form: str | None) -> Path:
    """The checkpoint's diff in the overlay format, extracted (verified) into ``tmp``."""
    extracted = tmp / "checkpoint"
    ckpt.extract(extracted, only=lambda name: name.startswith(diff_dir + "/"))
    if form == OVERLAY:
        return extracted / diff_dir / DIFF_NAME
    from cedana.rootfs.containers_storage import from_podman_diff

    dest = from_podman_diff(extracted / diff_dir, tmp / "overlay-diff")
    return dest / DIFF_NAME


# --- the base image ------------------------------------------------------------------------


def _base(
    ckpt: Checkpoint,
    layout: oci.Layout,
    tmp: Path,
    *,
    base: str | Reference | None,
    registry: oci.RegistryOptions | None,
    address: str | None,
) -> tuple[oci.Image, str | None]:
    """The base image, its blobs in ``layout``, checked against what the checkpoint
    records; and the name it goes by."""
    manifest = ckpt.manifest
    runtime = manifest.runtime or ""
    record = dict(manifest.workload.get(runtime) or {})
    # The socket is the caller's or the runtime's default: a checkpoint chooses no host
    # socket (nor a tcp:// host) to be dialled.
    record.pop("address", None)
    if address is not None:
        record["address"] = address
    image_record = dict(record.get("image") or {})
    name: str | None
    if base is not None:
        if runtime not in ("podman", "containerd", "docker"):
            raise ImageMismatch(
                f"{ckpt.path} is a {runtime or 'runc'} checkpoint, which records no image to "
                "check a base against: commit builds the base from the container's lower "
                "directories (leave base unset)"
            )
        pulled = oci.pull(base, tmp / "base", registry=registry)
        image = _copied_into(pulled, layout)
        name = str(base)
    elif runtime == "podman":
        image, name = _podman_base(ckpt, image_record, layout, tmp)
    elif runtime == "containerd":
        image, name = _containerd_base(ckpt, record, image_record, layout)
    elif runtime == "docker":
        image, name = _docker_base(ckpt, record, image_record, layout, tmp)
    else:
        return _lower_dirs_base(ckpt, layout, tmp), None
    _check_fits(ckpt, runtime, image_record, image)
    return image, name


def _copied_into(image: oci.Image, layout: oci.Layout) -> oci.Image:
    """``image``'s blobs (already checked) linked or copied into ``layout``."""
    for desc in [*image.blobs(), image.descriptor]:
        layout.copy_blob_from(image.layout, desc)
    return layout.parse_image(image.descriptor, image.manifest)


def _check_fits(
    ckpt: Checkpoint, runtime: str, image_record: Mapping[str, Any], image: oci.Image
) -> None:
    """Refuse a base that is not the image the checkpoint's changes were made on."""
    what = f"{ckpt.path}'s {runtime} container ran on image {image_record.get('name')!r}"
    if runtime in ("podman", "docker"):
        want = str(image_record.get("id") or "")
        want = want if want.startswith("sha256:") else f"sha256:{want}" if want else ""
        if not want:
            raise ImageMismatch(f"{what}, but the checkpoint records no image id to check")
        if image.config.digest != want:
            raise ImageMismatch(
                f"{what} (id {want}); this base is {image.config.digest}: the changes would "
                "not fit it. Commit on the original image"
            )
    elif runtime == "containerd":
        from cedana.runtimes._containerd_api import chain_id

        want = str(image_record.get("chain_id") or "")
        if not image.diff_ids:
            raise ImageMismatch(f"{what}; this base has no layers")
        have = chain_id(image.diff_ids)
        if not want or have != want:
            raise ImageMismatch(
                f"{what} (layers' chain id {want or 'unrecorded'}); this base's is {have}: "
                "the changes would not fit it. Commit on the original image"
            )
    if len(image.layers) != len(image.diff_ids):
        raise ImageMismatch(
            f"the base image {image.digest} lists {len(image.layers)} layers "
            f"but {len(image.diff_ids)} diff_ids"
        )


def _podman_base(
    ckpt: Checkpoint, image_record: Mapping[str, Any], layout: oci.Layout, tmp: Path
) -> tuple[oci.Image, str | None]:
    """``podman image save --format oci-archive`` of the recorded image id."""
    from cedana.runtimes.podman import PodmanCLI

    image_id = str(image_record.get("id") or "")
    name = image_record.get("name")
    if not image_id:
        raise ImageMismatch(f"{ckpt.path} records no podman image id; pass base=")
    archive = tmp / "base.tar"
    done = PodmanCLI().run(
        "image", "save", "--format", "oci-archive", "-o", str(archive), "--", image_id, check=False
    )
    if done.returncode != 0:
        raise ImageMismatch(
            f"image {name!r} ({image_id}) that {ckpt.path}'s container ran on is not in this "
            f"host's podman store ({(done.stderr.strip().splitlines() or [''])[-1]}); "
            "load it there, or pass base= (--base)"
        )
    pulled = oci.pull(f"oci-archive:{archive}", tmp / "base")
    image = _copied_into(pulled, layout)
    archive.unlink()
    return image, str(name) if name else None


def _containerd_base(
    ckpt: Checkpoint,
    record: Mapping[str, Any],
    image_record: Mapping[str, Any],
    layout: oci.Layout,
) -> tuple[oci.Image, str | None]:
    """The recorded manifest and its blobs, from containerd's content store."""
    from cedana.errors import ContainerError
    from cedana.runtimes._containerd_api import ContainerdClient

    manifest_digest = str(image_record.get("manifest_digest") or "")
    name = image_record.get("name")
    address = str(record.get("address") or "/run/containerd/containerd.sock")
    namespace = str(record.get("namespace") or "default")
    if not manifest_digest:
        raise ImageMismatch(
            f"{ckpt.path} records no manifest of image {name!r} (it was gone at checkpoint); "
            "pass base= (--base)"
        )
    try:
        with ContainerdClient(address=address, namespace=namespace) as client:
            data = client.read_content(manifest_digest)
            desc = oci.Descriptor(
                media_type=media.IMAGE_MANIFEST, digest=manifest_digest, size=len(data)
            )
            with layout.receive(desc) as out:
                out.write(data)
            probe = layout.parse_image(desc, layout.read_json(desc))
            for blob in probe.blobs():
                if not layout.has_blob(blob):
                    with layout.receive(blob) as out:
                        client.copy_content(blob.digest, out)
    except ContainerError as exc:  # not there, or containerd not reachable
        raise ImageMismatch(
            f"the manifest {manifest_digest} of image {name!r}, which {ckpt.path}'s container "
            f"ran on, cannot be read from containerd at {address} (namespace {namespace}): "
            f"{exc}; pass base= (--base)"
        ) from exc
    return layout.parse_image(desc, layout.read_json(desc)), str(name) if name else None


def _docker_base(
    ckpt: Checkpoint,
    record: Mapping[str, Any],
    image_record: Mapping[str, Any],
    layout: oci.Layout,
    tmp: Path,
) -> tuple[oci.Image, str | None]:
    """``docker save`` of the recorded image id (docker keeps no compressed layers): its
    config as it is, its layer tars gzipped."""
    from cedana.errors import ContainerError
    from cedana.runtimes._docker_api import DockerClient

    image_id = str(image_record.get("id") or "")
    name = image_record.get("name")
    recorded = str(record.get("address") or "")
    # The SDK's base_url of a unix socket (http+docker://...) names no socket: the default.
    address = recorded if recorded.startswith(("/", "unix://", "tcp://")) else None
    if not image_id:
        raise ImageMismatch(f"{ckpt.path} records no docker image id; pass base=")
    saved = tmp / "docker-save.tar"
    try:
        with DockerClient(address) as api, open(saved, "wb") as out:
            api.save_image(image_id, out)
    except ContainerError as exc:
        raise ImageMismatch(
            f"image {name!r} ({image_id}) that {ckpt.path}'s container ran on cannot be "
            f"saved from docker: {exc}; load it there, or pass base= (--base)"
        ) from exc
    image = _from_docker_archive(saved, layout)
    saved.unlink()
    return image, str(name) if name else None


def _from_docker_archive(path: Path, layout: oci.Layout) -> oci.Image:
    """An image from a ``docker save`` archive (``manifest.json``, the config, layer tars)."""
    from cedana.errors import ArtifactCorrupt

    with tarfile.open(path, "r:") as tar:
        names = {m.name: m for m in tar.getmembers() if m.isreg()}
        try:
            entry = json.loads(_member(tar, names, "manifest.json"))[0]
            config_bytes = _member(tar, names, str(entry["Config"]))
            layers = [str(x) for x in entry["Layers"]]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ArtifactCorrupt(f"docker's saved image {path} is not readable: {exc}") from exc
        config = layout.add_bytes(config_bytes, media.IMAGE_CONFIG)
        descs = []
        for name in layers:
            src = tar.extractfile(names[name]) if name in names else None
            if src is None:
                raise ArtifactCorrupt(f"docker's saved image {path} lacks layer {name}")
            descs.append(oci.add_layer(layout, src).descriptor)
    image = oci.write_image(layout, layers=descs, config=config)
    config_json = json.loads(config_bytes)
    ids = (config_json.get("rootfs") or {}).get("diff_ids") or []
    if len(ids) != len(descs):
        raise ArtifactCorrupt(
            f"docker's saved image {path} has {len(descs)} layers, {len(ids)} ids"
        )
    return image


def _member(tar: tarfile.TarFile, names: Mapping[str, tarfile.TarInfo], name: str) -> bytes:
    f = tar.extractfile(names[name])
    assert f is not None
    return f.read()


def _lower_dirs_base(ckpt: Checkpoint, layout: oci.Layout, tmp: Path) -> oci.Image:
    """The container's lower directories (checked against their recorded identities),
    bottom first, each an OCI layer; the config from the container's OCI spec."""
    from cedana.container import confine

    rootfs = ckpt.manifest.workload.get("rootfs") or {}
    try:
        lowers = confine.check_lower(
            list(rootfs.get("lower") or ()), rootfs.get("lower_identity"), given=None
        )
    except CedanaError as exc:
        raise ImageMismatch(
            f"the lower directories {ckpt.path}'s container ran on are gone or changed "
            f"({exc}); the changes cannot be committed on them"
        ) from exc
    layers = []
    for lower in reversed(lowers):  # recorded uppermost first
        as_overlay = tmp / "lower.tar"
        with open(as_overlay, "wb") as out:
            capture_upper(Path(lower), out)
        as_oci = tmp / "lower-oci.tar"
        with open(as_oci, "wb") as out:
            overlay_to_oci(as_overlay, out)
        layers.append(oci.add_layer(layout, as_oci))
        as_overlay.unlink()
        as_oci.unlink()
    config = oci.image_config(layers, comment="cedana commit: a lower directory of the container")
    config["config"] = _runtime_config(ckpt)
    return oci.write_image(layout, layers=layers, config=config)


def _runtime_config(ckpt: Checkpoint) -> dict[str, Any]:
    """An image config's ``config`` (Cmd, Env, WorkingDir, User) from the container's
    OCI runtime spec, so the image runs what the container ran."""
    from cedana.container.runc import CONFIG_MEMBER

    with contextlib.suppress(Exception):
        spec = json.loads(ckpt.read_member(CONFIG_MEMBER))
        process = spec.get("process") or {}
        user = process.get("user") or {}
        out: dict[str, Any] = {
            "Cmd": [str(a) for a in process.get("args") or []],
            "Env": [str(e) for e in process.get("env") or []],
            "WorkingDir": str(process.get("cwd") or "/"),
        }
        if user.get("uid") or user.get("gid"):
            out["User"] = f"{int(user.get('uid', 0))}:{int(user.get('gid', 0))}"
        return out
    return {}
