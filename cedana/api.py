"""The top-level verbs: check, open, restore (dispatching on what was checkpointed)."""

from __future__ import annotations

import os
from typing import Any

from cedana.checkpoint import Checkpoint
from cedana.container import RuncContainer
from cedana.criu import CriuReport, default_backend
from cedana.errors import CedanaError
from cedana.process import Process
from cedana.runtimes.containerd import restore_checkpoint as restore_containerd

__all__ = ["check", "open", "restore"]


def check() -> CriuReport:
    """Report the CRIU version and the kernel features that matter here."""
    backend = default_backend()
    report = getattr(backend, "report", None)
    if report is None:
        raise CedanaError("the configured CRIU backend cannot report")
    result: CriuReport = report()
    return result


def open(path: str | os.PathLike[str], *, verify: bool = True) -> Checkpoint:
    """Open and verify a checkpoint artifact; nothing is restored.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ArtifactCorrupt, UnsafeArtifact, UnsupportedFormat: It cannot be used.
    """
    return Checkpoint.open(path, verify=verify)


def restore(
    path: str | os.PathLike[str] | Checkpoint,
    *,
    into: str | None = None,
    **options: Any,
) -> Any:
    """Restore a checkpoint; the workload runs again.

    A process checkpoint comes back as a :class:`~cedana.Process`. Keyword
    options are those of :class:`~cedana.RestoreOptions` (``tcp_established``,
    ``stdin``, ``stdout``, ``stderr``, ``work_dir``, ``criu``).

    A runc container checkpoint comes back as a :class:`~cedana.RuncContainer`
    running under runc; keyword options are those of
    :meth:`~cedana.RuncContainer.restore` (``name``, ``bundle``, ``root``,
    ``stdin``, ``stdout``, ``stderr``, ``tcp_established``, ...).

    A containerd checkpoint comes back as a :class:`~cedana.ContainerdContainer`
    (``into="containerd"``, the default; options of
    :meth:`~cedana.ContainerdContainer.restore`: ``name``, ``namespace``,
    ``address``, ``log``...) or, with ``into="runc"``, as a plain
    :class:`~cedana.RuncContainer`.

    Raises:
        CedanaError: the artifact is unusable, a pid is taken, or CRIU failed;
            nothing of the workload is left running then.
    """
    ckpt = path if isinstance(path, Checkpoint) else Checkpoint.open(path, verify=False)
    kind = ckpt.manifest.kind
    if kind == "process":
        if into not in (None, "process"):
            raise CedanaError(
                f"{ckpt.path} holds a plain process tree; it cannot be restored into {into!r}"
            )
        unusable = sorted(
            k for k in ("name", "bundle", "root", "address") if options.get(k) is not None
        )
        if unusable:
            raise CedanaError(
                f"{ckpt.path} holds a plain process tree, which keeps its pids and has no "
                f"container name: drop {', '.join(f'{k}= (--{k})' for k in unusable)}"
            )
        options = {
            k: v for k, v in options.items() if k not in ("name", "bundle", "root", "address")
        }
        return Process.restore(ckpt, **options)
    if kind == "container" and ckpt.manifest.runtime == "runc":
        if into not in (None, "runc"):
            raise CedanaError(
                f"{ckpt.path} holds a runc container; it cannot be restored into {into!r}"
            )
        if options.get("address") is not None:
            raise CedanaError(f"{ckpt.path} holds a runc container; address applies to containerd")
        options.pop("address", None)
        return RuncContainer.restore(ckpt, **options)
    if kind == "container" and ckpt.manifest.runtime == "containerd":
        return restore_containerd(ckpt, into=into, **options)
    raise CedanaError(
        f"{ckpt.path} holds a {kind!r} checkpoint, which this cedana cannot restore; upgrade"
    )
