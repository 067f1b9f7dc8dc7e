"""Kubernetes' checkpoint OCI image: a checkpoint archive (:mod:`._kube_archive`) at ``/``
of one layer on ``scratch``, annotated so that the runtimes know it for one.

The kubelet's checkpoint archive becomes an image so that it travels through registries
(``checkpointctl build``, ``buildah add`` + ``buildah config --annotation``); a pod whose
container names that image restores the checkpoint on another node. The runtimes look at
the annotations only: CRI-O at ``io.kubernetes.cri-o.annotations.checkpoint.name``
(KEP-2008), containerd at ``org.criu.checkpoint.container.name`` (the image index's, or
the manifest's when there is no index), podman (``podman container checkpoint
--create-image``, ``podman container restore IMAGE``) at
``io.podman.annotations.checkpoint.name``. :func:`export_image` writes such an image with
the engine's key and checkpointctl's ``org.criu.checkpoint.*`` keys, through
:mod:`cedana.oci` (an ``oci:`` layout, an ``oci-archive:`` file or a registry);
:func:`checkpoint_layer` tells one apart when :func:`cedana.images.pulled` pulls it (every
blob checked against its digest), whose layer is then the archive it is, checked by the
family reader as any other.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from cedana import oci
from cedana.artifact.signing import KeySource, Trust
from cedana.checkpoint import Checkpoint
from cedana.errors import UnsupportedFormat
from cedana.oci import media
from cedana.oci.reference import Reference
from cedana.runtimes._kube_archive import export_archive
from cedana.staging import scratch_dir

__all__ = ["NAME_KEYS", "checkpoint_layer", "export_image"]

logger = logging.getLogger("cedana.runtimes")

CRIO_NAME = "io.kubernetes.cri-o.annotations.checkpoint.name"
CRIU_NAME = "org.criu.checkpoint.container.name"
PODMAN_NAME = "io.podman.annotations.checkpoint.name"
#: The annotations that make an image a checkpoint image, each engine's.
NAME_KEYS = (CRIO_NAME, CRIU_NAME, PODMAN_NAME)
_LAYERS = (media.LAYER_GZIP, media.LAYER_TAR, media.LAYER_ZSTD)

#: Whose archive the image carries: CRI-O's, containerd's, or podman's (for ``podman
#: container restore IMAGE``).
ImageArchive = Literal["kubernetes", "containerd", "podman"]


def _annotations(archive: Path, fmt: ImageArchive, ckpt: Checkpoint) -> dict[str, str]:
    """The image's annotations, from the archive's config.dump and the checkpoint's host."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("config.dump")
        assert member is not None
        config = json.load(member)
    host = ckpt.manifest.host
    if fmt == "podman":  # libpod's names (podman's createCheckpointImage)
        podman = {
            PODMAN_NAME: config.get("name"),
            "io.podman.annotations.checkpoint.rawImageName": config.get("RawImageName"),
            "io.podman.annotations.checkpoint.rootfsImageID": config.get("rootfsImageID"),
            "io.podman.annotations.checkpoint.rootfsImageName": config.get("rootfsImageName"),
            "io.podman.annotations.checkpoint.runtime.name": "runc",
            "io.podman.annotations.checkpoint.criu.version": host.criu_version,
            CRIU_NAME: config.get("name"),
            "org.criu.checkpoint.engine.name": "Podman",
        }
        return {k: str(v) for k, v in podman.items() if v}
    engine = "CRI-O" if fmt == "kubernetes" else "containerd"
    values = {
        CRIU_NAME: config.get("name"),
        "org.criu.checkpoint.engine.name": engine,
        "org.criu.checkpoint.rootfsImageName": config.get("rootfsImageName"),
        "org.criu.checkpoint.rootfsImageUserRequested": config.get("rootfsImage"),
        "org.criu.checkpoint.rootfsImageID": config.get("rootfsImageRef"),
        "org.criu.checkpoint.runtime.name": config.get("runtime"),
        "org.criu.checkpoint.criu.version": host.criu_version,
        "org.criu.checkpoint.host.arch": host.arch,
        "org.criu.checkpoint.host.kernel": host.kernel,
        media.ANNOTATION_CREATED: config.get("checkpointedTime"),
    }
    if fmt == "kubernetes":
        values.update(
            {
                CRIO_NAME: config.get("name"),
                "io.kubernetes.cri-o.annotations.checkpoint.rawImageName": config.get(
                    "rootfsImage"
                ),
                "io.kubernetes.cri-o.annotations.checkpoint.rootfsImageID": config.get(
                    "rootfsImageRef"
                ),
                "io.kubernetes.cri-o.annotations.checkpoint.rootfsImageName": config.get(
                    "rootfsImageName"
                ),
                "io.kubernetes.cri-o.annotations.checkpoint.criu.version": host.criu_version,
            }
        )
    return {k: str(v) for k, v in values.items() if v}


def export_image(
    checkpoint: Checkpoint | str | os.PathLike[str],
    to: str | Reference,
    *,
    format: ImageArchive = "kubernetes",
    name: str | None = None,
    registry: oci.RegistryOptions | None = None,
    overwrite: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
    trust: Trust = "trusted",
    trusted_keys: Iterable[KeySource] | None = None,
) -> str:
    """Write ``checkpoint`` as a checkpoint OCI image at ``to`` (``oci:DIR[:NAME]``,
    ``oci-archive:PATH[:NAME]``, ``docker://HOST/REPO:TAG``): the archive of ``format``
    (:func:`._kube_archive.export_archive`; ``"podman"``: podman's import archive, which
    ``podman container restore IMAGE`` takes) as its one gzip layer, on no base image.

    Returns:
        The image manifest's digest.

    Raises:
        ArtifactExists: An ``oci-archive:`` file exists (and not ``overwrite``).
        RegistryUnavailable, RegistryRefused: The registry is down or refused (the manifest
            goes last, so no tag is written).
        ContainerError, UntrustedArtifact: As for :func:`._kube_archive.export_archive`.
    """
    ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
    with scratch_dir(".cedana-image-", parent=work_dir, fills="the checkpoint image") as work:
        if format == "podman":
            from cedana.runtimes.podman import PodmanContainer

            archive = PodmanContainer.export(
                ckpt, work / "checkpoint.tar", name=name, compress="none", trust=trust
            )
        else:
            archive = export_archive(
                ckpt, work / "checkpoint.tar", format=format, name=name, trust=trust
            )
        annotations = _annotations(archive, format, ckpt)
        layout = oci.Layout.create(work / "layout")
        layer = oci.add_layer(layout, archive)
        os.unlink(archive)
        config = oci.image_config(
            [layer],
            created=annotations.get(media.ANNOTATION_CREATED),
            comment="cedana export --format oci-image",
        )
        config["architecture"] = oci.host_platform()["architecture"]
        config["os"] = platform.system().lower()
        image = oci.write_image(layout, layers=[layer], config=config, annotations=annotations)
        digest = oci.push(image, to, registry=registry, overwrite=overwrite)
    logger.debug("exported %s as checkpoint image %s (%s)", ckpt.path, to, digest)
    return digest


def checkpoint_layer(image: oci.Image) -> oci.Descriptor | None:
    """The layer holding the archive of a checkpoint image (one of :data:`NAME_KEYS` in its
    annotations, one tar layer); None for any other image."""
    if not any(k in image.annotations for k in NAME_KEYS):
        return None
    layers = [d for d in image.layers if media.oci_type(d.media_type) in _LAYERS]
    if len(layers) != 1 or len(image.layers) != 1:
        raise UnsupportedFormat(
            f"checkpoint image {image.digest} has {len(image.layers)} layers; a checkpoint "
            "image is one tar layer holding the checkpoint archive"
        )
    return layers[0]
