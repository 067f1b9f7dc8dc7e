"""podman's own checkpoint archives (``podman container checkpoint --export``), read as
cedana artifacts.

podman exports a container's checkpoint as a tar of its ``userdata`` directory
(libpod's ``exportCheckpoint``), zstd-compressed by default (``--compress zstd``,
``gzip`` or ``none``):

``config.dump`` (mandatory)
    libpod's ContainerConfig (JSON): id, name, image, command...
``spec.dump`` (mandatory)
    the container's OCI spec.
``checkpoint/``
    CRIU's images (``inventory.img`` mandatory) and runc's ``descriptors.json``.
``rootfs-diff.tar``, ``deleted.files`` (optional)
    the container's new and changed files, and a JSON list of deleted paths.
``devshm-checkpoint.tar``, ``network.status`` (optional)
    the content of its ``/dev/shm``, and its network's state.
``volumes/<name>.tar``
    a named volume each (refused: cedana restores no volumes yet).
``stats-dump``, ``ctr.log``, ``artifacts/``
    statistics, the container's log: not used.

:class:`PodmanArchiveFormat` (registered with :mod:`cedana.artifact.foreign`)
recognises such an archive by its first entries (a cedana artifact starts with
``manifest.json``), then :func:`open_archive` reads it whole before anything else
may: every entry must have a safe relative name and be a regular file or a
directory of the layout above (no links, devices or unknown names); the JSON files
are bounded in size and must parse; the two inner tars are read entry by entry (safe
names, no device nodes, hard links only to their own files, relative symlinks
staying inside); every member is hashed. It presents the archive as a manifest
(kind ``container``, runtime ``podman``, the checked fields of ``config.dump``, the
processes from CRIU's ``pstree.img``) over members under cedana's names: CRIU's
images at the top, ``spec.dump`` as ``container/config.json``, the rootfs changes in
``container/`` (diff format :data:`~cedana.rootfs.containers_storage.PODMAN_FORMAT`),
the rest in ``container/podman/``. Restore then runs as for cedana's own podman
checkpoints, with the same confinement.

The image's layers are looked up in this host's podman store by the image id that
``config.dump`` names (``podman image inspect``), never taken from the archive, and
recorded with their identity, so a restore into runc mounts those very layers.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import hashlib
import json
import logging
import os
import re
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, cast

import attrs
import zstandard

from cedana._safefs import SafeTree
from cedana.artifact import foreign
from cedana.artifact.manifest import HostInfo, Manifest, Member, ProcessEntry
from cedana.criu import load_image
from cedana.errors import (
    ArtifactCorrupt,
    ArtifactExists,
    CedanaError,
    NotCheckpointable,
    UnsafeArtifact,
    UntrustedArtifact,
)
from cedana.rootfs import RootfsDiff
from cedana.rootfs.containers_storage import (
    DELETED_FILES,
    PODMAN_FORMAT,
    podman_diff_paths,
)
from cedana.rootfs.overlay import DIFF_NAME, layer_identity

__all__ = ["PodmanArchive", "PodmanArchiveFormat", "open_archive"]

logger = logging.getLogger("cedana.podman")

Compression = Literal["zstd", "gzip", "none"]

#: The member names cedana presents podman's files under.
SPEC_MEMBER = "container/config.json"
CONFIG_MEMBER = "container/podman/config.dump"
DEVSHM_MEMBER = "container/podman/devshm-checkpoint.tar"
NETWORK_MEMBER = "container/podman/network.status"
DIFF_MEMBER = f"container/{DIFF_NAME}"
DELETED_MEMBER = f"container/{DELETED_FILES}"

#: podman's top-level files -> cedana's member names.
_FILES = {
    "config.dump": CONFIG_MEMBER,
    "spec.dump": SPEC_MEMBER,
    "rootfs-diff.tar": DIFF_MEMBER,
    "deleted.files": DELETED_MEMBER,
    "devshm-checkpoint.tar": DEVSHM_MEMBER,
    "network.status": NETWORK_MEMBER,
}
#: podman's files and directories that a restore does not use (read and checked only).
_UNUSED_FILES = frozenset({"stats-dump", "stats-restore", "ctr.log", "dump.log", "restore.log"})
_UNUSED_DIRS = frozenset({"artifacts"})
#: What marks podman's layout when it shows among an archive's first entries.
_MARKS = frozenset({"config.dump", "spec.dump", "checkpoint", "checkpoint/inventory.img"})
_LOOK_AT = 16
#: A CRIU image's (or runc's descriptors.json's) name in ``checkpoint/``.
_IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\Z")
_RESERVED = frozenset({"container", "manifest.json", "manifest.sig"})

#: Bounds on what is read into memory or walked.
_MAX_JSON = 16 << 20
_MAX_IMAGE_HELD = 4 << 20
_MAX_ENTRIES = 100_000
_MAX_INNER_ENTRIES = 1_000_000
_MAX_DELETED = 100_000
_CHUNK = 1 << 20

_KEEP_BYTES = (CONFIG_MEMBER, SPEC_MEMBER, DELETED_MEMBER, "descriptors.json", "pstree.img")


def _refused(path: Path, what: str, why: str) -> UnsafeArtifact:
    return UnsafeArtifact(
        f"podman checkpoint archive {path}: {what} {why}, so nothing was read from it; "
        "do not use this archive"
    )


def _damaged(path: Path, why: str) -> ArtifactCorrupt:
    return ArtifactCorrupt(
        f"podman checkpoint archive {path} is damaged or not podman's ({why}); it cannot be "
        "used: export the checkpoint again (podman container checkpoint --export)"
    )


# --- reading the archive ----------------------------------------------------------------


def _compression(path: Path) -> Compression | None:
    with open(path, "rb") as f:
        start = f.read(512)
    if start[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if start[:2] == b"\x1f\x8b":
        return "gzip"
    if len(start) == 512 and start[257:262] == b"ustar":
        return "none"
    return None


def _stream(path: Path, compression: Compression) -> BinaryIO:
    raw = open(path, "rb")  # noqa: SIM115 (closed through the stream returned)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=True
        )
    if compression == "gzip":
        return cast(BinaryIO, _ClosingGzip(raw))
    return raw


class _ClosingGzip(gzip.GzipFile):
    """A gzip stream that closes the file it reads from."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


_READ_ERRORS = (tarfile.TarError, zstandard.ZstdError, EOFError, zlib.error, gzip.BadGzipFile)


@attrs.frozen
class _Entry:
    """One entry of podman's layout: where it goes (None: read, not presented)."""

    info: tarfile.TarInfo
    name: str
    member: str | None


def _entries(path: Path, compression: Compression) -> Iterator[tuple[_Entry, IO[bytes] | None]]:
    """Every entry of the archive, checked against podman's layout, with its data stream
    (None for a directory). Raises on the first entry that does not belong."""
    seen: set[str] = set()
    try:
        with _stream(path, compression) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for count, info in enumerate(tar):
                if count >= _MAX_ENTRIES:
                    raise _refused(path, "it", f"holds more than {_MAX_ENTRIES} entries")
                entry = _classify(path, info)
                if entry is None:
                    continue
                if entry.name in seen:
                    raise _refused(path, f"entry {entry.name!r}", "is there twice")
                seen.add(entry.name)
                yield entry, tar.extractfile(info) if info.isreg() else None
    except _READ_ERRORS as exc:
        raise _damaged(path, str(exc) or type(exc).__name__) from None


def _classify(path: Path, info: tarfile.TarInfo) -> _Entry | None:
    """Where the entry ``info`` belongs in podman's layout (None for the root itself).

    Raises:
        UnsafeArtifact: An unsafe name, a type other than a file or directory, or a name
            podman's layout does not have.
        NotCheckpointable: Named volumes, which cedana does not restore.
    """
    raw = info.name
    name = raw[2:] if raw.startswith("./") else raw
    name = name.rstrip("/") if info.isdir() else name
    if name in ("", "."):
        if not info.isdir():
            raise _refused(path, f"entry {raw!r}", "has no name")
        return None
    if (
        name.startswith("/")
        or any(p in ("", ".", "..") for p in name.split("/"))
        or any(ord(c) < 0x20 or c in "\\\x7f" for c in name)
        or len(name) > 4096
    ):
        raise _refused(path, f"entry {raw!r}", "has an unsafe name (absolute, '..' or odd)")
    if not (info.isreg() or info.isdir()):
        kind = (
            "a symbolic link"
            if info.issym()
            else "a hard link"
            if info.islnk()
            else "a device node"
            if info.ischr() or info.isblk()
            else f"of tar type {info.type!r}"
        )
        raise _refused(path, f"entry {name!r}", f"is {kind}, not a file or directory")
    top, _, rest = name.partition("/")
    if top == "volumes":
        volume = rest.removesuffix(".tar") or "?"
        raise NotCheckpointable(
            f"podman checkpoint archive {path} holds named volume {volume!r} (volumes/); "
            "cedana does not restore volumes yet: export the container without them "
            "(podman container checkpoint --export --ignore-volumes) or restore it with "
            "podman itself"
        )
    if info.isdir():
        if name in ("checkpoint", *_UNUSED_DIRS) or top in _UNUSED_DIRS:
            return _Entry(info, name, None)
    elif top == "checkpoint" and rest:
        if not _IMAGE_NAME.match(rest) or rest in _RESERVED:
            raise _refused(path, f"entry {name!r}", "is not a CRIU image of checkpoint/")
        return _Entry(info, name, rest)
    elif name in _FILES:
        return _Entry(info, name, _FILES[name])
    elif name in _UNUSED_FILES or (top in _UNUSED_DIRS and rest):
        return _Entry(info, name, None)
    raise _refused(path, f"entry {name!r}", "is not part of podman's checkpoint layout")


class _Hashing:
    """Reads a stream through, hashing and counting what passes (for the inner tars)."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def _check_inner_tar(path: Path, what: str, stream: _Hashing, *, rootfs: bool) -> RootfsDiff:
    """Check the inner tar ``what`` entry by entry, reading it from ``stream``.

    Names stay inside (podman writes them relative, a leading ``/`` or ``./`` is the
    root); no device nodes; hard links only to files of the same tar; relative
    symlinks may not climb out; nothing may be written through a symlink of the tar.
    ``/dev/shm``'s tar (not ``rootfs``) may hold files and directories only.

    Returns:
        The counts of what it holds (for the manifest).
    """
    files: set[tuple[str, ...]] = set()
    links: set[tuple[str, ...]] = set()
    counts = {"files": 0, "directories": 0, "symlinks": 0, "hardlinks": 0, "bytes": 0}
    with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|") as tar:
        for count, info in enumerate(tar):
            if count >= _MAX_INNER_ENTRIES:
                raise _refused(path, what, f"holds more than {_MAX_INNER_ENTRIES} entries")
            try:
                parts = podman_diff_paths(info.name)
            except UnsafeArtifact:
                raise _refused(path, f"{what} entry {info.name!r}", "leaves the root") from None
            if any(parts[:i] in links for i in range(1, len(parts))):
                raise _refused(path, f"{what} entry {info.name!r}", "goes through a symlink")
            if info.isreg():
                files.add(parts)
                counts["files"] += 1
                counts["bytes"] += info.size
            elif info.isdir():
                counts["directories"] += bool(parts)
            elif rootfs and info.issym():
                target = info.linkname
                depth = len(parts) - 1
                for comp in target.split("/") if not target.startswith("/") else ():
                    depth += -1 if comp == ".." else int(comp not in ("", "."))
                    if depth < 0:
                        raise _refused(
                            path, f"{what} entry {info.name!r}", f"links outside ({target!r})"
                        )
                if not target or "\0" in target:
                    raise _refused(path, f"{what} entry {info.name!r}", "is an empty symlink")
                links.add(parts)
                counts["symlinks"] += 1
            elif rootfs and info.islnk():
                try:
                    target_parts = podman_diff_paths(info.linkname)
                except UnsafeArtifact:
                    target_parts = ()
                if target_parts not in files:
                    raise _refused(
                        path,
                        f"{what} entry {info.name!r}",
                        f"is a hard link to {info.linkname!r}, not a file of the same tar",
                    )
                counts["hardlinks"] += 1
            elif rootfs and info.isfifo():
                continue
            elif info.ischr() or info.isblk():
                raise _refused(
                    path,
                    f"{what} entry {info.name!r}",
                    f"is a device node {info.devmajor}:{info.devminor}; devices come from the "
                    "runtime's config",
                )
            else:
                raise _refused(path, f"{what} entry {info.name!r}", f"is of tar type {info.type!r}")
    return RootfsDiff(
        snapshotter="containers-storage",
        format=PODMAN_FORMAT,
        files=counts["files"],
        directories=counts["directories"],
        symlinks=counts["symlinks"],
        hardlinks=counts["hardlinks"],
        bytes=counts["bytes"],
    )


def _json(path: Path, name: str, data: bytes, kind: type) -> Any:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _damaged(path, f"its {name} is not JSON: {exc}") from None
    if not isinstance(value, kind):
        raise _damaged(path, f"its {name} is not a JSON {kind.__name__}")
    return value


@attrs.frozen(kw_only=True)
class _Scan:
    """What the first pass learnt: the members, the small ones' bytes, the inner tars."""

    members: tuple[Member, ...]
    held: Mapping[str, bytes]
    cores: Mapping[int, bytes]
    diff: RootfsDiff | None
    checkpointed: float


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Map a decompressor's or tar reader's error, wherever a read hits it, to damage."""
    try:
        yield
    except _READ_ERRORS as exc:
        raise _damaged(path, str(exc) or type(exc).__name__) from None


def _scan(path: Path, compression: Compression) -> _Scan:
    with _reading(path):
        return _scan_entries(path, compression)


def _scan_entries(path: Path, compression: Compression) -> _Scan:
    members: list[Member] = []
    held: dict[str, bytes] = {}
    cores: dict[int, bytes] = {}
    diff: RootfsDiff | None = None
    checkpointed = 0.0
    for entry, data in _entries(path, compression):
        if entry.member is None or data is None:
            if data is not None:
                _Hashing(data).drain()
            continue
        size = entry.info.size
        if entry.member in (CONFIG_MEMBER, SPEC_MEMBER, DELETED_MEMBER, NETWORK_MEMBER) and (
            size > _MAX_JSON
        ):
            raise _refused(path, entry.name, f"claims {size} bytes (at most {_MAX_JSON})")
        reader = _Hashing(data)
        if entry.member in (DIFF_MEMBER, DEVSHM_MEMBER):
            counted = _check_inner_tar(path, entry.name, reader, rootfs=entry.member == DIFF_MEMBER)
            if entry.member == DIFF_MEMBER:
                diff = counted
            reader.drain()
        else:
            keep = entry.member in _KEEP_BYTES or (
                entry.member.startswith("core-") and size <= _MAX_IMAGE_HELD
            )
            chunks = []
            while chunk := reader.read(_CHUNK):
                if keep:
                    chunks.append(chunk)
            if keep:
                value = b"".join(chunks)
                if entry.member.startswith("core-"):
                    pid = entry.member.removeprefix("core-").removesuffix(".img")
                    if pid.isdigit():
                        cores[int(pid)] = value
                else:
                    held[entry.member] = value
        if reader.size != size:
            raise _damaged(path, f"{entry.name} holds {reader.size} bytes, its header {size}")
        if entry.member == "inventory.img":
            checkpointed = float(entry.info.mtime)
        members.append(Member(name=entry.member, size=size, sha256=reader.sha256.hexdigest()))
    names = {m.name for m in members}
    for needed, what in (
        (CONFIG_MEMBER, "config.dump"),
        (SPEC_MEMBER, "spec.dump"),
        ("inventory.img", "checkpoint/inventory.img"),
    ):
        if needed not in names:
            raise _damaged(path, f"it has no {what}, which podman's import needs too")
    return _Scan(
        members=tuple(sorted(members, key=lambda m: m.name)),
        held=held,
        cores=cores,
        diff=diff,
        checkpointed=checkpointed,
    )


# --- presenting it as a cedana checkpoint -------------------------------------------------


def _tree(path: Path, scan: _Scan) -> tuple[ProcessEntry, ...]:
    """The dumped processes from CRIU's ``pstree.img`` (commands from their core images)."""
    pstree = scan.held.get("pstree.img")
    if pstree is None:
        raise _damaged(path, "it has no checkpoint/pstree.img")
    with tempfile.TemporaryDirectory(prefix=".cedana-podman-") as tmp:
        try:
            (Path(tmp) / "pstree.img").write_bytes(pstree)
            tasks = load_image(Path(tmp) / "pstree.img")["entries"]
            out = []
            for task in tasks:
                pid, ppid = int(task["pid"]), int(task.get("ppid") or 0)
                command = ""
                if pid in scan.cores:
                    core_path = Path(tmp) / f"core-{pid}.img"
                    core_path.write_bytes(scan.cores[pid])
                    core = load_image(core_path)["entries"][0]
                    command = str((core.get("tc") or {}).get("comm") or "")
                out.append(ProcessEntry(pid=pid, ppid=ppid, command=command))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise _damaged(path, f"its CRIU process images cannot be read ({exc})") from None
    if not out:
        raise _damaged(path, "its pstree.img lists no process")
    return tuple(out)


def _image_layers(image_id: str) -> tuple[list[str], list[str]]:
    """The layer directories of image ``image_id`` in this host's podman store (uppermost
    first) and their identities; empty when podman or the image is not there."""
    from cedana.runtimes._podman_layout import image_layers
    from cedana.runtimes.podman import PodmanCLI

    if not image_id:
        return [], []
    try:
        record = PodmanCLI().image(image_id)
    except CedanaError as exc:
        logger.debug("podman image inspect %s: %s", image_id, exc)
        return [], []
    if record is None or record.get("Id") != image_id:
        return [], []
    layers = [os.path.realpath(p) for p in image_layers(record)]
    try:
        return layers, [layer_identity(p) for p in layers]
    except OSError as exc:
        logger.debug("image %s's layers cannot be read: %s", image_id, exc)
        return [], []


def _manifest(path: Path, scan: _Scan, compression: Compression) -> Manifest:
    from cedana.runtimes._podman_layout import checked_config
    from cedana.runtimes.podman import DEFAULT_RUNC_ROOT, PODMAN

    config = _json(path, "config.dump", scan.held[CONFIG_MEMBER], dict)
    spec = _json(path, "spec.dump", scan.held[SPEC_MEMBER], dict)
    runtime = config.get("runtime") or "runc"
    if runtime != "runc" and not str(runtime).endswith("/runc"):
        raise NotCheckpointable(
            f"podman checkpoint archive {path} was made by the OCI runtime {runtime!r}; "
            "cedana restores checkpoints of podman containers run by runc"
        )
    if DELETED_MEMBER in scan.held:
        deleted = _json(path, "deleted.files", scan.held[DELETED_MEMBER] or b"[]", list)
        if len(deleted) > _MAX_DELETED or not all(isinstance(d, str) for d in deleted):
            raise _damaged(path, "its deleted.files is not a list of paths")
        for d in deleted:
            try:
                podman_diff_paths(d)
            except UnsafeArtifact:
                raise _refused(path, "deleted.files", f"names {d!r}, outside the root") from None
    else:
        deleted = []
    descriptors = _json(path, "descriptors.json", scan.held.get("descriptors.json") or b"[]", list)
    process = spec.get("process") if isinstance(spec.get("process"), dict) else {}
    root = spec.get("root") if isinstance(spec.get("root"), dict) else {}
    fields = checked_config(config)
    image_id = str(fields.get("rootfsImageID") or "")
    lower, identities = _image_layers(image_id)
    diff = scan.diff or RootfsDiff(snapshotter="containers-storage", format=PODMAN_FORMAT)
    diff = attrs.evolve(
        diff,
        whiteouts=len(deleted),
        members=tuple(
            m.removeprefix("container/")
            for m in (DIFF_MEMBER, DELETED_MEMBER)
            if m in {x.name for x in scan.members}
        ),
    )
    created = datetime.datetime.fromtimestamp(scan.checkpointed or 0, datetime.UTC)
    unknown = "unknown (a podman export)"
    return Manifest(
        created=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        host=HostInfo(kernel=unknown, arch=unknown, criu_version=unknown, hostname=unknown),
        kind="container",
        runtime=PODMAN,
        options={},
        tree=_tree(path, scan),
        workload={
            "container": {
                "id": str(fields.get("id") or ""),
                "runtime": PODMAN,
                "root": os.fspath(DEFAULT_RUNC_ROOT),
                "bundle": str(config.get("staticDir") or ""),
                "rootfs": str(root.get("path") or ""),
                "status": "checkpointed by podman",
                "config": SPEC_MEMBER,
                "descriptors": descriptors,
                "terminal": bool(process.get("terminal")),
                "cgroup_paths": {},
                "ext_unix_sk": False,
            },
            "podman": {
                "id": fields.get("id"),
                "name": fields.get("name"),
                "image": {
                    "name": fields.get("rootfsImageName"),
                    "id": fields.get("rootfsImageID"),
                    "digest": None,
                },
                "config": fields,
                "export": {"compression": compression},
            },
            "rootfs": {
                "captured": True,
                "snapshotter": "containers-storage",
                "format": PODMAN_FORMAT,
                "dir": "container",
                "lower": lower,
                "lower_identity": identities,
                "userxattr": False,
                "image": image_id,
                "diff": diff.to_json(),
            },
        },
        members=scan.members,
    )


@attrs.define(eq=False)
class PodmanArchive:
    """A podman checkpoint archive, verified and presented as a cedana artifact
    (:class:`cedana.artifact.foreign.ReadableArtifact`). Get one from :func:`open_archive`.

    Every read goes through the whole archive again and checks each member against the
    size and sha256 recorded when it was opened.
    """

    path: Path
    compression: Compression
    manifest: Manifest
    signature: None = None

    def verify(self) -> None:
        """Read the archive again and check every member against the manifest."""
        self._pass(lambda _name: None)

    def read_member(self, name: str) -> bytes:
        """One member's bytes, checked."""
        self.manifest.member(name)
        parts: list[bytes] = []
        self._pass(lambda n: parts.append if n == name else None)
        return b"".join(parts)

    def extract(self, dest: Path, *, only: Callable[[str], bool] | None = None) -> None:
        """Write the members (cedana's names, files 0600, directories 0700) into ``dest``,
        checking each; on any failure what was written is removed again.

        Raises:
            ArtifactExists: A member's file already exists under ``dest``.
        """
        tree = SafeTree(
            Path(dest),
            escape=lambda p: UnsafeArtifact(
                f"{dest}/{p} is a symlink or not a directory; extract into an empty directory"
            ),
            dir_mode=0o700,
            create_root=True,
            follow_root=True,
            logger=logger,
        )
        opened: list[int] = []

        def sink_for(name: str) -> Callable[[bytes], object] | None:
            if only is not None and not only(name):
                return None
            try:
                fd = tree.create_file(tuple(name.split("/")), 0o600)
            except FileExistsError:
                raise ArtifactExists(
                    f"{dest}/{name} already exists; extract into an empty directory"
                ) from None
            opened.append(fd)
            return lambda data: os.write(fd, data)

        try:
            self._pass(sink_for)
        except BaseException:
            for fd in opened:
                os.close(fd)
            tree.remove_created()
            raise
        for fd in opened:
            os.close(fd)
        tree.close()

    def _pass(self, sink_for: Callable[[str], Callable[[bytes], object] | None]) -> None:
        with _reading(self.path):
            self._pass_entries(sink_for)

    def _pass_entries(self, sink_for: Callable[[str], Callable[[bytes], object] | None]) -> None:
        expected = {m.name: m for m in self.manifest.members}
        seen: set[str] = set()
        for entry, data in _entries(self.path, self.compression):
            if data is None:
                continue
            if entry.member is None:
                _Hashing(data).drain()
                continue
            member = expected.get(entry.member)
            if member is None or entry.info.size != member.size:
                raise _damaged(self.path, f"{entry.name} changed since the archive was opened")
            sink = sink_for(entry.member)
            digest = hashlib.sha256()
            size = 0
            while chunk := data.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if sink is not None:
                    sink(chunk)
            if size != member.size or digest.hexdigest() != member.sha256:
                raise _damaged(self.path, f"{entry.name} changed since the archive was opened")
            seen.add(entry.member)
        missing = sorted(expected.keys() - seen)
        if missing:
            raise _damaged(self.path, f"{missing[0]} is gone since the archive was opened")


def open_archive(path: Path) -> PodmanArchive:
    """Verify podman's checkpoint archive at ``path`` whole and present it.

    Raises:
        ArtifactCorrupt: It is damaged, or lacks what podman's import needs.
        UnsafeArtifact: An entry is not safe (see the module docstring).
        NotCheckpointable: It holds named volumes, or was made by another runtime than runc.
    """
    compression = _compression(path)
    if compression is None:
        raise _damaged(path, "it is neither a zstd, a gzip nor a plain tar")
    scan = _scan(path, compression)
    manifest = _manifest(path, scan, compression)
    logger.debug("opened podman archive %s: %d members", path, len(manifest.members))
    return PodmanArchive(path=path, compression=compression, manifest=manifest)


@attrs.define
class PodmanArchiveFormat:
    """podman's checkpoint archives, as :class:`cedana.artifact.foreign.ForeignFormat`."""

    name: str = attrs.field(default="podman checkpoint export")

    def recognise(self, path: Path) -> bool:
        """A zstd, gzip or plain tar whose first entries hold podman's names and no
        ``manifest.json``."""
        try:
            compression = _compression(path)
            if compression is None:
                return False
            with _stream(path, compression) as s, tarfile.open(fileobj=s, mode="r|") as tar:
                for count, info in enumerate(tar):
                    name = info.name.removeprefix("./").rstrip("/")
                    if name == "manifest.json" or count >= _LOOK_AT:
                        return False
                    if name in _MARKS:
                        return True
        except (OSError, *_READ_ERRORS):
            return False
        return False

    def open(self, path: Path) -> PodmanArchive:
        """:func:`open_archive`."""
        return open_archive(path)

    def untrusted(self, path: Path) -> UntrustedArtifact:
        """The refusal of an archive podman wrote: it is never signed."""
        return UntrustedArtifact(
            f"{path} is a podman checkpoint archive (podman container checkpoint --export), "
            "which carries no signature, so where it came from cannot be checked and nothing "
            "was read from it; if you trust where it came from, pass trust='any' "
            "(--insecure-accept-unsigned); it is then verified and confined like any "
            "checkpoint"
        )


FORMAT = foreign.register(PodmanArchiveFormat())
