"""OCI image layouts: a directory of content-addressed blobs, an index and the images in it.

The layout (image-spec ``image-layout.md``) is what ``oci:DIR`` names and what an
``oci-archive:`` tar holds::

    oci-layout            {"imageLayoutVersion": "1.0.0"}
    index.json            an image index: one descriptor per image, tagged by its
                          org.opencontainers.image.ref.name annotation
    blobs/sha256/<hex>    manifests, configs and layers, each named by its digest

:class:`Layout` writes blobs through a temporary name and renames them only once their
digest is known (or, for a blob received from elsewhere, checked), so a blob under its
name always holds its content. Reading checks every blob against its descriptor (size and
sha256) before it is used: a layout, like an archive, is untrusted input.

Building an image is three calls::

    layout = Layout.create(path)
    layer = add_layer(layout, "changes.tar", compression="gzip")   # -> Layer
    image = write_image(layout, layers=[layer], tag="app:v1")       # config made from them

:func:`write_image` also takes a config of the caller's (a base image's, extended with
:func:`image_config`), ready-made layer descriptors (a base image's blobs already in the
layout), manifest annotations, and an ``artifact_type`` for an OCI artifact (whose config
is then the empty descriptor).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import platform
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import attrs
import zstandard

from cedana.errors import ArtifactCorrupt, ArtifactExists, ReferenceNotFound, UnsupportedFormat
from cedana.oci import media

__all__ = [
    "Compression",
    "Descriptor",
    "Image",
    "Layer",
    "Layout",
    "add_layer",
    "host_platform",
    "image_config",
    "write_image",
]

logger = logging.getLogger("cedana.oci")

Compression = Literal["gzip", "zstd", "none"]

_CHUNK = 1 << 20
#: Manifests and configs are small; one larger than this is refused rather than parsed.
MAX_JSON = 4 << 20
_LAYOUT_FILE = {"imageLayoutVersion": "1.0.0"}


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    """Canonical-ish JSON: sorted keys, no spaces (a digest names these exact bytes)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@attrs.frozen(kw_only=True)
class Descriptor:
    """A pointer to a blob: its media type, digest and size (image-spec ``descriptor.md``)."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] | None = None
    artifact_type: str | None = None
    platform: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.platform:
            out["platform"] = dict(self.platform)
        return out

    @classmethod
    def from_json(cls, data: object, what: str = "a descriptor") -> Descriptor:
        """Parse and check one descriptor (from an untrusted manifest or index)."""
        if not isinstance(data, Mapping):
            raise ArtifactCorrupt(f"{what} is not a JSON object")
        digest = data.get("digest")
        size = data.get("size")
        media_type = data.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            raise ArtifactCorrupt(f"{what} has no mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ArtifactCorrupt(f"{what} has no valid size")
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            raise UnsupportedFormat(f"{what} has digest {digest!r}; only sha256 is read")
        try:
            media.check_digest(digest, what)
        except ValueError as exc:
            raise ArtifactCorrupt(str(exc)) from None
        annotations = data.get("annotations")
        if annotations is not None and not (
            isinstance(annotations, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())
        ):
            raise ArtifactCorrupt(f"{what} has annotations that are not strings")
        artifact_type = data.get("artifactType")
        plat = data.get("platform")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=dict(annotations) if annotations else None,
            artifact_type=artifact_type if isinstance(artifact_type, str) else None,
            platform=dict(plat) if isinstance(plat, Mapping) else None,
        )


@attrs.frozen(kw_only=True)
class Layer:
    """A layer blob in a layout and its ``diff_id`` (the sha256 of the uncompressed tar,
    which the image config lists)."""

    descriptor: Descriptor
    diff_id: str


@attrs.frozen(kw_only=True)
class Image:
    """One image (or artifact) of a layout: its manifest and what it points at.

    Attributes:
        layout: The layout holding its blobs.
        descriptor: The manifest's descriptor (``digest`` is the image's id in registries).
        manifest: The manifest, parsed.
        config: The config's descriptor.
        layers: The layers' descriptors, base first.
        config_json: The image config, parsed (empty for an artifact's empty config).
    """

    layout: Layout
    descriptor: Descriptor
    manifest: Mapping[str, Any]
    config: Descriptor
    layers: tuple[Descriptor, ...]
    config_json: Mapping[str, Any]

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def artifact_type(self) -> str | None:
        """The manifest's ``artifactType`` (or, as image-spec 1.1 falls back, its config's
        media type when that is no image config)."""
        value = self.manifest.get("artifactType")
        if isinstance(value, str):
            return value
        if self.config.media_type not in (media.IMAGE_CONFIG, media.DOCKER_CONFIG):
            return self.config.media_type
        return None

    @property
    def annotations(self) -> Mapping[str, str]:
        value = self.manifest.get("annotations")
        return dict(value) if isinstance(value, Mapping) else {}

    @property
    def diff_ids(self) -> list[str]:
        """The config's ``rootfs.diff_ids`` (empty for an artifact)."""
        rootfs = self.config_json.get("rootfs")
        ids = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
        return [str(i) for i in ids] if isinstance(ids, list) else []

    def blobs(self) -> list[Descriptor]:
        """The config and the layers: every blob the manifest needs."""
        return [self.config, *self.layers]


def host_platform() -> dict[str, str]:
    """This machine's ``{"os": "linux", "architecture": ...}`` in OCI's (Go's) words."""
    machine = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )
    return {"os": "linux", "architecture": arch}


@attrs.define(eq=False)
class Layout:
    """An OCI image layout directory (``oci:DIR``)."""

    path: Path

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> Layout:
        """Make a new, empty layout at ``path`` (which must not exist, or be an empty dir)."""
        where = Path(path)
        if where.exists() and (not where.is_dir() or any(where.iterdir())):
            raise ArtifactExists(f"{where} exists and is not an empty directory; remove it")
        (where / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        layout = cls(where)
        layout._write_json("oci-layout", _LAYOUT_FILE)
        layout._write_json("index.json", _empty_index())
        return layout

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Layout:
        """Open an existing layout; checks its ``oci-layout`` file."""
        where = Path(path)
        marker = where / "oci-layout"
        try:
            with open(marker, "rb") as f:
                data = json.loads(f.read(4096))
        except FileNotFoundError:
            raise ReferenceNotFound(
                f"{where} is no OCI image layout (no oci-layout file)"
            ) from None
        except (ValueError, UnicodeDecodeError):
            raise ArtifactCorrupt(f"{marker} is not JSON") from None
        if not isinstance(data, dict) or data.get("imageLayoutVersion") != "1.0.0":
            raise UnsupportedFormat(f"{marker}: image layout version {data!r} is not 1.0.0")
        return cls(where)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str]) -> Layout:
        """Open the layout at ``path``, or make one there if nothing (or an empty dir) is."""
        where = Path(path)
        if (where / "oci-layout").exists():
            return cls.open(where)
        return cls.create(where)

    # --- blobs -------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob ``digest`` lives (the digest is checked: it becomes a file name)."""
        media.check_digest(digest)
        return self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def has_blob(self, desc: Descriptor) -> bool:
        """Whether the blob is here with the descriptor's size (its content is checked
        when it is read)."""
        try:
            return self.blob_path(desc.digest).stat().st_size == desc.size
        except FileNotFoundError:
            return False

    @contextlib.contextmanager
    def _temporary(self) -> Iterator[tuple[Path, IO[bytes]]]:
        tmp = self.path / "blobs" / "sha256" / f".tmp-{secrets.token_hex(8)}"
        try:
            with open(tmp, "xb") as out:
                yield tmp, out
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def blob_writer(self, media_type: str) -> Iterator[_BlobSink]:
        """Write a blob of unknown digest: ``with layout.blob_writer(type) as w:
        w.write(...)``; afterwards ``w.descriptor`` says what was stored."""
        with self._temporary() as (tmp, out):
            sink = _BlobSink(out, media_type)
            yield sink
            out.flush()
            os.fsync(out.fileno())
            desc = sink.finish()
            os.replace(tmp, self.blob_path(desc.digest))
        logger.debug("stored blob %s (%d bytes)", desc.digest, desc.size)

    def add_bytes(
        self,
        data: bytes,
        media_type: str,
        *,
        annotations: Mapping[str, str] | None = None,
        artifact_type: str | None = None,
    ) -> Descriptor:
        """Store ``data`` as a blob; return its descriptor."""
        with self.blob_writer(media_type) as sink:
            sink.write(data)
        return attrs.evolve(sink.descriptor, annotations=annotations, artifact_type=artifact_type)

    def add_file(
        self,
        source: str | os.PathLike[str],
        media_type: str,
        *,
        annotations: Mapping[str, str] | None = None,
    ) -> Descriptor:
        """Copy the file ``source`` in as a blob; return its descriptor."""
        with open(source, "rb") as src, self.blob_writer(media_type) as sink:
            while chunk := src.read(_CHUNK):
                sink.write(chunk)
        return attrs.evolve(sink.descriptor, annotations=annotations)

    @contextlib.contextmanager
    def receive(self, desc: Descriptor) -> Iterator[IO[bytes]]:
        """Write a blob whose descriptor is known (pulled, or read from an archive): the
        bytes written are checked against it on exit and stored only when they match.

        Raises:
            ArtifactCorrupt: More or other bytes than the descriptor says.
        """
        with self._temporary() as (tmp, out):
            checked = _CheckedWriter(out, desc)
            yield checked  # type: ignore[misc]  # a write()-only file, all callers need
            checked.finish()
            out.flush()
            os.fsync(out.fileno())
            os.replace(tmp, self.blob_path(desc.digest))

    def copy_blob_from(self, other: Layout, desc: Descriptor) -> None:
        """Copy one blob from another layout (checked on the way)."""
        if self.has_blob(desc):
            return
        with open(other.blob_path(desc.digest), "rb") as src, self.receive(desc) as out:
            while chunk := src.read(_CHUNK):
                out.write(chunk)

    def verify_blob(self, desc: Descriptor) -> None:
        """Check that the blob is here, of the descriptor's size and digest.

        Raises:
            ArtifactCorrupt: Missing, truncated, or other content.
        """
        path = self.blob_path(desc.digest)
        h = hashlib.sha256()
        size = 0
        try:
            with open(path, "rb") as f:
                # Read no further than one chunk past its size: a file that never ends
                # (a link to a device in the layout) is refused, not hashed forever.
                while size <= desc.size and (chunk := f.read(_CHUNK)):
                    h.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise ArtifactCorrupt(f"{self.path} lacks blob {desc.digest}") from None
        if size != desc.size or "sha256:" + h.hexdigest() != desc.digest:
            raise ArtifactCorrupt(
                f"{self.path}: blob {desc.digest} holds other content (sha256:{h.hexdigest()}, "
                f"{size} bytes, not {desc.size}); the layout was modified or damaged"
            )

    def read_blob(self, desc: Descriptor, *, limit: int = MAX_JSON) -> bytes:
        """The blob's bytes, checked against the descriptor (small blobs only)."""
        if desc.size > limit:
            raise ArtifactCorrupt(f"{desc.digest} is {desc.size} bytes, more than {limit}")
        try:
            with open(self.blob_path(desc.digest), "rb") as f:
                data = f.read(desc.size + 1)  # one byte more says it is longer
        except FileNotFoundError:
            raise ArtifactCorrupt(f"{self.path} lacks blob {desc.digest}") from None
        if len(data) != desc.size or "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
            raise ArtifactCorrupt(f"{self.path}: blob {desc.digest} holds other content")
        return data

    def read_json(self, desc: Descriptor) -> dict[str, Any]:
        """A JSON blob (manifest, index, config), checked and parsed."""
        data = self.read_blob(desc)
        try:
            value = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise ArtifactCorrupt(f"{self.path}: blob {desc.digest} is not JSON") from None
        if not isinstance(value, dict):
            raise ArtifactCorrupt(f"{self.path}: blob {desc.digest} is not a JSON object")
        return value

    # --- the index -----------------------------------------------------------------------

    def index(self) -> dict[str, Any]:
        """``index.json``, parsed."""
        path = self.path / "index.json"
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_JSON + 1)
        except FileNotFoundError:
            raise ArtifactCorrupt(f"{self.path} is an image layout without index.json") from None
        if len(raw) > MAX_JSON:
            raise ArtifactCorrupt(f"{path} is larger than {MAX_JSON} bytes")
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ArtifactCorrupt(f"{path} is not JSON") from None
        if not isinstance(value, dict) or not isinstance(value.get("manifests", []), list):
            raise ArtifactCorrupt(f"{path} is not an image index")
        return value

    def manifests(self) -> list[Descriptor]:
        """The descriptors ``index.json`` lists."""
        return [
            Descriptor.from_json(d, f"{self.path}/index.json entry {i}")
            for i, d in enumerate(self.index().get("manifests", []))
        ]

    def tag(self, desc: Descriptor, name: str | None) -> None:
        """List ``desc`` in ``index.json``, named ``name`` (its ref.name annotation); an
        entry of the same name is replaced. The index is rewritten atomically."""
        index = self.index()
        annotations = dict(desc.annotations or {})
        if name is not None:
            annotations[media.ANNOTATION_REF_NAME] = name
        entry = attrs.evolve(desc, annotations=annotations or None).to_json()
        kept = [
            d
            for d in index.get("manifests", [])
            if not (
                isinstance(d, dict)
                and (
                    (
                        name is not None
                        and d.get("annotations", {}).get(media.ANNOTATION_REF_NAME) == name
                    )
                    or (
                        name is None and d.get("digest") == desc.digest and not d.get("annotations")
                    )
                )
            )
        ]
        index["manifests"] = [*kept, entry]
        index.setdefault("schemaVersion", 2)
        index.setdefault("mediaType", media.IMAGE_INDEX)
        self._write_json("index.json", index)

    def resolve(self, name: str | None = None) -> Descriptor:
        """The index entry named ``name`` or, without a name, the layout's only image.

        Raises:
            ReferenceNotFound: No such name, or no name and not exactly one image.
        """
        entries = self.manifests()
        if name is None:
            if len(entries) == 1:
                return entries[0]
            names = sorted(
                (d.annotations or {}).get(media.ANNOTATION_REF_NAME, d.digest) for d in entries
            )
            raise ReferenceNotFound(
                f"{self.path} holds {len(entries)} images"
                + (f" ({', '.join(names)}); name one (oci:DIR:NAME)" if names else "")
            )
        for d in entries:
            ref = (d.annotations or {}).get(media.ANNOTATION_REF_NAME)
            if ref == name or (ref is not None and ref.rsplit(":", 1)[-1] == name and "/" in ref):
                return d
        raise ReferenceNotFound(f"{self.path} holds no image named {name!r}")

    def image(self, which: str | Descriptor | None = None) -> Image:
        """The image named ``which`` (a ref name, a descriptor, or None for the only one),
        its manifest, config and layer descriptors checked. An index entry that is itself
        an index (a multi-platform image) resolves to this host's platform's image."""
        desc = which if isinstance(which, Descriptor) else self.resolve(which)
        for _ in range(4):  # index -> manifest, bounded
            if media.oci_type(desc.media_type) != media.IMAGE_INDEX:
                break
            desc = _pick_platform(self.read_json(desc), f"{self.path}: {desc.digest}")
        return self.parse_image(desc, self.read_json(desc))

    def parse_image(self, desc: Descriptor, manifest: Mapping[str, Any]) -> Image:
        """An :class:`Image` from a manifest already read (and checked)."""
        where = f"manifest {desc.digest}"
        kind = media.oci_type(str(manifest.get("mediaType") or desc.media_type))
        if kind != media.IMAGE_MANIFEST or manifest.get("schemaVersion") != 2:
            raise UnsupportedFormat(f"{where} is a {kind!r}, not an image manifest")
        config = Descriptor.from_json(manifest.get("config"), f"{where}'s config")
        layers = manifest.get("layers", [])
        if not isinstance(layers, list):
            raise ArtifactCorrupt(f"{where}'s layers are not a list")
        parsed = tuple(
            Descriptor.from_json(d, f"{where}'s layer {i}") for i, d in enumerate(layers)
        )
        config_json: Mapping[str, Any] = {}
        if media.oci_type(config.media_type) == media.IMAGE_CONFIG and self.has_blob(config):
            config_json = self.read_json(config)
        return Image(
            layout=self,
            descriptor=desc,
            manifest=manifest,
            config=config,
            layers=parsed,
            config_json=config_json,
        )

    def verify(self, image: Image) -> None:
        """Check every blob ``image`` needs is here with its digest."""
        for desc in image.blobs():
            self.verify_blob(desc)

    def _write_json(self, name: str, data: Mapping[str, Any]) -> None:
        tmp = self.path / f".{name}.tmp-{secrets.token_hex(4)}"
        try:
            with open(tmp, "xb") as f:
                f.write(json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / name)
        finally:
            tmp.unlink(missing_ok=True)


def _empty_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": media.IMAGE_INDEX, "manifests": []}


def _pick_platform(index: Mapping[str, Any], where: str) -> Descriptor:
    """This host's entry of a multi-platform index (the only entry when it names none)."""
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise ArtifactCorrupt(f"{where} is an image index without manifests")
    parsed = [Descriptor.from_json(d, f"{where} entry {i}") for i, d in enumerate(entries)]
    if len(parsed) == 1:
        return parsed[0]
    want = host_platform()
    for d in parsed:
        p = d.platform or {}
        if p.get("os") == want["os"] and p.get("architecture") == want["architecture"]:
            return d
    raise ReferenceNotFound(f"{where} has no image for {want['os']}/{want['architecture']}")


class _BlobSink:
    """Hashes and counts what is written to a blob's temporary file."""

    def __init__(self, out: IO[bytes], media_type: str) -> None:
        self._out = out
        self._media_type = media_type
        self._hash = hashlib.sha256()
        self._size = 0
        self.descriptor: Descriptor

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._hash.update(data)
        self._size += len(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def finish(self) -> Descriptor:
        self.descriptor = Descriptor(
            media_type=self._media_type,
            digest="sha256:" + self._hash.hexdigest(),
            size=self._size,
        )
        return self.descriptor


class _CheckedWriter:
    """Writes a blob of known descriptor; refuses a byte past its size, checks the digest."""

    def __init__(self, out: IO[bytes], desc: Descriptor) -> None:
        self._out = out
        self._desc = desc
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> int:
        self._size += len(data)
        if self._size > self._desc.size:
            raise ArtifactCorrupt(
                f"blob {self._desc.digest} is longer than its descriptor's {self._desc.size} bytes"
            )
        self._hash.update(data)
        self._out.write(data)
        return len(data)

    def finish(self) -> None:
        got = "sha256:" + self._hash.hexdigest()
        if self._size != self._desc.size or got != self._desc.digest:
            raise ArtifactCorrupt(
                f"blob {self._desc.digest} arrived as {got} ({self._size} of {self._desc.size} "
                "bytes): it was tampered with or damaged; nothing was kept"
            )


# --- building images -----------------------------------------------------------------------


_LAYER_TYPES: dict[str, str] = {
    "gzip": media.LAYER_GZIP,
    "zstd": media.LAYER_ZSTD,
    "none": media.LAYER_TAR,
}


def add_layer(
    layout: Layout,
    tar: str | os.PathLike[str] | IO[bytes],
    *,
    compression: Compression = "gzip",
    level: int | None = None,
) -> Layer:
    """Compress an uncompressed layer tar into ``layout``; return the layer with its
    ``diff_id``.

    gzip (the default) is what every runtime reads; zstd (``tar+zstd``) is read by podman
    and containerd >= 1.5 and is smaller and faster. The gzip header carries no name and
    no time, so the same tar gives the same blob.
    """
    if compression not in _LAYER_TYPES:
        raise ValueError(f"compression is {compression!r}, not one of gzip, zstd, none")
    with contextlib.ExitStack() as stack:
        path_given = isinstance(tar, (str, os.PathLike))
        src: IO[bytes] = stack.enter_context(open(tar, "rb")) if path_given else tar  # type: ignore[arg-type,assignment]
        diff = hashlib.sha256()
        with layout.blob_writer(_LAYER_TYPES[compression]) as sink:
            out: Any = sink
            if compression == "gzip":
                out = gzip.GzipFile(
                    filename="",
                    mode="wb",
                    fileobj=sink,
                    compresslevel=level or 6,
                    mtime=0,
                )
            elif compression == "zstd":
                out = zstandard.ZstdCompressor(level=level or 3).stream_writer(
                    sink,  # type: ignore[arg-type]
                    closefd=False,
                )
            while chunk := src.read(_CHUNK):
                diff.update(chunk)
                out.write(chunk)
            if out is not sink:
                out.close()
    return Layer(descriptor=sink.descriptor, diff_id="sha256:" + diff.hexdigest())


def image_config(
    layers: Sequence[Layer | str],
    *,
    base: Mapping[str, Any] | None = None,
    created: str | None = None,
    comment: str | None = None,
) -> dict[str, Any]:
    """An image config: ``base``'s (or a bare linux one for this host's architecture),
    with ``layers``' diff_ids appended to its ``rootfs`` and one history entry each."""
    config: dict[str, Any] = json.loads(json.dumps(base)) if base else dict(host_platform())
    config.setdefault("os", "linux")
    config.setdefault("architecture", host_platform()["architecture"])
    rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs.setdefault("type", "layers")
    ids = rootfs.setdefault("diff_ids", [])
    history = config.setdefault("history", []) if base is None or "history" in base else None
    for layer in layers:
        ids.append(layer.diff_id if isinstance(layer, Layer) else layer)
        if history is not None:
            entry: dict[str, Any] = {"created_by": comment or "cedana"}
            if created:
                entry["created"] = created
            history.append(entry)
    if created:
        config["created"] = created
    return config


def write_image(
    layout: Layout,
    *,
    layers: Sequence[Layer | Descriptor],
    config: Mapping[str, Any] | Descriptor | None = None,
    annotations: Mapping[str, str] | None = None,
    artifact_type: str | None = None,
    tag: str | None = None,
) -> Image:
    """Write an image manifest over blobs already in ``layout`` and list it in its index.

    Args:
        layers: The layers, base first: :class:`Layer` (from :func:`add_layer`) or
            descriptors of blobs already in the layout (a base image's).
        config: The image config (a dict, written as a blob), a descriptor of one already
            written, or None: made from ``layers`` (:func:`image_config`); for an artifact
            (``artifact_type`` given) None means the empty config ``{}``.
        annotations: The manifest's annotations.
        artifact_type: Makes this an OCI artifact of that type (image-spec 1.1).
        tag: The name it is listed under in ``index.json`` (ref.name).

    Returns:
        The image as written (its ``digest`` is the manifest's).
    """
    descs = [la.descriptor if isinstance(la, Layer) else la for la in layers]
    for d in descs:
        if not layout.has_blob(d):
            raise ArtifactCorrupt(f"{layout.path} lacks layer blob {d.digest}")
    if isinstance(config, Descriptor):
        config_desc = config
    elif config is None and artifact_type is not None:
        config_desc = layout.add_bytes(media.EMPTY_JSON, media.EMPTY_CONFIG)
    else:
        if config is None:
            if not all(isinstance(la, Layer) for la in layers):
                raise ValueError("write_image needs config= when a layer is a bare descriptor")
            config = image_config([la for la in layers if isinstance(la, Layer)])
        config_desc = layout.add_bytes(_json_bytes(config), media.IMAGE_CONFIG)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media.IMAGE_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [d.to_json() for d in descs],
    }
    if artifact_type:
        manifest["artifactType"] = artifact_type
    if annotations:
        manifest["annotations"] = dict(annotations)
    manifest_desc = layout.add_bytes(_json_bytes(manifest), media.IMAGE_MANIFEST)
    if artifact_type:
        manifest_desc = attrs.evolve(manifest_desc, artifact_type=artifact_type)
    layout.tag(manifest_desc, tag)
    logger.debug("wrote image %s (%d layers) in %s", manifest_desc.digest, len(descs), layout.path)
    return layout.parse_image(manifest_desc, manifest)


def remove_tree(path: Path) -> None:
    """Remove what a failed write left (a directory or a file), quietly."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
