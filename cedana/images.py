"""Checkpoints in OCI registries and layouts: push, pull (a checkpoint as an OCI artifact).

A checkpoint travels unchanged: its file is the one layer of an OCI artifact
(image-spec 1.1) of type :data:`cedana.oci.media.CEDANA_ARTIFACT`, its layer typed
``application/vnd.cedana.checkpoint.v1.tar+zstd`` (or ``.tar`` for an uncompressed one),
titled with the file's name; the manifest's annotations say its kind, runtime and
creation time, so a registry's UI shows what it is. The config is the empty ``{}``.

Pulling checks the layer's digest while it streams (:mod:`cedana.oci`), then opens the
file as a checkpoint and verifies every member before it is put at its destination: a
pull never leaves a partial or unusable file under the name asked for. Its signature is
checked when it is restored, as for any file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from cedana import oci
from cedana.checkpoint import Checkpoint
from cedana.errors import ArtifactExists, InvalidOption, UnsupportedFormat
from cedana.oci import media
from cedana.oci.reference import Reference
from cedana.runtimes import _kube_image
from cedana.staging import scratch_dir

__all__ = ["is_reference", "pull", "pulled", "push"]

logger = logging.getLogger("cedana.images")

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ANNOTATION_KIND = "io.cedana.checkpoint.kind"
ANNOTATION_RUNTIME = "io.cedana.checkpoint.runtime"
_LAYOUT_DIR = "layout"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,200}")


def is_reference(text: object) -> bool:
    """Whether ``text`` is an image reference (``docker://``, ``oci:``, ``oci-archive:``)
    rather than a path."""
    return isinstance(text, (str, Reference)) and (
        isinstance(text, Reference) or text.startswith(("docker://", "oci:", "oci-archive:"))
    )


def push(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    to: str | Reference,
    *,
    registry: oci.RegistryOptions | None = None,
    overwrite: bool = False,
) -> str:
    """Push a checkpoint file, unchanged, as an OCI artifact; return the manifest digest.

    Args:
        checkpoint: The artifact (its single-file form: ``.tar.zst`` or ``.tar``). It is
            verified first (every member against its manifest); who signed it is checked
            only when it is restored.
        to: ``docker://HOST/REPO:TAG``, or ``oci:DIR[:NAME]`` / ``oci-archive:PATH[:NAME]``.
        registry: TLS, CA and credentials (:class:`cedana.oci.RegistryOptions`).
        overwrite: Replace an existing ``oci-archive:`` file.

    Raises:
        InvalidOption: A directory-form checkpoint (push its single-file form).
        ArtifactCorrupt: The checkpoint is damaged.
        RegistryUnavailable, RegistryRefused: The registry is down or refused; the
            manifest is pushed last, so the tag is not written.
    """
    ckpt = (
        checkpoint
        if isinstance(checkpoint, Checkpoint)
        else Checkpoint.open(checkpoint, trust="any")
    )
    path = ckpt.path
    if path.is_dir():
        raise InvalidOption(
            f"{path} is a directory-form checkpoint; push takes a single file (checkpoint "
            "with compress='zstd' or 'none')"
        )
    if isinstance(checkpoint, Checkpoint):
        ckpt.verify()
    with open(path, "rb") as f:
        compressed = f.read(4) == _ZSTD_MAGIC
    layer_type = media.CEDANA_CHECKPOINT_LAYER_ZSTD if compressed else media.CEDANA_CHECKPOINT_LAYER
    manifest = ckpt.manifest
    annotations = {
        media.ANNOTATION_CREATED: manifest.created,
        ANNOTATION_KIND: manifest.kind,
        **({ANNOTATION_RUNTIME: manifest.runtime} if manifest.runtime else {}),
    }
    started = time.monotonic()
    with scratch_dir(".cedana-push-", parent=_scratch_parent(to)) as tmp:
        layout = oci.Layout.create(tmp / "layout")
        # A link, not a copy: the layout's blob is the checkpoint file itself.
        blob = _link_in(layout, path, layer_type, {media.ANNOTATION_TITLE: path.name})
        image = oci.write_image(
            layout,
            layers=[blob],
            artifact_type=media.CEDANA_ARTIFACT,
            annotations=annotations,
        )
        digest = oci.push(image, to, registry=registry, overwrite=overwrite)
    logger.debug("pushed %s to %s (%s) in %.3fs", path, to, digest, time.monotonic() - started)
    return digest


def _scratch_parent(ref: str | Reference) -> Path | None:
    """Stage beside a local destination (same filesystem); in the temp dir for a registry."""
    parsed = oci.parse_reference(ref)
    if parsed.path is not None:
        parent = parsed.path.resolve().parent
        return parent if parent.is_dir() else None
    return None


def _link_in(
    layout: oci.Layout, path: Path, media_type: str, annotations: dict[str, str]
) -> oci.Descriptor:
    """Put ``path`` in the layout as a blob: hashed, then hard-linked (copied when the
    layout is on another filesystem)."""
    import hashlib

    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    desc = oci.Descriptor(
        media_type=media_type,
        digest="sha256:" + h.hexdigest(),
        size=size,
        annotations=annotations,
    )
    try:
        os.link(path, layout.blob_path(desc.digest))
    except OSError:
        return layout.add_file(path, media_type, annotations=annotations)
    return desc


def _checkpoint_layer(image: oci.Image, ref: object) -> oci.Descriptor:
    if image.artifact_type != media.CEDANA_ARTIFACT:
        raise UnsupportedFormat(
            f"{ref} is neither a cedana checkpoint nor a checkpoint image (its artifact "
            f"type is {image.artifact_type or 'none: a container image'}, and it has none "
            f"of {', '.join(_kube_image.NAME_KEYS)} among its annotations): push a "
            "checkpoint there with cedana push, or make a checkpoint image with cedana "
            "export --format oci-image"
        )
    layers = [
        d
        for d in image.layers
        if d.media_type in (media.CEDANA_CHECKPOINT_LAYER, media.CEDANA_CHECKPOINT_LAYER_ZSTD)
    ]
    if len(layers) != 1:
        raise UnsupportedFormat(f"{ref} holds {len(layers)} checkpoint layers, not one")
    return layers[0]


def pull(
    ref: str | Reference,
    output: str | os.PathLike[str],
    *,
    registry: oci.RegistryOptions | None = None,
    overwrite: bool = False,
) -> Checkpoint:
    """Pull a checkpoint pushed by :func:`push` to the file ``output``; return it, opened.

    The layer's digest is checked as it arrives and the checkpoint verified (every member
    against its manifest) before it is renamed to ``output``; its signer is checked when
    it is restored. Nothing is left at ``output`` (or beside it) when anything fails.

    Raises:
        ArtifactExists: ``output`` exists and not ``overwrite``.
        ArtifactCorrupt: The layer does not match its digest (tampered), or the checkpoint
            is damaged.
        UnsupportedFormat: The reference holds no cedana checkpoint.
        ReferenceNotFound, RegistryUnavailable, RegistryRefused: As the registry answers.
    """
    dest = Path(output)
    if dest.exists() and not overwrite:
        raise ArtifactExists(f"{dest} exists; remove it or pass overwrite=True (--overwrite)")
    if dest.is_dir():
        raise ArtifactExists(f"{dest} is a directory; name a file to pull to")
    parent = dest.resolve().parent
    if not parent.is_dir():
        raise FileNotFoundError(2, "the directory to pull into does not exist", str(parent))
    with scratch_dir(".cedana-pull-", parent=parent) as tmp:
        path = _pull_to(ref, tmp, registry=registry)
        os.chmod(path, 0o600)  # checkpoints hold process memory
        os.replace(path, dest)
    return Checkpoint.open(dest, verify=False, trust="any")


def _pull_to(ref: str | Reference, tmp: Path, *, registry: oci.RegistryOptions | None) -> Path:
    """Pull ``ref``'s checkpoint into ``tmp``, checked and verified; its path there.

    A cedana artifact gives its file; a Kubernetes checkpoint image
    (:mod:`cedana.runtimes._kube_image`) gives the archive its layer holds.
    """
    image = oci.pull(ref, tmp / _LAYOUT_DIR, registry=registry)
    if image.artifact_type == media.CEDANA_ARTIFACT:
        layer = _checkpoint_layer(image, ref)
        title = (layer.annotations or {}).get(media.ANNOTATION_TITLE, "")
        zstd = layer.media_type == media.CEDANA_CHECKPOINT_LAYER_ZSTD
        suffix = ".tar.zst" if zstd else ".tar"
        # The title is the registry's word: a plain file name, else one of the pull's own.
        plain = _PLAIN_NAME.fullmatch(title) and title != _LAYOUT_DIR
        name = title if plain else "checkpoint" + suffix
    else:
        kube_layer = _kube_image.checkpoint_layer(image)
        layer = kube_layer if kube_layer is not None else _checkpoint_layer(image, ref)
        name = "checkpoint.tar"
    path = tmp / name
    src = image.layout.blob_path(layer.digest)
    try:
        os.link(src, path)
    except OSError:
        shutil.copyfile(src, path)
    Checkpoint.open(path, trust="any")  # every member against the manifest
    return path


@contextlib.contextmanager
def pulled(ref: str | Reference, *, registry: oci.RegistryOptions | None = None) -> Iterator[Path]:
    """A checkpoint pulled from ``ref`` into a private temp dir (removed on exit), for a
    restore straight from a registry or a layout."""
    with scratch_dir(".cedana-pull-", fills="the pulled checkpoint") as tmp:
        yield _pull_to(ref, tmp, registry=registry)
