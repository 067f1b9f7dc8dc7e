"""The overlay snapshotter: an overlay upper directory as a plain tar, and back.

An overlay mount shows its read-only lower directories with the upper
directory on top; everything the container changed is in the upper directory:
new and modified files (with their modes, owners and extended attributes),
deletions as *whiteouts* (character devices 0:0) and directories that hide
the lower content as *opaque* (the ``trusted.overlay.opaque`` attribute).

:func:`capture_upper` writes the upper directory as an uncompressed POSIX
(pax) tar, whiteouts as character devices 0:0 and extended attributes as
``SCHILY.xattr.NAME`` records, the form GNU tar's ``--xattrs`` reads. Of
overlay's own attributes only those that describe the tree (``opaque``,
``redirect``, ``whiteout``, ``whiteouts``) are kept; the ones naming inodes of
this mount (``origin``, ``impure``, ``nlink``, ``uuid``...) are dropped, and a
metadata-only copy-up (``metacopy``) is stored with its full content read
through the merged view.

:func:`apply_upper` writes such a tar into a fresh upper directory. The tar
sits inside a verified artifact, but its entries are checked one by one all
the same: names must stay inside the target (no absolute names, no ``..``),
every directory on the way is opened without following symlinks, hard links
must point at files of the same tar, and relative symlinks must not climb
out of the root (absolute ones are resolved inside the container's root at
run time, so they are kept as they are). Device nodes other than whiteouts
are refused (a container's devices are the runtime's to grant), and so are
extended attributes that steer the kernel rather than describe the tree:
overlay's ``origin``, ``metacopy``, ``upper``, ``index``... (only those
:func:`capture_upper` keeps are taken, a ``redirect`` only as a name inside
the lower layers) and other ``trusted.*`` ones. The whole tar is checked
before its first entry is written. Setuid files and file capabilities are
kept, as an image keeps them: the directories restore puts them in are
root-only.

:func:`layer_identity` digests a lower layer's tree, so that restore mounts a
recorded layer only if it is still the directory it was at checkpoint.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import hashlib
import logging
import os
import secrets
import shutil
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import attrs

from cedana._safefs import SafeTree
from cedana.errors import ArtifactCorrupt, UnsafeArtifact
from cedana.rootfs import OVERLAY, RootfsDiff
from cedana.rootfs.idmap import IdShift
from cedana.rootfs.mounts import find_mount, make_shared, mount, overlay_options

__all__ = [
    "DIFF_NAME",
    "OverlayLayers",
    "OverlaySnapshotter",
    "apply_upper",
    "capture_upper",
    "check_upper",
    "layer_identity",
    "same_layer",
]

logger = logging.getLogger("cedana.rootfs")

#: The member ``capture`` writes.
DIFF_NAME = "rootfs-diff.tar"

_XATTR_PAX = "SCHILY.xattr."
_OVERLAY_PREFIXES = ("trusted.overlay.", "user.overlay.")
# Overlay attributes that describe the tree and stay valid on the same lower layers.
_KEPT_OVERLAY_XATTRS = frozenset({"opaque", "redirect", "whiteout", "whiteouts"})
_CHUNK = 1 << 20


@attrs.frozen(kw_only=True)
class OverlayLayers:
    """The layers of an overlay mount: lower directories (top first), upper, work.

    Attributes:
        lower: The lower directories, uppermost first.
        upper: The upper directory; None for a read-only overlay.
        work: The work directory; None for a read-only overlay.
        userxattr: Overlay keeps its attributes as ``user.overlay.*`` (unprivileged mounts).
    """

    lower: tuple[str, ...]
    upper: str | None = None
    work: str | None = None
    userxattr: bool = False

    @classmethod
    def from_options(cls, options: list[str]) -> OverlayLayers:
        """Read the layers from an overlay mount's (unescaped) super options."""
        lower: list[str] = []
        upper = work = None
        userxattr = False
        for opt in options:
            key, _, value = opt.partition("=")
            if key == "lowerdir":
                lower += _split_lowerdir(value)
            elif key in ("lowerdir+", "datadir+"):
                lower.append(value)
            elif key == "upperdir":
                upper = value
            elif key == "workdir":
                work = value
            elif key == "userxattr":
                userxattr = True
        return cls(lower=tuple(lower), upper=upper, work=work, userxattr=userxattr)

    @classmethod
    def of(cls, rootfs: Path, pid: int | str = "self") -> OverlayLayers | None:
        """The layers of the overlay mounted at ``rootfs``; None if it is not an overlay."""
        entry = find_mount(rootfs, pid)
        if entry is None or entry.fstype != "overlay":
            return None
        return cls.from_options(entry.super_option_list())

    @classmethod
    def writing_into(cls, rootfs: Path, upper: str | os.PathLike[str]) -> OverlayLayers | None:
        """The layers of the overlay mounted at ``rootfs`` if it writes into ``upper`` (a
        store's layer directory, as the store reports it); None otherwise."""
        live = cls.of(rootfs)
        if live is None or live.upper is None:
            return None
        return live if os.path.realpath(live.upper) == os.path.realpath(upper) else None

    def mount(self, target: Path) -> None:
        """Mount these layers as an overlay on ``target``, a shared mount.

        Shared, because a container root that was a slave of a shared mount when it was
        dumped (docker's, on a shared data root) restores only on a shared root: CRIU
        makes the restored root a slave of it again. A private root restores on it too.
        """
        data = overlay_options(self.lower, self.upper, self.work, userxattr=self.userxattr)
        mount("overlay", target, "overlay", data)
        make_shared(target)


def _split_lowerdir(value: str) -> list[str]:
    r"""Split ``lowerdir=a:b`` on unescaped colons (overlay writes ``\:`` for a colon)."""
    out, cur, i = [], "", 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            cur += value[i + 1]
            i += 2
            continue
        if c == ":":
            out.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    if cur:
        out.append(cur)
    # "a::b" separates data-only layers; empty parts carry nothing.
    return [p for p in out if p]


# --------------------------------------------------------------------------- capture


def _overlay_xattr(name: str) -> str | None:
    """The short name of an overlay private attribute, or None for any other."""
    for prefix in _OVERLAY_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return None


def _read_xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno_mod.ENOTSUP, errno_mod.EPERM):
            return {}
        raise
    out = {}
    for name in names:
        with contextlib.suppress(FileNotFoundError, OSError):
            out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


class _Counts:
    def __init__(self) -> None:
        self.files = self.directories = self.symlinks = self.hardlinks = 0
        self.whiteouts = self.opaque = self.special = self.bytes = 0
        self.skipped: list[str] = []

    def diff(self, members: tuple[str, ...]) -> RootfsDiff:
        return RootfsDiff(
            snapshotter="overlay",
            members=members,
            files=self.files,
            directories=self.directories,
            symlinks=self.symlinks,
            hardlinks=self.hardlinks,
            whiteouts=self.whiteouts,
            opaque=self.opaque,
            special=self.special,
            bytes=self.bytes,
            skipped=tuple(self.skipped),
        )


def _walk(top: str, prefix: str = "") -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative name, path, lstat) of every entry under ``top``, parents first, sorted."""
    with os.scandir(top) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = prefix + entry.name
        st = entry.stat(follow_symlinks=False)
        yield rel, entry.path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(entry.path, rel + "/")


def capture_upper(
    upper: Path, out: IO[bytes], *, merged: Path | None = None, shift: IdShift | None = None
) -> RootfsDiff:
    """Write the upper directory ``upper`` as a tar to ``out``; return the counts.

    Args:
        upper: The overlay upper directory.
        out: A binary file open for writing.
        merged: The mounted overlay, to read files whose upper copy holds only
            metadata (``metacopy``); when None such files are refused.
        shift: The container's user namespace mappings: owners are written as the
            container sees them (:meth:`IdShift.inside`); None writes the host's.

    Raises:
        ValueError: A metacopy file and no ``merged`` view to read it through.
    """
    counts = _Counts()
    seen_inodes: dict[tuple[int, int], str] = {}
    with tarfile.open(
        fileobj=out, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        # The root's owner and mode (overlay shows the upper root's); not counted.
        st = os.lstat(upper)
        root = tarfile.TarInfo(".")
        root.type = tarfile.DIRTYPE
        root.mode = stat.S_IMODE(st.st_mode)
        root.uid, root.gid = _owner(st, shift)
        root.mtime = st.st_mtime_ns // 1_000_000_000
        tar.addfile(root)
        for rel, path, st in _walk(os.fspath(upper)):
            info = tarfile.TarInfo(rel)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = _owner(st, shift)
            info.uname = info.gname = ""
            info.mtime = st.st_mtime_ns // 1_000_000_000
            # tarfile's float mtime loses nanoseconds; the pax record keeps them exactly.
            pax: dict[str, str] = {"mtime": _ns_text(st.st_mtime_ns)}
            metacopy = False
            for name, value in _read_xattrs(path).items():
                short = _overlay_xattr(name)
                if short == "metacopy":
                    metacopy = True
                if short is not None and short not in _KEPT_OVERLAY_XATTRS:
                    continue
                if short == "opaque" and stat.S_ISDIR(st.st_mode):
                    counts.opaque += 1
                pax[_XATTR_PAX + name] = value.decode("utf-8", "surrogateescape")
            info.pax_headers = pax
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                info.type = tarfile.DIRTYPE
                counts.directories += 1
                tar.addfile(info)
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen_inodes:
                    info.type = tarfile.LNKTYPE
                    info.linkname = seen_inodes[key]
                    counts.hardlinks += 1
                    tar.addfile(info)
                    continue
                seen_inodes[key] = rel
                source = path
                if metacopy:
                    if merged is None:
                        raise ValueError(
                            f"{rel} holds only metadata in the upper directory (overlay "
                            "metacopy); its content needs the mounted overlay"
                        )
                    source = os.path.join(merged, rel)
                fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with open(fd, "rb") as f:
                    info.type = tarfile.REGTYPE
                    info.size = os.fstat(f.fileno()).st_size
                    tar.addfile(info, f)
                counts.files += 1
                counts.bytes += info.size
            elif stat.S_ISLNK(mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                counts.symlinks += 1
                tar.addfile(info)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                if stat.S_ISCHR(mode) and st.st_rdev == 0:
                    counts.whiteouts += 1
                else:
                    counts.special += 1
                tar.addfile(info)
            elif stat.S_ISFIFO(mode):
                info.type = tarfile.FIFOTYPE
                counts.special += 1
                tar.addfile(info)
            else:  # sockets: bound by a process, recreated by it, not carried
                counts.skipped.append(rel)
    return counts.diff((DIFF_NAME,))


def _owner(st: os.stat_result, shift: IdShift | None) -> tuple[int, int]:
    """An entry's owner as the diff records it: the host's, or shifted into the container."""
    if shift is None:
        return st.st_uid, st.st_gid
    return shift.inside(st.st_uid, st.st_gid)


# --------------------------------------------------------------------------- apply


def _ns_text(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{seconds}.{rest:09d}"


def _mtime_ns(info: tarfile.TarInfo) -> int:
    """The entry's mtime in nanoseconds, exact when its pax record holds them."""
    raw = info.pax_headers.get("mtime", "")
    seconds, _, fraction = raw.partition(".")
    if seconds.isdigit() and (not fraction or fraction.isdigit()):
        return int(seconds) * 1_000_000_000 + int((fraction + "0" * 9)[:9])
    return int(info.mtime * 1_000_000_000)


def _unsafe(name: str, why: str) -> UnsafeArtifact:
    return UnsafeArtifact(
        f"the root filesystem changes hold an unsafe entry {name!r} ({why}), so nothing was "
        "restored; do not use this checkpoint"
    )


def _parts(name: str) -> list[str]:
    """The components of a tar entry name that must stay inside the target."""
    if name.startswith("/"):
        raise _unsafe(name, "an absolute name")
    parts = [p for p in name.rstrip("/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(name, "a '..' component")
    return parts


def _check_symlink(parts: list[str], target: str, name: str) -> None:
    if not target or "\0" in target:
        raise _unsafe(name, "an empty symlink")
    if target.startswith("/"):
        return
    # Walk the target from the link's directory; climbing above the root is refused.
    depth = len(parts) - 1
    for comp in target.split("/"):
        if comp == "..":
            depth -= 1
            if depth < 0:
                raise _unsafe(name, f"a symlink to {target!r}, outside the root filesystem")
        elif comp not in ("", "."):
            depth += 1


def _check_xattr(info: tarfile.TarInfo, name: str, short: str | None, raw: bytes) -> None:
    """Refuse an extended attribute a diff may not set on an entry.

    Overlay's own attributes steer the kernel: ``origin``, ``upper``,
    ``metacopy``, ``index``... name inodes and data elsewhere, so only those
    :func:`capture_upper` keeps are taken, each where overlay uses it, and a
    ``redirect`` only as a name inside the lower layers. Other ``trusted.*``
    attributes are for host administrators, never a container's.
    """
    if short is None:
        if name.startswith("trusted."):
            raise _unsafe(info.name, f"a host-only attribute {name}")
        return
    if short not in _KEPT_OVERLAY_XATTRS:
        raise _unsafe(info.name, f"overlay attribute {name}, which no captured diff holds")
    if short in ("opaque", "redirect", "whiteouts") and not info.isdir():
        raise _unsafe(info.name, f"overlay attribute {name} on a non-directory")
    if short == "redirect":
        text = raw.decode("utf-8", "surrogateescape")
        parts = text[1:].split("/") if text.startswith("/") else [text]
        if "\0" in text or any(p in ("", ".", "..") for p in parts):
            raise _unsafe(info.name, f"an overlay redirect to {text!r}")


def _set_xattrs(target: str | int, info: tarfile.TarInfo, *, userxattr: bool) -> None:
    for key, value in info.pax_headers.items():
        if not key.startswith(_XATTR_PAX):
            continue
        name = key[len(_XATTR_PAX) :]
        short = _overlay_xattr(name)
        raw = value.encode("utf-8", "surrogateescape")
        _check_xattr(info, name, short, raw)
        if short is not None:
            name = ("user.overlay." if userxattr else "trusted.overlay.") + short
        if isinstance(target, int):
            os.setxattr(target, name, raw)
        else:
            os.setxattr(target, name, raw, follow_symlinks=False)


def apply_upper(
    diff: Path, target: Path, *, userxattr: bool = False, shift: IdShift | None = None
) -> RootfsDiff:
    """Write the tar ``diff`` (from :func:`capture_upper`) into the upper directory ``target``.

    Args:
        diff: The tar file.
        target: An existing directory, normally empty and not mounted yet.
        userxattr: The overlay that will use ``target`` keeps its attributes as
            ``user.overlay.*`` rather than ``trusted.overlay.*``.
        shift: The user namespace mappings of the container ``target`` is for, when the
            diff records owners as a container sees them: they are stored as host ids
            (:meth:`IdShift.outside`); None stores them as recorded.

    Raises:
        UnsafeArtifact: An entry would land outside ``target`` or link outside it.
        OSError: Writing failed.
    """
    counts = _Counts()
    dir_times: list[tuple[tuple[str, ...], int]] = []
    files: set[tuple[str, ...]] = set()
    with tarfile.open(diff, mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        # Every entry is checked before the first is written, so a refused diff leaves
        # ``target`` as it was.
        entries = _checked_entries(tar)
        if shift is not None:
            for info, _ in entries:
                info.uid, info.gid = shift.outside(info.uid, info.gid)
        writer = SafeTree(
            target,
            escape=lambda path: _unsafe(path, "a path through a symlink or a file"),
            dir_mode=0o755,
            logger=logger,
        )
        try:
            for info, parts in entries:
                if not parts:
                    if info.isdir():  # the root itself: owner and mode only
                        root_fd = writer.directory(())
                        os.fchown(root_fd, info.uid, info.gid)
                        os.fchmod(root_fd, info.mode & 0o7777)
                    continue
                _apply_one(
                    tar,
                    info,
                    parts,
                    writer,
                    counts=counts,
                    files=files,
                    dir_times=dir_times,
                    userxattr=userxattr,
                )
            # Directory times last: creating their entries touched them.
            for parts, mtime_ns in reversed(dir_times):
                fd = writer.directory(parts, create=False)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            writer.close()
    return counts.diff((DIFF_NAME,))


def check_upper(diff: Path) -> None:
    """Check every entry of the tar ``diff`` as :func:`apply_upper` will (headers only),
    so a restore refuses an unsafe diff before it makes a container to apply it to.

    Raises:
        UnsafeArtifact: The first entry :func:`apply_upper` would refuse.
        ArtifactCorrupt: ``diff`` is not a tar.
    """
    try:
        with tarfile.open(diff, mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
            _checked_entries(tar)
    except tarfile.TarError as exc:
        raise ArtifactCorrupt(
            f"the root filesystem changes are not a tar ({exc}); do not use this checkpoint"
        ) from None


def _checked_entries(tar: tarfile.TarFile) -> list[tuple[tarfile.TarInfo, tuple[str, ...]]]:
    """The tar's entries with their name components, every one checked (headers only).

    Raises:
        UnsafeArtifact: The first entry that would escape the target, link outside
            it, make a device, or set an attribute a diff may not.
    """
    out = []
    seen: set[tuple[str, ...]] = set()
    files: set[tuple[str, ...]] = set()
    for info in tar:
        parts = tuple(_parts(info.name))
        out.append((info, parts))
        if not parts:
            continue
        if parts in seen:
            raise _unsafe(info.name, "listed twice")
        seen.add(parts)
        for key, value in info.pax_headers.items():
            if key.startswith(_XATTR_PAX):
                name = key[len(_XATTR_PAX) :]
                raw = value.encode("utf-8", "surrogateescape")
                _check_xattr(info, name, _overlay_xattr(name), raw)
        if info.isdir() or info.isfifo():
            continue
        if info.isreg():
            files.add(parts)
        elif info.islnk():
            if tuple(_parts(info.linkname)) not in files:
                raise _unsafe(
                    info.name, f"a hard link to {info.linkname!r}, not a file of this diff"
                )
        elif info.issym():
            _check_symlink(list(parts), info.linkname, info.name)
        elif info.ischr() or info.isblk():
            if info.isblk() or info.devmajor or info.devminor:
                raise _unsafe(
                    info.name,
                    f"a device node {info.devmajor}:{info.devminor}, not a whiteout; devices "
                    "come from the runtime's config",
                )
        else:
            raise _unsafe(info.name, f"an entry of tar type {info.type!r}")
    return out


def _apply_one(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    parts: tuple[str, ...],
    writer: SafeTree,
    *,
    counts: _Counts,
    files: set[tuple[str, ...]],
    dir_times: list[tuple[tuple[str, ...], int]],
    userxattr: bool,
) -> None:
    name = info.name
    mtime_ns = _mtime_ns(info)
    if info.isdir():
        fd = writer.directory(parts)
        os.fchown(fd, info.uid, info.gid)
        os.fchmod(fd, info.mode & 0o7777)
        _set_xattrs(fd, info, userxattr=userxattr)
        if any(k.endswith(".overlay.opaque") for k in info.pax_headers):
            counts.opaque += 1
        dir_times.append((parts, mtime_ns))
        counts.directories += 1
        return
    dirfd = writer.directory(parts[:-1])
    base = parts[-1]
    path = f"/proc/self/fd/{dirfd}/{base}"
    writer.clear(parts)
    if info.isreg():
        fd = writer.create_file(parts, 0o600)
        try:
            source = tar.extractfile(info)
            if source is not None:
                while chunk := source.read(_CHUNK):
                    os.write(fd, chunk)
            os.fchown(fd, info.uid, info.gid)
            os.fchmod(fd, info.mode & 0o7777)  # after chown, which clears set-id bits
            _set_xattrs(fd, info, userxattr=userxattr)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        files.add(parts)
        counts.files += 1
        counts.bytes += info.size
        return
    if info.islnk():
        link_parts = tuple(_parts(info.linkname))
        if link_parts not in files:
            raise _unsafe(name, f"a hard link to {info.linkname!r}, not a file of this diff")
        writer.link(parts, link_parts)
        counts.hardlinks += 1
        return
    if info.issym():
        _check_symlink(list(parts), info.linkname, name)
        writer.symlink(parts, info.linkname)
        os.chown(base, info.uid, info.gid, dir_fd=dirfd, follow_symlinks=False)
        _set_xattrs(path, info, userxattr=userxattr)
        os.utime(base, ns=(mtime_ns, mtime_ns), dir_fd=dirfd, follow_symlinks=False)
        counts.symlinks += 1
        return
    if info.ischr() or info.isblk() or info.isfifo():
        kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK if info.isblk() else stat.S_IFIFO
        device = os.makedev(info.devmajor, info.devminor) if not info.isfifo() else 0
        if not info.isfifo() and (info.isblk() or device != 0):
            # A node on the host's filesystem is a way to the host's device for whoever
            # reaches it; a container's devices are the runtime's to grant.
            raise _unsafe(
                name,
                f"a device node {info.devmajor}:{info.devminor}, not a whiteout; devices come "
                "from the runtime's config",
            )
        writer.mknod(parts, kind | 0o600, device)
        os.chown(base, info.uid, info.gid, dir_fd=dirfd, follow_symlinks=False)
        # Just made by mknod, so not a symlink: chmod may follow the name.
        os.chmod(base, info.mode & 0o7777, dir_fd=dirfd)
        _set_xattrs(path, info, userxattr=userxattr)
        os.utime(base, ns=(mtime_ns, mtime_ns), dir_fd=dirfd, follow_symlinks=False)
        if info.ischr() and device == 0:
            counts.whiteouts += 1
        else:
            counts.special += 1
        return
    raise _unsafe(name, f"an entry of tar type {info.type!r}")


# --------------------------------------------------------------------------- the snapshotter


@attrs.define
class OverlaySnapshotter:
    """A plain overlay mount's writable layer: its upper directory, captured as a tar, or
    made afresh and filled from one.

    Args:
        layers: The overlay: to capture from (:func:`cedana.rootfs.snapshotter_for` reads
            it from the mount), or to restore into (its ``upper`` and ``work`` are made
            by :meth:`prepare`, below a directory that exists).
    """

    layers: OverlayLayers | None = None
    name: str = "overlay"
    format: str = OVERLAY
    _made: list[Path] = attrs.field(factory=list, init=False, repr=False)

    def _writable_layers(self) -> tuple[OverlayLayers, Path]:
        """The layers captured from (or restored into), and their upper directory."""
        if self.layers is None or self.layers.upper is None:
            raise ValueError(
                "OverlaySnapshotter captures the overlay it is given, with an upper directory: "
                "OverlaySnapshotter(OverlayLayers.of(rootfs)), as snapshotter_for makes it"
            )
        return self.layers, Path(self.layers.upper)

    def layers_json(self) -> dict[str, Any]:
        """The lower layers (and ``userxattr``) restore mounts the changes on."""
        return layers_json(self._writable_layers()[0])

    def capture(self, rootfs: Path, dest: Path, *, shift: IdShift | None = None) -> RootfsDiff:
        """Write the changes of the overlay mounted at ``rootfs`` as ``dest/rootfs-diff.tar``
        (owners shifted into the container by ``shift``, when given)."""
        upper = self._writable_layers()[1]
        started = time.monotonic()
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(dest / DIFF_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as out:
            diff = capture_upper(upper, out, merged=rootfs, shift=shift)
        logger.debug(
            "overlay capture %s: %s in %.3fs",
            upper,
            diff.describe(),
            time.monotonic() - started,
        )
        return attrs.evolve(diff, snapshotter=self.name, format=self.format)

    def prepare(self) -> OverlayLayers:
        """Make the empty upper and work directories (root-only); the layers to mount."""
        layers, upper = self._writable_layers()
        for d in (upper, Path(layers.work) if layers.work else None):
            if d is not None:
                d.mkdir(mode=0o700)
                self._made.append(d)
        return layers

    def apply(
        self,
        diff: Path,
        target: Path | None = None,
        *,
        userxattr: bool | None = None,
        shift: IdShift | None = None,
    ) -> RootfsDiff:
        """Apply ``diff/rootfs-diff.tar`` to the upper directory ``target`` (the prepared
        one by default), with overlay's attributes as ``user.*`` when ``userxattr`` (by
        default as the layers say)."""
        if target is None:
            target = self._writable_layers()[1]
        if userxattr is None:
            userxattr = self.layers.userxattr if self.layers is not None else False
        started = time.monotonic()
        result = apply_upper(diff / DIFF_NAME, target, userxattr=userxattr, shift=shift)
        logger.debug(
            "overlay apply %s: %s in %.3fs", target, result.describe(), time.monotonic() - started
        )
        return attrs.evolve(result, snapshotter=self.name, format=self.format)

    def remove(self) -> None:
        """Remove the directories :meth:`prepare` made (idempotent)."""
        while self._made:
            shutil.rmtree(self._made.pop(), ignore_errors=True)


def layers_json(layers: OverlayLayers) -> dict[str, Any]:
    """The layers as the manifest records them, each with its :func:`layer_identity`
    (None when it cannot be read): restore mounts a recorded layer only if it is
    still the same directory."""
    return {
        "lower": list(layers.lower),
        "lower_identity": [_identity_or_none(p) for p in layers.lower],
        "userxattr": layers.userxattr,
    }


def _identity_or_none(path: str) -> str | None:
    try:
        return layer_identity(path)
    except OSError as exc:
        logger.warning("lower layer %s cannot be read (%s): restore will need lower=", path, exc)
        return None


def layer_identity(path: str | os.PathLike[str]) -> str:
    """An identity of the directory tree at ``path``, recorded at checkpoint, checked at restore.

    It digests every entry's name, type, mode, owner, size, mtime, device number
    and symlink target, and the content of every regular file that others may
    not read. Only someone able to read the whole tree can compute it, so a
    crafted manifest cannot name another host directory (``/``, ``/etc``...)
    as a layer: that directory's identity would not match, and for most of the
    host it cannot even be computed without root. The walk never follows
    symlinks, stays on the layer's filesystem (a mount below it is one entry)
    and reads no world-readable content, so it costs a ``stat`` per entry.

    The identity is ``sha256:TOP:ALL``: ``TOP`` covers the directory and the
    entries directly in it, so that :func:`same_layer` refuses another
    directory after listing it once, without walking it.

    Raises:
        OSError: ``path`` is not a readable directory.
    """
    return f"sha256:{_tree_digest(path, deep=False)}:{_tree_digest(path, deep=True)}"


def same_layer(path: str | os.PathLike[str], identity: str) -> bool:
    """Whether the directory at ``path`` has the :func:`layer_identity` ``identity``;
    a directory whose top level differs is not walked.

    Raises:
        OSError: ``path`` is not a readable directory.
    """
    scheme, _, rest = str(identity).partition(":")
    top, _, full = rest.partition(":")
    if scheme != "sha256" or not top or not full:
        return False
    if not secrets.compare_digest(_tree_digest(path, deep=False), top):
        return False
    return secrets.compare_digest(_tree_digest(path, deep=True), full)


def _tree_digest(path: str | os.PathLike[str], *, deep: bool) -> str:
    top = os.fspath(path)
    st = os.lstat(top)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{top} is not a directory")
    digest = hashlib.sha256()

    def add(rel: bytes, st: os.stat_result, full: str) -> None:
        mode = st.st_mode
        fields = [rel, b"%o" % mode, b"%d:%d" % (st.st_uid, st.st_gid), b"%d" % st.st_mtime_ns]
        if stat.S_ISLNK(mode):
            fields.append(os.fsencode(os.readlink(full)))
        elif stat.S_ISREG(mode):
            fields.append(b"%d" % st.st_size)
            if deep and not mode & stat.S_IROTH:
                fields.append(_file_sha256(full).encode())
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            fields.append(b"%d" % st.st_rdev)
        digest.update(b"\0".join(fields) + b"\n")

    def walk(directory: str, prefix: bytes) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        for entry in entries:
            rel = prefix + os.fsencode(entry.name)
            est = entry.stat(follow_symlinks=False)
            add(rel, est, entry.path)
            if deep and stat.S_ISDIR(est.st_mode) and est.st_dev == st.st_dev:
                walk(entry.path, rel + b"/")

    add(b".", st, top)
    walk(top, b"")
    return digest.hexdigest()


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
