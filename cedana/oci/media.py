"""Media types, annotation keys and the digest rules of the OCI image and distribution specs.

Docker's schema 2 types are read as the OCI types they correspond to (the bytes are the
same); everything cedana writes uses the OCI types.
"""

from __future__ import annotations

import re

from cedana.errors import InvalidOption

__all__ = [
    "ANNOTATION_CREATED",
    "ANNOTATION_REF_NAME",
    "ANNOTATION_TITLE",
    "CEDANA_ARTIFACT",
    "CEDANA_CHECKPOINT_LAYER",
    "CEDANA_CHECKPOINT_LAYER_ZSTD",
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "EMPTY_CONFIG",
    "EMPTY_JSON",
    "EMPTY_JSON_DIGEST",
    "IMAGE_CONFIG",
    "IMAGE_INDEX",
    "IMAGE_MANIFEST",
    "LAYER_GZIP",
    "LAYER_TAR",
    "LAYER_ZSTD",
    "MANIFEST_TYPES",
    "check_digest",
    "oci_type",
]

IMAGE_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
#: The config of an artifact that has none (image-spec 1.1): the two bytes ``{}``.
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

#: What a manifest GET accepts, and what a manifest blob may be.
MANIFEST_TYPES = (IMAGE_MANIFEST, IMAGE_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)

#: cedana's own artifact, pushed unchanged as the one layer of an OCI artifact.
CEDANA_ARTIFACT = "application/vnd.cedana.checkpoint.v1"
CEDANA_CHECKPOINT_LAYER = "application/vnd.cedana.checkpoint.v1.tar"
CEDANA_CHECKPOINT_LAYER_ZSTD = "application/vnd.cedana.checkpoint.v1.tar+zstd"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_CREATED = "org.opencontainers.image.created"

_DOCKER_TO_OCI = {
    DOCKER_MANIFEST: IMAGE_MANIFEST,
    DOCKER_MANIFEST_LIST: IMAGE_INDEX,
    DOCKER_CONFIG: IMAGE_CONFIG,
    DOCKER_LAYER_GZIP: LAYER_GZIP,
    DOCKER_LAYER_TAR: LAYER_TAR,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": LAYER_GZIP,
}

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


def oci_type(media_type: str) -> str:
    """The OCI media type for ``media_type`` (a docker schema 2 one maps to its twin)."""
    return _DOCKER_TO_OCI.get(media_type, media_type)


def check_digest(digest: object, what: str = "a digest") -> str:
    """``digest`` if it is a well-formed ``sha256:<64 hex>``; a clear error otherwise.

    Only sha256 is taken: it is what every registry and runtime writes, and a digest is
    used as a file name, so nothing but its exact form may pass.
    """
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise InvalidOption(f"{what} is {digest!r}, not a sha256 digest (sha256:<64 hex digits>)")
    return digest
