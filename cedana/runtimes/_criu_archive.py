"""Container checkpoint archives of checkpointctl's family, read as cedana artifacts.

podman (``container checkpoint --export``), CRI-O and containerd (the archive the kubelet's
checkpoint API asks for, KEP-2008) each write one container's checkpoint as a tar of the
same layout, the one ``checkpointctl`` reads:

``checkpoint/``
    CRIU's images (``inventory.img`` mandatory) and runc's ``descriptors.json``.
``config.dump``
    a ContainerConfig (JSON): libpod's whole one from podman, checkpointctl's reduced one
    (id, name, rootfsImage, rootfsImageRef, rootfsImageName, runtime, times) from CRI-O
    and containerd.
``spec.dump``
    the container's OCI spec; its ``io.container.manager`` annotation names the engine
    (``libpod``, ``cri-o``; containerd sets none).
``rootfs-diff.tar`` (+ ``deleted.files``)
    the container's changed files: podman's and CRI-O's new and changed files plus a JSON
    list of deleted paths; containerd's an OCI layer (gzip, whiteouts as ``.wh.`` files).
the engine's own files
    podman: ``network.status``, ``devshm-checkpoint.tar``, ``volumes/``, ``ctr.log``;
    CRI-O: ``bind.mounts``, its log as ``io.kubernetes.cri-o.LogPath``; containerd:
    ``status.dump`` (the CRI ContainerStatus), ``status``, ``container.log``; all:
    ``stats-dump``, ``dump.log``.

This module is the one reader of them all. :class:`ArchiveFormat` (registered with
:mod:`cedana.artifact.foreign`) recognises the family by its first entries (a cedana
artifact starts with ``manifest.json``); :func:`open_archive` reads the whole archive
before anything else may: every entry must have a safe relative name and be a regular
file or a directory of the layout (no links, devices, sparse files or unknown names, at
most so many); the JSON files are bounded in size and must parse; the inner tars are read
entry by entry (safe names, no device nodes or sparse files, hard links only to their own
files, relative symlinks staying inside); every member is hashed; CRIU's images must be of
this host's machine (their ``mtype``) and need no kernel feature it lacks (a time
namespace). Then the engine
is told from ``spec.dump`` and the files present, and that engine's :class:`Flavour`
(registered by the runtime module that owns it: podman's in :mod:`._podman_archive`,
CRI-O's and containerd's in :mod:`._kube_archive`) checks the names against its own
layout and presents the scan as a manifest. Every later read goes through the archive
again and checks each member against the digests recorded.
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
    NotCheckpointable,
    UnsafeArtifact,
    UntrustedArtifact,
)
from cedana.rootfs import RootfsDiff
from cedana.rootfs.containers_storage import podman_diff_paths
from cedana.rootfs.overlay import DIFF_NAME

__all__ = [
    "ARCHIVE",
    "CONFIG_MEMBER",
    "DELETED_MEMBER",
    "DEVSHM_MEMBER",
    "DIFF_MEMBER",
    "FAMILY",
    "FILES",
    "SPEC_MEMBER",
    "ArchiveFormat",
    "CriuArchive",
    "Flavour",
    "Scan",
    "compression_of",
    "damaged",
    "open_archive",
    "parse_json",
    "refused",
    "register_flavour",
    "write_archive",
]

logger = logging.getLogger("cedana.runtimes")

Compression = Literal["zstd", "gzip", "none"]

#: What the family is called in messages.
FAMILY = "container checkpoint archive (podman's, CRI-O's or containerd's)"

#: The member names cedana presents the archive's files under: CRIU's images at the top,
#: the spec as the container's config, the rootfs changes in ``container/``, the rest in
#: ``container/dump/`` (``/dev/shm``'s tar where cedana's own podman checkpoints hold it).
SPEC_MEMBER = "container/config.json"
DIFF_MEMBER = f"container/{DIFF_NAME}"
DELETED_MEMBER = "container/deleted.files"
DEVSHM_MEMBER = "container/podman/devshm-checkpoint.tar"
DUMP_DIR = "container/dump"

#: Every engine's top-level files that are presented -> cedana's member names.
FILES = {
    "config.dump": f"{DUMP_DIR}/config.dump",
    "spec.dump": SPEC_MEMBER,
    "rootfs-diff.tar": DIFF_MEMBER,
    "deleted.files": DELETED_MEMBER,
    "devshm-checkpoint.tar": DEVSHM_MEMBER,
    "network.status": f"{DUMP_DIR}/network.status",
    "status.dump": f"{DUMP_DIR}/status.dump",
    "bind.mounts": f"{DUMP_DIR}/bind.mounts",
}
CONFIG_MEMBER = FILES["config.dump"]
#: Members read as JSON (bounded in size).
JSON_MEMBERS = frozenset(FILES[n] for n in ("config.dump", "spec.dump", "deleted.files")) | {
    FILES["network.status"],
    FILES["status.dump"],
    FILES["bind.mounts"],
}
#: What marks the family when it shows among an archive's first entries.
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
_CHUNK = 1 << 20

_KEEP_BYTES = (*JSON_MEMBERS, "descriptors.json", "pstree.img")
#: The bounds of the members held whole that are not JSON_MEMBERS (held: bounded).
_HELD_BOUNDS = {"descriptors.json": _MAX_JSON, "pstree.img": _MAX_IMAGE_HELD}


def refused(path: Path, what: str, why: str) -> UnsafeArtifact:
    """The refusal of an unsafe archive."""
    return UnsafeArtifact(
        f"checkpoint archive {path}: {what} {why}, so nothing was read from it; "
        "do not use this archive"
    )


def damaged(path: Path, why: str) -> ArtifactCorrupt:
    """The refusal of a damaged (or not the family's) archive."""
    return ArtifactCorrupt(
        f"checkpoint archive {path} is damaged or not a {FAMILY} ({why}); it cannot be "
        "used: checkpoint the container again"
    )


# --- what each engine's archive holds ------------------------------------------------------


@attrs.frozen(kw_only=True)
class Flavour:
    """One engine's archive: its own names, how it is told apart, how it is presented.

    Attributes:
        name: What people call it (``"podman checkpoint export"``).
        engine: The engine, in messages (``"podman"``).
        files: The top-level files of :data:`FILES` its layout has.
        unused: Top-level files it has that are read and checked, never presented.
        unused_dirs: Directories of that kind.
        claims: Whether a scanned archive is this engine's (``spec.dump``'s annotations,
            ``config.dump``, the members present).
        manifest: The scanned archive presented as a cedana manifest.
    """

    name: str
    engine: str
    files: frozenset[str]
    unused: frozenset[str] = frozenset({"stats-dump", "stats-restore", "dump.log", "restore.log"})
    unused_dirs: frozenset[str] = frozenset()
    claims: Callable[[Scan], bool]
    manifest: Callable[[Path, Scan], Manifest]

    def allows(self, name: str, kind: str) -> bool:
        """Whether the top-level entry ``name`` (``kind`` ``"file"`` or ``"dir"``) is in
        this layout."""
        if kind == "dir":
            return name in self.unused_dirs
        return name in self.files or name in self.unused


_FLAVOURS: list[Flavour] = []


def register_flavour(flavour: Flavour) -> Flavour:
    """Add an engine's archive (its runtime module calls this once, at import)."""
    _FLAVOURS.append(flavour)
    return flavour


# --- reading the archive ----------------------------------------------------------------


def compression_of(path: Path) -> Compression | None:
    """zstd, gzip or a plain tar, from the first bytes; None for anything else."""
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
    """One entry of the layout: where it goes (None: read, not presented)."""

    info: tarfile.TarInfo
    name: str
    member: str | None


def _known() -> tuple[frozenset[str], frozenset[str]]:
    """Every flavour's top-level files and directories (the scan's allow-list)."""
    files = frozenset(n for f in _FLAVOURS for n in f.files | f.unused)
    dirs = frozenset(n for f in _FLAVOURS for n in f.unused_dirs)
    return files, dirs


def _entries(path: Path, compression: Compression) -> Iterator[tuple[_Entry, IO[bytes] | None]]:
    """Every entry of the archive, checked against the family's layout, with its data
    stream (None for a directory). Raises on the first entry that does not belong."""
    seen: set[str] = set()
    known = _known()
    try:
        with _stream(path, compression) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for count, info in enumerate(tar):
                if count >= _MAX_ENTRIES:
                    raise refused(path, "it", f"holds more than {_MAX_ENTRIES} entries")
                entry = _classify(path, info, known)
                if entry is None:
                    continue
                if entry.name in seen:
                    raise refused(path, f"entry {entry.name!r}", "is there twice")
                seen.add(entry.name)
                yield entry, tar.extractfile(info) if info.isreg() else None
    except _READ_ERRORS as exc:
        raise damaged(path, str(exc) or type(exc).__name__) from None


def _classify(
    path: Path, info: tarfile.TarInfo, known: tuple[frozenset[str], frozenset[str]]
) -> _Entry | None:
    """Where the entry ``info`` belongs in the layout (None for the root itself).

    Raises:
        UnsafeArtifact: An unsafe name, a type other than a file or directory, or a name
            no engine's layout has.
        NotCheckpointable: Named volumes, which cedana does not restore.
    """
    files, dirs = known
    raw = info.name
    name = raw[2:] if raw.startswith("./") else raw
    name = name.rstrip("/") if info.isdir() else name
    if name in ("", "."):
        if not info.isdir():
            raise refused(path, f"entry {raw!r}", "has no name")
        return None
    if (
        name.startswith("/")
        or any(p in ("", ".", "..") for p in name.split("/"))
        or any(ord(c) < 0x20 or c in "\\\x7f" for c in name)
        or len(name) > 4096
    ):
        raise refused(path, f"entry {raw!r}", "has an unsafe name (absolute, '..' or odd)")
    if info.sparse is not None or info.type == tarfile.GNUTYPE_SPARSE:
        raise refused(path, f"entry {name!r}", "is a sparse file, which no engine writes")
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
        raise refused(path, f"entry {name!r}", f"is {kind}, not a file or directory")
    top, _, rest = name.partition("/")
    if top == "volumes":
        volume = rest.removesuffix(".tar") or "?"
        raise NotCheckpointable(
            f"checkpoint archive {path} holds named volume {volume!r} (volumes/); "
            "cedana does not restore volumes yet: export the container without them "
            "(podman container checkpoint --export --ignore-volumes) or restore it with "
            "its engine itself"
        )
    if info.isdir():
        if name == "checkpoint" or top in dirs:
            return _Entry(info, name, None)
    elif top == "checkpoint" and rest:
        if not _IMAGE_NAME.match(rest) or rest in _RESERVED:
            raise refused(path, f"entry {name!r}", "is not a CRIU image of checkpoint/")
        return _Entry(info, name, rest)
    elif name in FILES and name in files:
        return _Entry(info, name, FILES[name])
    elif name in files or (top in dirs and rest):
        return _Entry(info, name, None)
    raise refused(path, f"entry {name!r}", "is not part of a container checkpoint's layout")


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
    """Check the inner tar ``what`` (plain or gzip) entry by entry, reading it from
    ``stream``.

    Names stay inside (the engines write them relative, a leading ``/`` or ``./`` is the
    root); no device nodes; hard links only to files of the same tar; relative symlinks
    may not climb out; nothing may be written through a symlink of the tar. A tar that is
    not a root filesystem's (``/dev/shm``'s) may hold files and directories only.

    Returns:
        The counts of what it holds (for the manifest; the format is the caller's).
    """
    files: set[tuple[str, ...]] = set()
    links: set[tuple[str, ...]] = set()
    counts = {"files": 0, "directories": 0, "symlinks": 0, "hardlinks": 0, "bytes": 0}
    with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|*") as tar:
        for count, info in enumerate(tar):
            if count >= _MAX_INNER_ENTRIES:
                raise refused(path, what, f"holds more than {_MAX_INNER_ENTRIES} entries")
            try:
                parts = podman_diff_paths(info.name)
            except UnsafeArtifact:
                raise refused(path, f"{what} entry {info.name!r}", "leaves the root") from None
            if any(parts[:i] in links for i in range(1, len(parts))):
                raise refused(path, f"{what} entry {info.name!r}", "goes through a symlink")
            if info.sparse is not None or info.type == tarfile.GNUTYPE_SPARSE:
                raise refused(path, f"{what} entry {info.name!r}", "is a sparse file")
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
                        raise refused(
                            path, f"{what} entry {info.name!r}", f"links outside ({target!r})"
                        )
                if not target or "\0" in target:
                    raise refused(path, f"{what} entry {info.name!r}", "is an empty symlink")
                links.add(parts)
                counts["symlinks"] += 1
            elif rootfs and info.islnk():
                try:
                    target_parts = podman_diff_paths(info.linkname)
                except UnsafeArtifact:
                    target_parts = ()
                if target_parts not in files:
                    raise refused(
                        path,
                        f"{what} entry {info.name!r}",
                        f"is a hard link to {info.linkname!r}, not a file of the same tar",
                    )
                counts["hardlinks"] += 1
            elif rootfs and info.isfifo():
                continue
            elif info.ischr() or info.isblk():
                raise refused(
                    path,
                    f"{what} entry {info.name!r}",
                    f"is a device node {info.devmajor}:{info.devminor}; devices come from the "
                    "runtime's config",
                )
            else:
                raise refused(path, f"{what} entry {info.name!r}", f"is of tar type {info.type!r}")
    return RootfsDiff(
        snapshotter="archive",
        files=counts["files"],
        directories=counts["directories"],
        symlinks=counts["symlinks"],
        hardlinks=counts["hardlinks"],
        bytes=counts["bytes"],
    )


def parse_json(path: Path, name: str, data: bytes, kind: type) -> Any:
    """``data`` (the archive's file ``name``) as JSON of type ``kind``.

    Raises:
        ArtifactCorrupt: It is not.
    """
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise damaged(path, f"its {name} is not JSON: {exc}") from None
    if not isinstance(value, kind):
        raise damaged(path, f"its {name} is not a JSON {kind.__name__}")
    return value


@attrs.frozen(kw_only=True)
class Scan:
    """What the first pass learnt: the members, the small ones' bytes, the inner tars.

    Attributes:
        path: The archive.
        compression: Its compression.
        members: Every presented member, with its size and sha256.
        held: The small members' bytes (the JSON files, ``pstree.img``...).
        cores: Each process's ``core-PID.img`` (for its command).
        diff: The counts of ``rootfs-diff.tar`` (None without one).
        names: The archive's top-level names.
        checkpointed: ``inventory.img``'s time.
    """

    path: Path
    compression: Compression
    members: tuple[Member, ...]
    held: Mapping[str, bytes]
    cores: Mapping[int, bytes]
    diff: RootfsDiff | None
    names: frozenset[str]
    checkpointed: float

    def json(self, member: str, kind: type, default: bytes | None = None) -> Any:
        """A held JSON member, parsed (``default`` when the archive has none).

        Raises:
            ArtifactCorrupt: It is missing or not JSON of type ``kind``.
        """
        data = self.held.get(member, default)
        if data is None:
            raise damaged(self.path, f"it has no {member.rsplit('/', 1)[-1]}")
        return parse_json(self.path, member.rsplit("/", 1)[-1], data or b"null", kind)

    def made(self, made_by: str) -> tuple[str, HostInfo]:
        """The manifest's creation time (``inventory.img``'s) and host (unknown: the
        engine ``made_by`` records neither)."""
        created = datetime.datetime.fromtimestamp(self.checkpointed or 0, datetime.UTC)
        unknown = f"unknown ({made_by})"
        host = HostInfo(kernel=unknown, arch=unknown, criu_version=unknown, hostname=unknown)
        return created.strftime("%Y-%m-%dT%H:%M:%SZ"), host

    @property
    def annotations(self) -> Mapping[str, Any]:
        """``spec.dump``'s annotations."""
        spec = self.json(SPEC_MEMBER, dict)
        annotations = spec.get("annotations")
        return annotations if isinstance(annotations, dict) else {}

    def tree(self) -> tuple[ProcessEntry, ...]:
        """The dumped processes from CRIU's ``pstree.img`` (commands from their cores)."""
        pstree = self.held.get("pstree.img")
        if pstree is None:
            raise damaged(self.path, "it has no checkpoint/pstree.img")
        with tempfile.TemporaryDirectory(prefix=".cedana-archive-") as tmp:
            try:
                (Path(tmp) / "pstree.img").write_bytes(pstree)
                tasks = load_image(Path(tmp) / "pstree.img")["entries"]
                out = []
                for task in tasks:
                    pid, ppid = int(task["pid"]), int(task.get("ppid") or 0)
                    command = ""
                    if pid in self.cores:
                        core_path = Path(tmp) / f"core-{pid}.img"
                        core_path.write_bytes(self.cores[pid])
                        core = load_image(core_path)["entries"][0]
                        command = str((core.get("tc") or {}).get("comm") or "")
                        self._check_machine(pid, core.get("mtype"))
                    out.append(ProcessEntry(pid=pid, ppid=ppid, command=command))
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise damaged(
                    self.path, f"its CRIU process images cannot be read ({exc})"
                ) from None
        if not out:
            raise damaged(self.path, "its pstree.img lists no process")
        return tuple(out)

    def _check_machine(self, pid: int, mtype: object) -> None:
        """Refuse images of another machine than this host (CRIU restores only on the
        architecture that dumped them), and a time namespace where the kernel has none."""
        machine = os.uname().machine
        wanted = _MACHINES.get(str(mtype or ""))
        if wanted is not None and not machine.startswith(wanted):
            raise NotCheckpointable(
                f"checkpoint archive {self.path}: its CRIU images are of a {wanted} machine "
                f"(process {pid}), and this host is {machine}; restore it on a {wanted} host"
            )
        if any(m.name.startswith("timens-") for m in self.members) and not os.path.exists(
            "/proc/self/ns/time"
        ):
            raise NotCheckpointable(
                f"checkpoint archive {self.path}: its CRIU images hold a time namespace, and "
                "this kernel has none (CONFIG_TIME_NS); restore it on a host that has them"
            )


#: CRIU's core image ``mtype`` -> the machine (``uname -m``) it restores on.
_MACHINES = {
    "X86_64": "x86_64",
    "AARCH64": "aarch64",
    "ARM": "arm",
    "PPC64": "ppc64",
    "S390": "s390x",
    "MIPS": "mips64",
    "LOONGARCH64": "loongarch64",
    "RISCV64": "riscv64",
}


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Map a decompressor's or tar reader's error, wherever a read hits it, to damage."""
    try:
        yield
    except _READ_ERRORS as exc:
        raise damaged(path, str(exc) or type(exc).__name__) from None


def _scan(path: Path, compression: Compression) -> Scan:
    with _reading(path):
        return _scan_entries(path, compression)


def _scan_entries(path: Path, compression: Compression) -> Scan:
    members: list[Member] = []
    held: dict[str, bytes] = {}
    cores: dict[int, bytes] = {}
    names: set[str] = set()
    diff: RootfsDiff | None = None
    checkpointed = 0.0
    inner = {DIFF_MEMBER: True, DEVSHM_MEMBER: False}
    for entry, data in _entries(path, compression):
        names.add(entry.name.partition("/")[0])
        if entry.member is None or data is None:
            if data is not None:
                _Hashing(data).drain()
            continue
        size = entry.info.size
        bound = _HELD_BOUNDS.get(entry.member, _MAX_JSON if entry.member in JSON_MEMBERS else None)
        if bound is not None and size > bound:
            raise refused(path, entry.name, f"claims {size} bytes (at most {bound})")
        reader = _Hashing(data)
        if entry.member in inner:
            counted = _check_inner_tar(path, entry.name, reader, rootfs=inner[entry.member])
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
            raise damaged(path, f"{entry.name} holds {reader.size} bytes, its header {size}")
        if entry.member == "inventory.img":
            checkpointed = float(entry.info.mtime)
        members.append(Member(name=entry.member, size=size, sha256=reader.sha256.hexdigest()))
    present = {m.name for m in members}
    for needed, what in (
        (CONFIG_MEMBER, "config.dump"),
        (SPEC_MEMBER, "spec.dump"),
        ("inventory.img", "checkpoint/inventory.img"),
    ):
        if needed not in present:
            raise damaged(path, f"it has no {what}, which every engine's restore needs too")
    return Scan(
        path=path,
        compression=compression,
        members=tuple(sorted(members, key=lambda m: m.name)),
        held=held,
        cores=cores,
        diff=diff,
        names=frozenset(names),
        checkpointed=checkpointed,
    )


def _flavour(scan: Scan) -> Flavour:
    """The engine whose archive ``scan`` is, its names checked against that layout."""
    flavour = next((f for f in _FLAVOURS if f.claims(scan)), None)
    if flavour is None:
        raise damaged(
            scan.path,
            "its spec.dump names no engine cedana knows (io.container.manager), and it is "
            "not containerd's (no status.dump)",
        )
    for name in sorted(scan.names - {"checkpoint"}):
        if not (flavour.allows(name, "file") or flavour.allows(name, "dir")):
            raise refused(
                scan.path, f"entry {name!r}", f"is not part of {flavour.engine}'s checkpoint layout"
            )
    return flavour


@attrs.define(eq=False)
class CriuArchive:
    """An archive of the family, verified and presented as a cedana artifact
    (:class:`cedana.artifact.foreign.ReadableArtifact`). Get one from :func:`open_archive`.

    Every read goes through the whole archive again and checks each member against the
    size and sha256 recorded when it was opened.
    """

    path: Path
    compression: Compression
    flavour: Flavour
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
                raise damaged(self.path, f"{entry.name} changed since the archive was opened")
            sink = sink_for(entry.member)
            digest = hashlib.sha256()
            size = 0
            while chunk := data.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if sink is not None:
                    sink(chunk)
            if size != member.size or digest.hexdigest() != member.sha256:
                raise damaged(self.path, f"{entry.name} changed since the archive was opened")
            seen.add(entry.member)
        missing = sorted(expected.keys() - seen)
        if missing:
            raise damaged(self.path, f"{missing[0]} is gone since the archive was opened")


def open_archive(path: Path) -> CriuArchive:
    """Verify the archive at ``path`` whole, tell its engine and present it.

    Raises:
        ArtifactCorrupt: It is damaged, or lacks what its engine's restore needs.
        UnsafeArtifact: An entry is not safe (see the module docstring).
        NotCheckpointable: It holds what cedana cannot restore (named volumes, a runtime
            other than runc...).
    """
    compression = compression_of(path)
    if compression is None:
        raise damaged(path, "it is neither a zstd, a gzip nor a plain tar")
    scan = _scan(path, compression)
    flavour = _flavour(scan)
    manifest = flavour.manifest(path, scan)
    logger.debug("opened %s %s: %d members", flavour.name, path, len(manifest.members))
    return CriuArchive(path=path, compression=compression, flavour=flavour, manifest=manifest)


@attrs.define
class ArchiveFormat:
    """The family's archives, as :class:`cedana.artifact.foreign.ForeignFormat`."""

    name: str = attrs.field(default=FAMILY)

    def recognise(self, path: Path) -> bool:
        """A zstd, gzip or plain tar whose first entries hold the family's names and no
        ``manifest.json``."""
        try:
            compression = compression_of(path)
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

    def open(self, path: Path) -> CriuArchive:
        """:func:`open_archive`."""
        return open_archive(path)

    def untrusted(self, path: Path) -> UntrustedArtifact:
        """The refusal of an archive an engine wrote: it is never signed."""
        return UntrustedArtifact(
            f"{path} is a {FAMILY}: podman checkpoint archive (checkpoint --export) or the "
            "kubelet's checkpoint archive, which carries no signature, so where it came "
            "from cannot be checked and nothing was read from it; if you trust where it "
            "came from, pass trust='any' (--insecure-accept-unsigned); it is then verified "
            "and confined like any checkpoint"
        )


ARCHIVE = foreign.register(ArchiveFormat())


# --- writing one --------------------------------------------------------------------------


def write_archive(
    archive: Path,
    *,
    images: Path,
    top: Path,
    exclude: frozenset[str] = frozenset(),
) -> None:
    """Write the family's layout as the plain tar ``archive``: every file of the
    directory ``top`` at the top, then ``checkpoint/`` with CRIU's images (every file of
    ``images`` but ``exclude``), files 0600, as the engines write them."""
    with tarfile.open(archive, "w:", format=tarfile.PAX_FORMAT) as tar:
        for member in sorted(os.listdir(top)):
            tar.add(top / member, arcname=member, filter=_private)
        tar.add(images, arcname="checkpoint", recursive=False, filter=_private)
        for member in sorted(os.listdir(images)):
            if member not in exclude and (images / member).is_file():
                tar.add(images / member, arcname=f"checkpoint/{member}", filter=_private)


def _private(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o700 if info.isdir() else 0o600
    return info
