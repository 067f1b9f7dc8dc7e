"""Image stores, and moving an image from one to another through the runtimes' own tools.

A checkpoint's rootfs changes apply on top of its image's layers, so restoring it into
another runtime needs that image in the target's store. The stores know an image by
different ids (docker and podman by their config's digest, which a conversion between
their formats changes; containerd by name), but every one of them records its layers'
uncompressed digests, and so their chain id: that is what :meth:`ImageStore.find` matches.

Moving is ``save`` from the source's store into a docker-archive tar (``docker save``
through the Engine API, ``podman save --format docker-archive``, ``ctr images export``)
and ``load`` of it into the target's (the Engine API's load, ``podman load``, ``ctr images
import``, which also unpacks it for containerd's overlayfs snapshotter): the formats
every one of them reads. When the source's store cannot be reached, the error names the
image and the commands that bring it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

from cedana.container.portable import ImageFacts
from cedana.errors import (
    CedanaError,
    ImageNotFound,
    RuntimeTimeout,
    RuntimeUnavailable,
    UnsafeArtifact,
)
from cedana.staging import scratch_dir

__all__ = [
    "ContainerdImages",
    "DockerImages",
    "Found",
    "ImageStore",
    "PodmanImages",
    "RuncLayers",
    "bring",
    "candidates",
]

logger = logging.getLogger("cedana.images")


@attrs.frozen
class Found:
    """An image in one store: how it names it, its id there, its layers' chain id."""

    ref: str
    id: str
    chain_id: str | None


class ImageStore(Protocol):
    """One runtime's image store, as moving an image needs it."""

    @property
    def what(self) -> str:
        """The store, for messages (``docker at unix:///run/docker.sock``)."""
        ...

    def find(self, image: ImageFacts) -> Found | None:
        """The image with ``image``'s layers (by its name or id); None when none is here."""
        ...

    def save(self, ref: str, archive: Path) -> None:
        """Write image ``ref`` as a docker-archive tar at ``archive``."""
        ...

    def load(self, archive: Path) -> None:
        """Load the image tar ``archive`` into the store."""
        ...

    def save_command(self, ref: str, archive: str) -> str:
        """The command a person runs to do :meth:`save`."""
        ...

    def load_command(self, archive: str) -> str:
        """The command a person runs to do :meth:`load`."""
        ...


def candidates(name: str) -> list[str]:
    """The names a store may give image ``name`` after loading it: as it is, and as
    docker's reference rules complete it (``docker.io/``, ``library/``, ``:latest``)."""
    out = [name]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        full = name
    else:
        full = f"docker.io/{name if rest else 'library/' + name}"
    if ":" not in full.rpartition("/")[2] and "@" not in full:
        full += ":latest"
    out.append(full)
    out.append(f"localhost/{name}")
    return list(dict.fromkeys(out))


def _chain(diff_ids: Sequence[Any]) -> str | None:
    from cedana.runtimes._containerd_api import chain_id

    layers = [str(d) for d in diff_ids]
    return chain_id(layers) if layers else None


def _matches(image: ImageFacts, chain: str | None, ident: str, store: str) -> bool:
    if image.chain_id is not None:
        return chain == image.chain_id
    return bool(ident) and image.ids.get(store) in (ident, ident.removeprefix("sha256:"))


def _run(argv: Sequence[str], what: str, timeout: float = 300) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise RuntimeUnavailable(f"{argv[0]} is not installed, so {what} cannot run") from None
    except subprocess.TimeoutExpired:
        raise RuntimeTimeout(f"{what} took longer than {timeout:.0f}s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no message"]
        raise CedanaError(f"{what} failed: {lines[-1].strip()}")


# --- docker ------------------------------------------------------------------------------


@attrs.define(eq=False)
class DockerImages:
    """docker's image store, through its Engine API (``save``/``load``)."""

    address: str | None = None
    _client: Any = attrs.field(default=None, alias="client")

    def _api(self) -> Any:
        if self._client is None:
            from cedana.runtimes._docker_api import DockerClient

            self._client = DockerClient(self.address)
        return self._client

    @property
    def what(self) -> str:
        return f"docker at {self.address or 'DOCKER_HOST or the default socket'}"

    def _flag(self) -> str:
        return f" -H {shlex.quote(self.address)}" if self.address else ""

    def find(self, image: ImageFacts) -> Found | None:
        api = self._api()
        for ref in [
            *candidates(image.name),
            *([image.ids["docker"]] if "docker" in image.ids else []),
        ]:
            try:
                record = api.inspect_image(ref)
            except ImageNotFound:
                continue
            chain = _chain((record.get("RootFS") or {}).get("Layers") or ())
            if _matches(image, chain, str(record.get("Id") or ""), "docker"):
                return Found(ref=ref, id=str(record["Id"]), chain_id=chain)
        return None

    def save(self, ref: str, archive: Path) -> None:
        with open(archive, "xb") as out:
            self._api().save_image(ref, out)

    def load(self, archive: Path) -> None:
        self._api().load_image(archive)

    def save_command(self, ref: str, archive: str) -> str:
        return f"docker{self._flag()} save -o {archive} {shlex.quote(ref)}"

    def load_command(self, archive: str) -> str:
        return f"docker{self._flag()} load -i {archive}"


# --- podman ------------------------------------------------------------------------------


@attrs.define(eq=False)
class PodmanImages:
    """podman's store (containers/storage), through podman's command line."""

    cli: Any = None

    def _cli(self) -> Any:
        if self.cli is None:
            from cedana.runtimes.podman import PodmanCLI

            self.cli = PodmanCLI()
        return self.cli

    @property
    def what(self) -> str:
        return "podman's store"

    def find(self, image: ImageFacts) -> Found | None:
        cli = self._cli()
        for ref in [
            *candidates(image.name),
            *([image.ids["podman"]] if "podman" in image.ids else []),
        ]:
            record = cli.image(ref)
            if record is None:
                continue
            chain = _chain((record.get("RootFS") or {}).get("Layers") or ())
            if _matches(image, chain, str(record.get("Id") or ""), "podman"):
                return Found(ref=ref, id=str(record["Id"]), chain_id=chain)
        return None

    def save(self, ref: str, archive: Path) -> None:
        self._cli().run(
            "save", "--quiet", "--format", "docker-archive", "-o", os.fspath(archive), "--", ref
        )

    def load(self, archive: Path) -> None:
        self._cli().run("load", "--quiet", "-i", os.fspath(archive))

    def save_command(self, ref: str, archive: str) -> str:
        return f"podman save --format docker-archive -o {archive} {shlex.quote(ref)}"

    def load_command(self, archive: str) -> str:
        return f"podman load -i {archive}"


# --- containerd --------------------------------------------------------------------------


@attrs.define(eq=False)
class ContainerdImages:
    """A containerd namespace's images, through its API (lookup) and ``ctr`` (export,
    import: containerd's API has no import; ``ctr`` is containerd's own client for it)."""

    address: str
    namespace: str
    snapshotter: str = "overlayfs"
    _client: Any = attrs.field(default=None, alias="client")

    def _api(self) -> Any:
        if self._client is None:
            from cedana.runtimes._containerd_api import ContainerdClient

            self._client = ContainerdClient(self.address, self.namespace)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def what(self) -> str:
        return f"containerd namespace {self.namespace!r} at {self.address}"

    def _ctr(self) -> list[str]:
        return ["ctr", "-a", self.address, "-n", self.namespace]

    def find(self, image: ImageFacts) -> Found | None:
        from cedana.errors import ContainerNotFound

        api = self._api()
        for ref in candidates(image.name):
            try:
                record = api.image(ref)
            except ContainerNotFound:
                continue
            chain = record.chain_id if record.diff_ids else None
            if _matches(image, chain, record.digest, "containerd") and api.snapshot_exists(
                self.snapshotter, chain or ""
            ):
                return Found(ref=ref, id=record.digest, chain_id=chain)
        return None

    def save(self, ref: str, archive: Path) -> None:
        _run([*self._ctr(), "images", "export", os.fspath(archive), ref], "ctr images export")

    def load(self, archive: Path) -> None:
        argv = [*self._ctr(), "images", "import", "--snapshotter", self.snapshotter]
        _run([*argv, os.fspath(archive)], "ctr images import")

    def save_command(self, ref: str, archive: str) -> str:
        return shlex.join([*self._ctr(), "images", "export", archive, ref])

    def load_command(self, archive: str) -> str:
        return shlex.join(
            [*self._ctr(), "images", "import", "--snapshotter", self.snapshotter, archive]
        )


# --- plain runc: its layers as an image ---------------------------------------------------


def _layer_tar(layer: Path, dest: Path) -> str:
    """Tar the overlay layer directory ``layer`` as an OCI layer at ``dest`` (overlay's
    whiteouts, 0:0 character devices, become ``.wh.`` files); its diff id."""

    def entry(info: tarfile.TarInfo) -> tarfile.TarInfo:
        if info.ischr() and info.devmajor == 0 and info.devminor == 0:
            head, _, tail = info.name.rpartition("/")
            info.name = f"{head}/.wh.{tail}" if head else f".wh.{tail}"
            info.type, info.devmajor, info.devminor = tarfile.REGTYPE, 0, 0
        info.mtime = int(info.mtime)
        return info

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(tar.gettarinfo(layer, arcname="."))
        for child in sorted(os.listdir(layer)):
            tar.add(layer / child, arcname=child, filter=entry)
    digest = hashlib.sha256()
    with open(dest, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


@attrs.define(eq=False)
class RuncLayers:
    """The layer directories a plain runc container's overlay ran on, as the one "store"
    its image can come from: built once into OCI layers (uppermost last), saved as a
    docker-archive tar that the other stores load."""

    layers: tuple[str, ...]
    config: Mapping[str, Any] = attrs.field(factory=dict)
    _work: Path | None = attrs.field(default=None, init=False)
    _built: list[tuple[Path, str]] = attrs.field(factory=list, init=False)

    @property
    def what(self) -> str:
        return f"the directories runc's container ran on ({', '.join(self.layers)})"

    def _build(self) -> list[tuple[Path, str]]:
        if not self._built:
            import tempfile

            self._work = Path(tempfile.mkdtemp(prefix=".cedana-layers-"))
            for n, layer in enumerate(reversed(self.layers)):  # bottom first
                tar = self._work / f"layer-{n}.tar"
                self._built.append((tar, _layer_tar(Path(layer), tar)))
        return self._built

    def close(self) -> None:
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work, self._built = None, []

    def find(self, image: ImageFacts) -> Found | None:
        try:
            chain = _chain([diff for _, diff in self._build()])
        except OSError as exc:
            raise CedanaError(f"cannot read the layer directories: {exc}") from exc
        return Found(ref=image.name, id="", chain_id=chain)

    def save(self, ref: str, archive: Path) -> None:
        built = self._build()
        process = self.config.get("process") or {}
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {
                    "Env": list(process.get("env") or []),
                    "Cmd": list(process.get("args") or []),
                    "WorkingDir": str(process.get("cwd") or "/"),
                },
                "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in built]},
            }
        ).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        names = [f"{diff.removeprefix('sha256:')}/layer.tar" for _, diff in built]
        manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": names}])
        with tarfile.open(archive, "x") as out:
            for data, name in ((manifest.encode(), "manifest.json"), (config, config_name)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
            for (tar, _), name in zip(built, names, strict=True):
                out.add(tar, arcname=name)

    def load(self, archive: Path) -> None:
        raise CedanaError("runc has no image store to load an image into")

    def save_command(self, ref: str, archive: str) -> str:
        layer = shlex.quote(self.layers[0])
        return f"tar -C {layer} -c . (a layer of an image of your own, tagged {ref})"

    def load_command(self, archive: str) -> str:
        return "(runc has no image store)"


# --- moving ------------------------------------------------------------------------------


#: An image reference as the stores write them; anything else (an option's leading
#: dash, spaces) is not passed to their command lines.
_REFERENCE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._/:@+-]*\Z")
#: An image's id in a store (docker's and containerd's ``sha256:...``, podman's hex).
_ID = re.compile(r"(?:sha256:)?[0-9a-f]{1,64}\Z")


def bring(
    image: ImageFacts,
    target: ImageStore,
    source: ImageStore | None,
    *,
    work_dir: str | os.PathLike[str] | None = None,
) -> Found:
    """``image`` in the ``target`` store: found there, or moved there from ``source``.

    Raises:
        ImageNotFound: It is in neither (or ``source`` cannot be reached); the message
            names the image and the commands that bring it.
    """
    if not _REFERENCE.match(image.name) or ".." in image.name.split("/"):
        raise UnsafeArtifact(
            f"the checkpoint's image name {image.name!r} is not an image reference, so "
            "nothing was restored; do not use this checkpoint"
        )
    for store, ident in image.ids.items():
        if ident and not _ID.match(ident):
            raise UnsafeArtifact(
                f"the checkpoint's {store} image id {ident!r} is not an image id, so "
                "nothing was restored; do not use this checkpoint"
            )
    found = target.find(image)
    if found is not None:
        return found
    layers = f" (layers {image.chain_id})" if image.chain_id else ""
    how = ""
    if source is not None:
        how = (
            f"; bring it there from {source.what}: {source.save_command(image.name, 'image.tar')}"
            f" && {target.load_command('image.tar')}"
        )
    else:
        how = f"; load it there first ({target.load_command('IMAGE.tar')})"
    at_source: Found | None = None
    reason = ""
    if source is not None:
        try:
            at_source = source.find(image)
        except CedanaError as exc:
            reason = f" ({source.what} cannot be reached: {exc})"
        else:
            reason = "" if at_source is not None else f" (nor is it in {source.what})"
    if at_source is None:
        raise ImageNotFound(
            f"image {image.name!r}{layers}, which the checkpoint's root filesystem changes "
            f"apply on, is not in {target.what}{reason}{how}"
        )
    if image.chain_id is None:
        image = attrs.evolve(image, chain_id=at_source.chain_id)
    logger.debug("image %s: %s -> %s", image.name, source.what if source else "", target.what)
    with scratch_dir(".cedana-image-", parent=work_dir, fills="the image") as work:
        archive = work / "image.tar"
        source.save(at_source.ref, archive)  # type: ignore[union-attr]
        target.load(archive)
    found = target.find(image)
    if found is None:
        raise ImageNotFound(
            f"image {image.name!r}{layers} was loaded into {target.what} from {source.what}, "  # type: ignore[union-attr]
            "but is not found there with the same layers; load it by hand" + how
        )
    return found
