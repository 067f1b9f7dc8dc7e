"""Namespaces a container shares with something outside it.

A container whose config names a *path* for its network or pid namespace
(``/proc/1/ns/net``, ``/var/run/netns/x``) joins a namespace that exists
outside it. CRIU must not dump or recreate such a namespace: it is declared
external on dump, ``net[INODE]:extRootNetNS`` (runc's key convention, which
``runc restore`` answers with the namespace's descriptor), and must exist
again at restore. Other namespaces with a path are joined by runc at restore.

A private network namespace is dumped and restored *empty* (runc's
``empty_ns`` for the network: runc manages no network devices); its sockets
are carried, and after restore its loopback is brought up again
(:func:`loopback_up`), as runc did when it created the container.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "CLONE_NEWNET",
    "EXTERNAL_KINDS",
    "external_key",
    "external_namespaces",
    "loopback_hook",
    "loopback_up",
    "private_network",
    "restore_loopback",
]

#: OCI namespace type -> CRIU's namespace name, for those CRIU can treat as external.
EXTERNAL_KINDS = {"network": "net", "pid": "pid"}


def external_key(criu_name: str) -> str:
    """runc's key for an external namespace: ``extRootNetNS``, ``extRootPidNS``."""
    return f"extRoot{criu_name.title()}NS"


def external_namespaces(
    namespaces: Sequence[Mapping[str, Any]],
    inode_of: Callable[[str], int] = lambda p: os.stat(p).st_ino,
) -> list[str]:
    """CRIU ``external`` entries for the config's ``linux.namespaces`` that carry a path.

    Args:
        namespaces: The OCI config's ``linux.namespaces``.
        inode_of: How to find a namespace file's inode (unit tests pass a fake).

    Raises:
        OSError: A namespace path does not exist.
    """
    out = []
    for ns in namespaces:
        criu_name = EXTERNAL_KINDS.get(str(ns.get("type", "")))
        path = ns.get("path")
        if criu_name and path:
            out.append(f"{criu_name}[{inode_of(str(path))}]:{external_key(criu_name)}")
    return out


CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sH14x"


def private_network(namespaces: Sequence[Mapping[str, Any]]) -> bool:
    """True when the config gives the container a new network namespace of its own."""
    return any(ns.get("type") == "network" and not ns.get("path") for ns in namespaces)


def _loopback_up_in(ns_path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # setns moves only this thread, which ends right after.
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {ns_path}: {os.strerror(err)}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            got = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0))
            flags = struct.unpack(_IFREQ, got)[1]
            if not flags & _IFF_UP:
                fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))
    finally:
        os.close(fd)


def loopback_up(pid: int) -> None:
    """Bring up ``lo`` in the network namespace of ``pid``, as runc does when it creates one.

    ``runc restore`` restores a private network namespace empty (runc manages no
    network devices, so its restore passes CRIU ``empty_ns`` for the network):
    the container's loopback comes back down, and a server listening on it
    would be unreachable even from inside.

    Raises:
        OSError: The namespace cannot be entered or ``lo`` cannot be set up.
    """
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _loopback_up_in(f"/proc/{pid}/ns/net")
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="cedana-netns")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def restore_loopback(config: Mapping[str, Any], pid: int) -> None:
    """After ``runc restore``: bring ``lo`` up again if ``config`` gives the container a
    network namespace of its own (runc restores it empty; see :func:`loopback_up`)."""
    if private_network((config.get("linux") or {}).get("namespaces") or []):
        loopback_up(pid)


#: The hook's program: the OCI state on stdin names the restored init; ``lo`` is brought up
#: in its network namespace as :func:`_loopback_up_in` does. Self-contained (the runtime
#: runs it with the host's cwd and environment, where cedana need not be importable).
_LOOPBACK_HOOK = """\
import ctypes, fcntl, json, os, socket, struct, sys
pid = int(json.load(sys.stdin)["pid"])
fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
    sys.exit(f"setns: {os.strerror(ctypes.get_errno())}")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))
"""


def loopback_hook() -> dict[str, Any]:
    """An OCI ``prestart`` hook bringing ``lo`` up in the container's new network namespace.

    ``runc restore`` runs prestart hooks once CRIU has made the namespaces and before it
    restores what is in them, so with this hook a TCP connection on the loopback can be
    repaired (CRIU reconnects it: with ``lo`` down that fails, "Network is unreachable").
    Used where cedana cannot bring ``lo`` up itself in time: a restore through podman,
    whose conmon runs ``runc restore`` in a namespace podman makes with ``lo`` down.
    """
    return {"path": sys.executable, "args": [sys.executable, "-c", _LOOPBACK_HOOK]}
