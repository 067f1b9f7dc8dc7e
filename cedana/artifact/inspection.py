"""What an inspection of a checkpoint holds: the records
:func:`~cedana.artifact.inspect_images` builds from CRIU's images (processes, open files,
sockets), ready to print.

The records are plain data; how they read as text or HTML is ``_render``'s, and how they are
decoded from the images ``_decode``'s.
"""

from __future__ import annotations

from typing import Any

import attrs

from cedana.artifact import _render

__all__ = ["FileInfo", "Inspection", "ProcessInfo", "SocketInfo"]


@attrs.frozen(kw_only=True)
class ProcessInfo:
    """One process of the checkpointed tree.

    Attributes:
        pid: Process id (as seen inside the checkpoint's pid namespace).
        ppid: Parent's pid when it was checkpointed. CRIU's images record 0 for the root of
            the tree, its parent being outside what was dumped; :func:`inspect_images` takes
            the real one from ``parents`` (the manifest's tree) where its pids are the
            images' own. A container's init keeps 0: its pids are its pid namespace's.
        pgid: Process group id.
        sid: Session id.
        threads: Number of threads.
        command: The task's ``comm`` (its name, at most 15 characters). The full
            argv lives only in the memory pages, which an inspection does not read.
        exe: Path of the executable, or ``""`` when the images do not say.
        cwd: Working directory, or ``""`` when the images do not say.
        state: ``"alive"``, ``"stopped"``, ``"zombie"``, ``"dead"`` or ``"unknown"``.
        memory_pages: Pages of memory saved for this process.
        memory_bytes: ``memory_pages`` times the page size.
        vmas: Number of memory mappings.
    """

    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: int
    command: str
    exe: str = ""
    cwd: str = ""
    state: str
    memory_pages: int
    memory_bytes: int
    vmas: int


@attrs.frozen(kw_only=True)
class FileInfo:
    """One open file descriptor of one process.

    Attributes:
        pid: The process holding the descriptor.
        fd: The descriptor number.
        kind: ``"file"``, ``"pipe"``, ``"unix"``, ``"tcp"``, ``"udp"``, ``"tty"``,
            ``"eventfd"``, ``"epoll"``, ``"signalfd"``, ``"timerfd"``, ``"inotify"``,
            ``"memfd"`` or ``"other"``.
        description: What it refers to: a path (with ``" (deleted)"`` when the file
            was unlinked), ``"pipe:[ino]"``, ``"tcp 127.0.0.1:8080 LISTEN"``, ...
    """

    pid: int
    fd: int
    kind: str
    description: str


@attrs.frozen(kw_only=True)
class SocketInfo:
    """One socket held by the checkpointed tree.

    Attributes:
        family: ``"unix"``, ``"inet"`` or ``"inet6"``.
        type: ``"stream"``, ``"dgram"``, ``"seqpacket"``, ``"raw"``, ...
        protocol: ``"tcp"``, ``"udp"``, ... for inet sockets; ``""`` for unix ones.
        state: TCP-style state name: ``"ESTABLISHED"``, ``"LISTEN"``, ``"CLOSE"``, ...
        local: ``"addr:port"`` for inet; the path (``"@name"`` when abstract) for
            unix; ``""`` when unbound.
        remote: The peer's ``"addr:port"`` or path; ``""`` when unconnected or unnamed.
        inode: The socket's inode number.
        peer_inode: For unix sockets, the peer's inode (0 when none).
    """

    family: str
    type: str
    protocol: str = ""
    state: str
    local: str
    remote: str
    inode: int
    peer_inode: int = 0


@attrs.frozen(kw_only=True)
class Inspection:
    """What a CRIU images directory holds, ready to print.

    Attributes:
        processes: The process tree, parents before their children.
        files: Open descriptors, grouped by process (in ``processes`` order), by fd.
        sockets: Every socket found in the images.
        memory_pages: Pages of memory saved, over all processes.
        memory_bytes: ``memory_pages`` times the page size.
        images_bytes: Total size of the files in the images directory.
        skipped: Images that were present but could not be decoded, each as
            ``"name: reason"``; what they held is missing from this inspection.
    """

    processes: tuple[ProcessInfo, ...]
    files: tuple[FileInfo, ...]
    sockets: tuple[SocketInfo, ...]
    memory_pages: int
    memory_bytes: int
    images_bytes: int
    skipped: tuple[str, ...] = ()

    @property
    def threads(self) -> int:
        """Threads over all processes."""
        return sum(p.threads for p in self.processes)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict of everything in the inspection."""
        return {
            "processes": [attrs.asdict(p) for p in self.processes],
            "files": [attrs.asdict(f) for f in self.files],
            "sockets": [attrs.asdict(s) for s in self.sockets],
            "threads": self.threads,
            "memory_pages": self.memory_pages,
            "memory_bytes": self.memory_bytes,
            "images_bytes": self.images_bytes,
            "skipped": list(self.skipped),
        }

    def format_text(self) -> str:
        """Render readable tables for a terminal.

        The process tree comes first (children indented under their parent), then
        the open files of each process, then the sockets.
        """
        return _render.text(self)

    def _repr_html_(self) -> str:
        """Render readable HTML tables for a notebook; all text is escaped."""
        return _render.html_tables(self)
