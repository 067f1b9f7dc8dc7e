"""Decode a CRIU images directory into a readable :class:`Inspection`.

An inspection answers "what is in this checkpoint?" without restoring it: the
process tree (with thread counts, state, memory and mappings), every open file
descriptor of every process, and every socket. It reads only CRIU's small
metadata images, through :func:`cedana.criu.load_image`; process memory is
measured from the pagemaps, so the ``pages-*.img`` files (which can be
gigabytes) are never opened.

Only ``pstree.img`` is required. Any other image that is missing or cannot be
decoded is skipped, and what was skipped is listed in
:attr:`Inspection.skipped`, so a damaged checkpoint still shows what it can.

Both image layouts CRIU has used are read: ``files.img`` (one entry per open
file, as CRIU writes now) first, then the older per-kind images (``reg-files.img``,
``inetsk.img``, ``unixsk.img``, ...) for anything ``files.img`` did not hold.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import quopri
import signal
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from cedana.artifact.inspection import FileInfo, Inspection, ProcessInfo, SocketInfo
from cedana.criu import load_image
from cedana.errors import ArtifactCorrupt

__all__ = ["inspect_images"]

logger = logging.getLogger("cedana.artifact")

_Entry = dict[str, Any]


# Names for the numbers CRIU stores (pycriu's JSON form keeps them as ints).
_TASK_STATES = {1: "alive", 2: "dead", 3: "stopped", 6: "zombie"}
_FAMILIES = {1: "unix", 2: "inet", 10: "inet6", 16: "netlink", 17: "packet"}
_SOCK_TYPES = {1: "stream", 2: "dgram", 3: "raw", 4: "rdm", 5: "seqpacket", 10: "packet"}
_PROTOCOLS = {0: "ip", 1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 136: "udplite"}
_TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
}
_CLOCKS = {0: "realtime", 1: "monotonic", 7: "boottime", 8: "realtime-alarm", 9: "boottime-alarm"}
_NAMESPACES = {
    0x00000080: "time",
    0x00020000: "mnt",
    0x02000000: "cgroup",
    0x04000000: "uts",
    0x08000000: "ipc",
    0x10000000: "user",
    0x20000000: "pid",
    0x40000000: "net",
}
_FD_KINDS = {
    "REG": "file",
    "PIPE": "pipe",
    "FIFO": "pipe",
    "UNIXSK": "unix",
    "TTY": "tty",
    "EVENTFD": "eventfd",
    "EVENTPOLL": "epoll",
    "SIGNALFD": "signalfd",
    "TIMERFD": "timerfd",
    "INOTIFY": "inotify",
    "MEMFD": "memfd",
}
# Each kind's key in a files.img entry, and the image (and its magic) that held it before.
_FILE_KEYS = {
    "REG": ("reg", "reg-files.img", "REG_FILES"),
    "PIPE": ("pipe", "pipes.img", "PIPES"),
    "FIFO": ("fifo", "fifo.img", "FIFO"),
    "INETSK": ("isk", "inetsk.img", "INETSK"),
    "UNIXSK": ("usk", "unixsk.img", "UNIXSK"),
    "EVENTFD": ("efd", "eventfd.img", "EVENTFD_FILE"),
    "EVENTPOLL": ("epfd", "eventpoll.img", "EVENTPOLL_FILE"),
    "SIGNALFD": ("sgfd", "signalfd.img", "SIGNALFD"),
    "TIMERFD": ("tfd", "timerfd.img", "TIMERFD"),
    "INOTIFY": ("ify", "inotify.img", "INOTIFY_FILE"),
    "FANOTIFY": ("ffy", "fanotify.img", "FANOTIFY_FILE"),
    "TTY": ("tty", "tty.img", "TTY_FILES"),
    "PACKETSK": ("psk", "packetsk.img", "PACKETSK"),
    "NETLINKSK": ("nlsk", "netlinksk.img", "NETLINK_SK"),
    "NS": ("nsf", "ns-files.img", "NS_FILES"),
    "TUNF": ("tunf", "tunfile.img", "TUNFILE"),
    "EXT": ("ext", "ext-files.img", "EXT_FILES"),
    "MEMFD": ("memfd", "", ""),
    "BPFMAP": ("bpf", "", ""),
    "PIDFD": ("pidfd", "", ""),
}
_REMAP_TYPES = {0: "LINKED", 1: "GHOST", 2: "PROCFS"}
_REMAP_GHOST_BIT = 0x80000000  # how images without remap_type marked ghost files
_O_ACCMODE = 0o3


def _int(value: Any, default: int = 0) -> int:
    """An int from a decoded field, tolerating pycriu's pretty (string) forms."""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            return default
    return default


def _dict(value: Any) -> _Entry:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _named(value: Any, names: Mapping[int, str]) -> str:
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        return value  # already a name
    number = _int(value, -1)
    return names.get(number, str(number))


@attrs.define(eq=False)
class _Images:
    """Loads images from one directory, once each, noting the ones it must skip."""

    root: Path
    skipped: list[str] = attrs.Factory(list)
    _cache: dict[str, list[_Entry]] = attrs.Factory(dict)

    def entries(self, name: str, magic: str) -> list[_Entry]:
        """Entries of an optional image; empty when it is absent or unreadable."""
        if name in self._cache:
            return self._cache[name]
        entries: list[_Entry] = []
        path = self.root / name
        if path.is_file():
            try:
                entries = self._load(path, magic)
            except (ValueError, OSError) as exc:
                reason = str(exc) if isinstance(exc, ValueError) else f"{name}: {exc.strerror}"
                logger.debug("inspect: skipping %s", reason)
                self.skipped.append(reason)
        self._cache[name] = entries
        return entries

    def first(self, name: str, magic: str) -> _Entry:
        entries = self.entries(name, magic)
        return entries[0] if entries else {}

    @staticmethod
    def _load(path: Path, magic: str) -> list[_Entry]:
        image = load_image(path)
        found = image.get("magic")
        if found != magic:
            raise ValueError(f"{path.name}: holds a {found} image, not {magic}")
        return [e for e in _list(image.get("entries")) if isinstance(e, dict)]


@attrs.define(eq=False)
class _Files:
    """Every file object the images describe, keyed by the id fdinfo entries use."""

    by_id: dict[int, tuple[str, _Entry]]
    remaps: dict[int, str]
    memfd_names: dict[int, str]
    unix_by_ino: dict[int, _Entry]
    tty_info: dict[int, _Entry]
    epoll_targets: dict[int, int]

    @classmethod
    def load(cls, images: _Images) -> _Files:
        by_id: dict[int, tuple[str, _Entry]] = {}
        for entry in images.entries("files.img", "FILES"):
            kind = str(entry.get("type", "UND"))
            key = _FILE_KEYS.get(kind, ("", "", ""))[0]
            by_id[_int(entry.get("id"))] = (kind, _dict(entry.get(key)))
        # Images from before files.img: one image per kind, entries keyed by the same ids.
        for kind, (_, legacy, magic) in _FILE_KEYS.items():
            if legacy:
                for sub in images.entries(legacy, magic):
                    by_id.setdefault(_int(sub.get("id")), (kind, sub))

        remaps: dict[int, str] = {}
        for entry in images.entries("remap-fpath.img", "REMAP_FPATH"):
            remap = entry.get("remap_type")
            if remap is None:
                remap = "GHOST" if _int(entry.get("remap_id")) & _REMAP_GHOST_BIT else "LINKED"
            remaps[_int(entry.get("orig_id"))] = _named(remap, _REMAP_TYPES)

        memfd_names = {
            _int(e.get("inode_id")): str(e.get("name", ""))
            for e in images.entries("memfd.img", "MEMFD_INODE")
        }
        unix_by_ino = {
            _int(sub.get("ino")): sub for kind, sub in by_id.values() if kind == "UNIXSK"
        }
        tty_info = {_int(e.get("id")): e for e in images.entries("tty-info.img", "TTY_INFO")}
        # Older CRIU kept an epoll's targets in an image of their own.
        epoll_targets: dict[int, int] = {}
        for e in images.entries("eventpoll-tfd.img", "EVENTPOLL_TFD"):
            epoll_targets[_int(e.get("id"))] = epoll_targets.get(_int(e.get("id")), 0) + 1
        return cls(
            by_id=by_id,
            remaps=remaps,
            memfd_names=memfd_names,
            unix_by_ino=unix_by_ino,
            tty_info=tty_info,
            epoll_targets=epoll_targets,
        )

    def path(self, file_id: Any) -> str:
        """The path of a regular-file entry, marked when it was deleted."""
        if file_id is None:
            return ""
        fid = _int(file_id, -1)
        kind, sub = self.by_id.get(fid, ("", {}))
        if kind != "REG":
            return ""
        name = str(sub.get("name", ""))
        remap = self.remaps.get(fid)
        if remap in ("GHOST", "LINKED"):
            name += " (deleted)"
        elif remap == "PROCFS":
            name += " (of a dead process)"
        return name

    def sockets(self) -> list[SocketInfo]:
        found = []
        for kind, sub in self.by_id.values():
            if kind == "INETSK":
                found.append(_inet_socket(sub))
            elif kind == "UNIXSK":
                found.append(self._unix_socket(sub))
        return found

    def _unix_socket(self, sub: _Entry) -> SocketInfo:
        peer = _int(sub.get("peer"))
        peer_entry = self.unix_by_ino.get(peer)
        return SocketInfo(
            family="unix",
            type=_named(sub.get("type"), _SOCK_TYPES).lower(),
            state=_named(sub.get("state"), _TCP_STATES).upper(),
            local=_unix_name(sub),
            remote=_unix_name(peer_entry) if peer_entry else "",
            inode=_int(sub.get("ino")),
            peer_inode=peer,
        )

    def describe(self, fd_type: str, file_id: int) -> tuple[str, str]:
        """The (kind, description) of the file object ``file_id``."""
        kind, sub = self.by_id.get(file_id, (fd_type, {}))
        if not sub:
            return _FD_KINDS.get(kind, "other"), f"{kind.lower()} (not described in the images)"
        if kind == "REG":
            name = self.path(file_id)
            return ("memfd" if name.startswith("/memfd:") else "file"), name
        if kind == "PIPE":
            end = {0: " (read end)", 1: " (write end)"}.get(_int(sub.get("flags")) & _O_ACCMODE, "")
            return "pipe", f"pipe:[{_int(sub.get('pipe_id'))}]{end}"
        if kind == "FIFO":
            where = self.path(sub.get("regf_id")) or f"pipe:[{_int(sub.get('pipe_id'))}]"
            return "pipe", f"fifo {where}"
        if kind == "INETSK":
            sock = _inet_socket(sub)
            return _inet_kind(sock), _inet_description(sock)
        if kind == "UNIXSK":
            return "unix", _unix_description(self._unix_socket(sub))
        if kind == "TTY":
            return "tty", self.path(sub.get("regf_id")) or self._tty_name(sub)
        if kind == "EVENTFD":
            return "eventfd", f"eventfd (counter {_int(sub.get('counter'))})"
        if kind == "EVENTPOLL":
            watched = len(_list(sub.get("tfd"))) or self.epoll_targets.get(file_id, 0)
            return "epoll", f"epoll ({watched} watched fd{'s' if watched != 1 else ''})"
        if kind == "SIGNALFD":
            return "signalfd", f"signalfd ({_signal_names(_int(sub.get('sigmask')))})"
        if kind == "TIMERFD":
            return "timerfd", f"timerfd ({_named(sub.get('clockid'), _CLOCKS)})"
        if kind == "INOTIFY":
            watches = len(_list(sub.get("wd")))
            return "inotify", f"inotify ({watches} watch{'es' if watches != 1 else ''})"
        if kind == "MEMFD":
            return "memfd", f"memfd:{self.memfd_names.get(_int(sub.get('inode_id')), '?')}"
        return "other", _other_description(kind, sub)

    def _tty_name(self, sub: _Entry) -> str:
        info = self.tty_info.get(_int(sub.get("tty_info_id")), {})
        if str(info.get("type")) == "PTY" and "pty" in info:
            return f"pty {_int(_dict(info.get('pty')).get('index'))}"
        return f"tty ({str(info.get('type', 'unknown')).lower()})"


def _address(words: Any) -> str:
    """Render CRIU's address words (raw network-order u32s) as dotted IPv4 / IPv6."""
    items = _list(words)
    if len(items) == 1 and isinstance(items[0], str):
        return items[0]  # pycriu's pretty form is already text
    try:
        raw = b"".join(struct.pack("=I", _int(w) & 0xFFFFFFFF) for w in items)
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return ""


def _unspecified(address: str) -> bool:
    try:
        return not address or ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def _endpoint(address: str, port: int) -> str:
    if not address:
        address = "*"
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _inet_socket(sub: _Entry) -> SocketInfo:
    src, dst = _address(sub.get("src_addr")), _address(sub.get("dst_addr"))
    dst_port = _int(sub.get("dst_port"))
    unconnected = dst_port == 0 and _unspecified(dst)
    return SocketInfo(
        family=_named(sub.get("family"), _FAMILIES).lower(),
        type=_named(sub.get("type"), _SOCK_TYPES).lower(),
        protocol=_named(sub.get("proto"), _PROTOCOLS).lower(),
        state=_named(sub.get("state"), _TCP_STATES).upper(),
        local=_endpoint(src, _int(sub.get("src_port"))),
        remote="" if unconnected else _endpoint(dst, dst_port),
        inode=_int(sub.get("ino")),
    )


def _inet_kind(sock: SocketInfo) -> str:
    if sock.protocol == "tcp":
        return "tcp"
    if sock.protocol in ("udp", "udplite"):
        return "udp"
    return "other"


def _inet_description(sock: SocketInfo) -> str:
    kind = _inet_kind(sock)
    head = sock.protocol if kind != "other" else f"{sock.family} {sock.type} {sock.protocol}"
    text = f"{head} {sock.local}"
    if sock.remote:
        text += f" -> {sock.remote}"
    if kind == "tcp":
        text += f" {sock.state}"
    return text


def _unix_name(sub: _Entry) -> str:
    """The bound name of a unix socket: a path, ``@name`` if abstract, or ``""``."""
    raw = sub.get("name", "")
    # pycriu's JSON form carries the name quoted-printable (it may hold NULs).
    encoded = raw.encode("ascii", "replace") if isinstance(raw, str) else bytes(raw or b"")
    data = quopri.decodestring(encoded)
    if not data:
        return ""
    if data[:1] == b"\0":
        return "@" + data[1:].rstrip(b"\0").replace(b"\0", b"@").decode(errors="backslashreplace")
    path = data.split(b"\0", 1)[0].decode(errors="backslashreplace")
    name_dir = sub.get("name_dir")
    if name_dir and not path.startswith("/"):
        path = f"{name_dir}/{path}"
    if sub.get("deleted"):
        path += " (deleted)"
    return path


def _unix_description(sock: SocketInfo) -> str:
    text = f"unix {sock.local or '(unnamed)'} {sock.type} {sock.state}"
    if sock.remote:
        text += f" -> {sock.remote}"
    elif sock.peer_inode:
        text += f" -> inode {sock.peer_inode}"
    return text


def _signal_names(mask: int) -> str:
    names = []
    for bit in range(64):
        if mask & (1 << bit):
            try:
                names.append(signal.Signals(bit + 1).name)
            except ValueError:
                names.append(str(bit + 1))
    return ", ".join(names) or "no signals"


def _other_description(kind: str, sub: _Entry) -> str:
    if kind == "NS":
        cflag = _int(sub.get("ns_cflag"))
        return f"{_NAMESPACES.get(cflag, hex(cflag))} namespace"
    if kind == "PIDFD":
        return f"pidfd (pid {_int(sub.get('nspid'))})"
    if kind == "NETLINKSK":
        return f"netlink socket (protocol {_int(sub.get('protocol'))})"
    if kind == "PACKETSK":
        return "packet socket"
    if kind == "TUNF":
        return f"tun {sub.get('netdev', '')}".rstrip()
    if kind == "EXT":
        return "external file"
    if kind == "BPFMAP":
        return "bpf map"
    return kind.lower()


# --- the tree ------------------------------------------------------------------------------


def _images_bytes(root: Path) -> int:
    total = 0
    with os.scandir(root) as it:
        for entry in it:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def _process(images: _Images, files: _Files, entry: _Entry, page_size: int) -> ProcessInfo:
    pid = _int(entry.get("pid"))
    tc = _dict(images.first(f"core-{pid}.img", "CORE").get("tc"))
    mm = images.first(f"mm-{pid}.img", "MM")
    vmas = _list(mm.get("vmas")) if "vmas" in mm else images.entries(f"vmas-{pid}.img", "VMAS")
    pages = 0
    for page_entry in images.entries(f"pagemap-{pid}.img", "PAGEMAP")[1:]:
        pages += _int(page_entry.get("nr_pages", page_entry.get("compat_nr_pages")))
    fs = images.first(f"fs-{pid}.img", "FS")
    return ProcessInfo(
        pid=pid,
        ppid=_int(entry.get("ppid")),
        pgid=_int(entry.get("pgid")),
        sid=_int(entry.get("sid")),
        threads=len(_list(entry.get("threads"))),
        command=str(tc.get("comm", "")) or "?",
        exe=files.path(mm.get("exe_file_id")),
        cwd=files.path(fs.get("cwd_id")),
        state=_named(tc.get("task_state"), _TASK_STATES).lower() if tc else "unknown",
        memory_pages=pages,
        memory_bytes=pages * page_size,
        vmas=len(vmas),
    )


def _open_files(images: _Images, files: _Files, pid: int) -> list[FileInfo]:
    ids = images.first(f"ids-{pid}.img", "IDS")
    if "files_id" not in ids:
        return []
    found = []
    for fd_entry in images.entries(f"fdinfo-{_int(ids['files_id'])}.img", "FDINFO"):
        fd_type = str(fd_entry.get("type", "UND"))
        kind, description = files.describe(fd_type, _int(fd_entry.get("id")))
        found.append(
            FileInfo(pid=pid, fd=_int(fd_entry.get("fd")), kind=kind, description=description)
        )
    return sorted(found, key=lambda f: f.fd)


def inspect_images(
    images_dir: str | os.PathLike[str], *, parents: Mapping[int, int] | None = None
) -> Inspection:
    """Decode the CRIU images in ``images_dir`` into an :class:`Inspection`.

    Only metadata images are read; memory is counted from the pagemaps.

    Args:
        images_dir: A directory CRIU dumped into (it holds ``pstree.img``).
        parents: Each process's parent pid as seen when it was checkpointed (the
            manifest's tree). It fills in only what CRIU's images leave at 0 (the parent
            of the tree's root, which was outside the tree), so the two views agree.

    Raises:
        ArtifactCorrupt: ``images_dir`` has no readable ``pstree.img``, so it is
            not a CRIU images directory.
    """
    root = Path(images_dir)
    started = time.monotonic()
    logger.debug("inspect %s: start", root)
    pstree = root / "pstree.img"
    if not pstree.is_file():
        raise ArtifactCorrupt(f"{root}: no pstree.img, not a CRIU images directory")
    try:
        tree = _Images._load(pstree, "PSTREE")
    except (ValueError, OSError) as exc:
        raise ArtifactCorrupt(f"{root}: bad pstree.img, not a CRIU images directory") from exc
    if not tree:
        raise ArtifactCorrupt(f"{root}: pstree.img lists no processes")

    images = _Images(root)
    files = _Files.load(images)
    page_size = os.sysconf("SC_PAGE_SIZE")
    processes = [_process(images, files, entry, page_size) for entry in tree]
    if parents:
        processes = [
            attrs.evolve(p, ppid=parents[p.pid]) if p.ppid == 0 and p.pid in parents else p
            for p in processes
        ]
    open_files = [f for p in processes for f in _open_files(images, files, p.pid)]
    pages = sum(p.memory_pages for p in processes)
    inspection = Inspection(
        processes=tuple(processes),
        files=tuple(open_files),
        sockets=tuple(files.sockets()),
        memory_pages=pages,
        memory_bytes=pages * page_size,
        images_bytes=_images_bytes(root),
        skipped=tuple(images.skipped),
    )
    logger.debug(
        "inspect %s: complete in %.3fs (%d processes, %d skipped images)",
        root,
        time.monotonic() - started,
        len(processes),
        len(images.skipped),
    )
    return inspection
