"""``oci-archive:``: an OCI image layout as one tar file (what ``podman save --format
oci-archive`` writes and ``podman load`` / ``ctr images import`` read).

Writing builds the tar beside its destination and renames it into place once complete
and fsynced, so a failure leaves no partial archive under the name. Reading takes only
the layout's own members (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``, their
directories) and stores each blob only once its content matches the digest it is named
by: links, devices, sparse files, other names and escaping paths are refused.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import tarfile
from pathlib import Path

from cedana.errors import ArtifactCorrupt, ArtifactExists, UnsafeArtifact
from cedana.oci import media
from cedana.oci.layout import MAX_JSON, Descriptor, Image, Layout

__all__ = ["read_archive", "write_archive"]

logger = logging.getLogger("cedana.oci")

_BLOB = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_DIRS = frozenset({"", "blobs", "blobs/sha256"})
_CHUNK = 1 << 20


def write_archive(
    image: Image, dest: str | os.PathLike[str], *, name: str | None, overwrite: bool = False
) -> None:
    """Write ``image`` (its manifest, config and layers) as an OCI archive at ``dest``,
    listed in the archive's index under ``name``.

    Raises:
        ArtifactExists: ``dest`` exists and ``overwrite`` is False.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise ArtifactExists(f"{dest} exists; remove it or pass overwrite=True (--overwrite)")
    entry = image.descriptor.to_json()
    annotations = dict(image.descriptor.annotations or {})
    annotations.pop(media.ANNOTATION_REF_NAME, None)
    if name:
        annotations[media.ANNOTATION_REF_NAME] = name
    if annotations:
        entry["annotations"] = annotations
    index = {"schemaVersion": 2, "mediaType": media.IMAGE_INDEX, "manifests": [entry]}
    tmp = dest.parent / f".{dest.name}.tmp-{secrets.token_hex(6)}"
    layout = image.layout
    try:
        with open(tmp, "xb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _add_dir(tar, "blobs")
                _add_dir(tar, "blobs/sha256")
                _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
                _add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
                seen: set[str] = set()
                for desc in [image.descriptor, *image.blobs()]:
                    if desc.digest in seen:
                        continue
                    seen.add(desc.digest)
                    path = layout.blob_path(desc.digest)
                    info = tarfile.TarInfo("blobs/sha256/" + desc.digest.removeprefix("sha256:"))
                    info.size = path.stat().st_size
                    if info.size != desc.size:
                        raise ArtifactCorrupt(f"{layout.path}: blob {desc.digest} has another size")
                    info.mode = 0o644
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    logger.debug("wrote OCI archive %s (%s)", dest, image.digest)


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def read_archive(path: str | os.PathLike[str], into: Layout) -> None:
    """Unpack the OCI archive at ``path`` into the (new) layout ``into``, each blob
    checked against its name; its ``index.json`` replaces ``into``'s.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        UnsafeArtifact: A member that is no part of a layout (a link, a device, another
            name, an escaping path).
        ArtifactCorrupt: Not a tar, a blob whose content is not its digest, no index.
    """
    path = Path(path)
    index: bytes | None = None
    try:
        tar = tarfile.open(path, mode="r:*")  # noqa: SIM115  (closed by the with below)
    except tarfile.TarError as exc:
        raise ArtifactCorrupt(f"{path} is not an OCI archive (not a tar: {exc})") from None
    with tar:
        try:
            for info in tar:
                name = info.name.removeprefix("./").rstrip("/")
                if name in ("", ".") or (info.isdir() and name in _DIRS):
                    continue
                if not info.isreg():
                    raise UnsafeArtifact(
                        f"{path}: member {info.name!r} is a link or device, which no OCI "
                        "archive holds; refusing it"
                    )
                if info.sparse is not None or info.type == tarfile.GNUTYPE_SPARSE:
                    # A few bytes in the tar, any size unpacked: no layout tool writes one.
                    raise UnsafeArtifact(
                        f"{path}: member {info.name!r} is a sparse file, which no OCI "
                        "archive holds; refusing it"
                    )
                if name == "oci-layout":
                    continue
                if name == "index.json":
                    if info.size > MAX_JSON:
                        raise ArtifactCorrupt(f"{path}: index.json is larger than {MAX_JSON}")
                    index = _read(tar, info)
                    continue
                match = _BLOB.fullmatch(name)
                if match is None:
                    raise UnsafeArtifact(
                        f"{path}: member {info.name!r} is no part of an OCI image layout; "
                        "refusing it"
                    )
                desc = Descriptor(
                    media_type="application/octet-stream",
                    digest="sha256:" + match.group(1),
                    size=info.size,
                )
                if into.has_blob(desc):
                    continue
                src = tar.extractfile(info)
                assert src is not None  # a regular file
                with into.receive(desc) as out:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
        except (tarfile.TarError, EOFError) as exc:
            raise ArtifactCorrupt(f"{path} is truncated or not a tar ({exc})") from None
    if index is None:
        raise ArtifactCorrupt(f"{path} is not an OCI archive: it has no index.json")
    tmp = into.path / f".index.json.tmp-{secrets.token_hex(4)}"
    tmp.write_bytes(index)
    os.replace(tmp, into.path / "index.json")
    into.index()  # parses, or says why not


def _read(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(info)
    assert f is not None
    return f.read()
