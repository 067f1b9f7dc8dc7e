"""Namespaces a container shares with something outside it.

A container whose config names a *path* for its network or pid namespace
(``/proc/1/ns/net``, ``/var/run/netns/x``) joins a namespace that exists
outside it. CRIU must not dump or recreate such a namespace: it is declared
external on dump, ``net[INODE]:extRootNetNS`` (runc's key convention, which
``runc restore`` answers with the namespace's descriptor), and must exist
again at restore. Other namespaces with a path are joined by runc at restore.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["EXTERNAL_KINDS", "external_key", "external_namespaces"]

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
