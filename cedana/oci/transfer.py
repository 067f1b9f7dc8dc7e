"""Copy an image between a layout and any reference: :func:`push` (write it at ``oci:``,
``oci-archive:`` or ``docker://``) and :func:`pull` (read it from one, checked).

Neither leaves half-written output on failure: an ``oci-archive:`` is renamed into place
when complete, blobs enter a layout only once their digest matches, a new ``oci:`` layout
directory that a failed push created is removed, and a registry keeps a manifest only
once every blob it names is there (blobs are pushed first, the manifest last).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from cedana.errors import ArtifactExists, InvalidOption
from cedana.oci import media
from cedana.oci.archive import read_archive, write_archive
from cedana.oci.distribution import BlobCallback, RegistryClient, RegistryOptions
from cedana.oci.layout import Descriptor, Image, Layout, _pick_platform, remove_tree
from cedana.oci.reference import Reference, parse_reference

__all__ = ["check_destination", "pull", "push"]

logger = logging.getLogger("cedana.oci")


def check_destination(dest: str | Reference, *, overwrite: bool = False) -> Reference:
    """The parsed ``dest``, refused early when :func:`push` would refuse it at the end: an
    ``oci-archive:`` file that exists (without ``overwrite``), a registry digest."""
    ref = parse_reference(dest)
    exists = ref.transport == "oci-archive" and ref.path is not None and ref.path.exists()
    if exists and not overwrite:
        raise ArtifactExists(f"{ref.path} exists; remove it or pass overwrite=True (--overwrite)")
    if ref.is_registry and ref.digest:
        raise InvalidOption(f"{ref}: push to a tag (docker://HOST/REPO:TAG), not a digest")
    return ref


def push(
    image: Image,
    dest: str | Reference,
    *,
    registry: RegistryOptions | None = None,
    overwrite: bool = False,
    on_blob: BlobCallback | None = None,
) -> str:
    """Write ``image`` (from its layout) at ``dest``; return the manifest's digest.

    ``oci:DIR[:NAME]`` adds it to the layout at DIR (made if missing), ``oci-archive:PATH
    [:NAME]`` writes a new archive (``overwrite`` to replace one), ``docker://HOST/REPO
    [:TAG]`` pushes it: blobs the registry lacks (``HEAD`` first), then the manifest.

    Raises:
        ArtifactExists: The archive exists (and not ``overwrite``).
        RegistryUnavailable, RegistryRefused: The registry is down or refused.
    """
    ref = check_destination(dest, overwrite=overwrite)
    started = time.monotonic()
    if ref.transport == "oci-archive":
        assert ref.path is not None
        write_archive(image, ref.path, name=ref.tag, overwrite=overwrite)
    elif ref.transport == "oci":
        assert ref.path is not None
        _push_layout(image, ref.path, ref.tag)
    else:
        assert ref.tag is not None
        data = image.layout.read_blob(image.descriptor)
        with RegistryClient(ref, registry or RegistryOptions()) as client:
            for desc in image.blobs():
                sent = client.push_blob(image.layout.blob_path(desc.digest), desc)
                if on_blob is not None:
                    on_blob(desc, sent)
            client.push_manifest(data, ref.tag)
    logger.debug("pushed %s to %s in %.3fs", image.digest, ref, time.monotonic() - started)
    return image.digest


def _push_layout(image: Image, path: Path, name: str | None) -> None:
    if path.exists() and Path(os.path.realpath(path)) == Path(os.path.realpath(image.layout.path)):
        image.layout.tag(image.descriptor, name)
        return
    fresh = not path.exists()
    try:
        target = Layout.open_or_create(path)
        for desc in [*image.blobs(), image.descriptor]:
            target.copy_blob_from(image.layout, desc)
        target.tag(image.descriptor, name)
    except BaseException:
        if fresh:
            remove_tree(path)
        raise


def pull(
    src: str | Reference,
    into: str | os.PathLike[str],
    *,
    registry: RegistryOptions | None = None,
) -> Image:
    """Read the image at ``src`` into a layout at ``into``, every blob checked; return it.

    ``into`` is made as a new layout (it must not exist, or be an empty directory), except
    for an ``oci:DIR`` source, which is read in place (its blobs checked) and returned
    as it is.

    Raises:
        ReferenceNotFound: No image at ``src``.
        ArtifactCorrupt: A blob or manifest does not match its digest (tampered).
        RegistryUnavailable, RegistryRefused: The registry is down or refused.
    """
    ref = parse_reference(src)
    started = time.monotonic()
    if ref.transport == "oci":
        assert ref.path is not None
        layout = Layout.open(ref.path)
        image = layout.image(ref.tag)
        layout.verify(image)
        return image
    where = Path(into)
    fresh = not where.exists()
    try:
        layout = Layout.create(where)
        if ref.transport == "oci-archive":
            assert ref.path is not None
            if not ref.path.exists():
                raise FileNotFoundError(2, "no OCI archive there", str(ref.path))
            read_archive(ref.path, layout)
            image = layout.image(ref.tag)
            layout.verify(image)
        else:
            image = _pull_registry(ref, layout, registry or RegistryOptions())
    except BaseException:
        if fresh:
            remove_tree(where)
        else:
            with contextlib.suppress(OSError):
                for child in where.iterdir():
                    remove_tree(child)
        raise
    logger.debug("pulled %s from %s in %.3fs", image.digest, ref, time.monotonic() - started)
    return image


def _pull_registry(ref: Reference, layout: Layout, options: RegistryOptions) -> Image:
    which = ref.digest or ref.tag
    assert which is not None
    with RegistryClient(ref, options) as client:
        data, desc = client.get_manifest(which)
        for _ in range(2):  # an index -> this platform's manifest
            if media.oci_type(desc.media_type) != media.IMAGE_INDEX:
                break
            with layout.receive(desc) as out:
                out.write(data)
            chosen = _pick_platform(layout.read_json(desc), f"{ref}")
            data, desc = client.get_manifest(chosen.digest)
            if desc.digest != chosen.digest:  # get_manifest checked it already
                raise AssertionError("manifest digest")
        with layout.receive(desc) as out:
            out.write(data)
        manifest = layout.read_json(desc)
        probe = layout.parse_image(desc, manifest)  # the descriptors, checked
        for blob in probe.blobs():
            if layout.has_blob(blob):
                continue
            with layout.receive(blob) as out:
                client.pull_blob(blob, out)
    layout.tag(desc, ref.tag)
    return layout.image(Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size))
