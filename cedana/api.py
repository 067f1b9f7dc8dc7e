"""The top-level verbs: check, open, restore (dispatching on what was checkpointed)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable
from typing import Any

from cedana import registry
from cedana.artifact.signing import KeySource, Trust
from cedana.checkpoint import Checkpoint
from cedana.criu import CriuReport, default_backend
from cedana.errors import CedanaError, ContainerError
from cedana.progress import ProgressArg, reporting

__all__ = ["check", "open", "restore"]


def check() -> CriuReport:
    """Report the CRIU version and the kernel features that matter here."""
    return default_backend().report()


def open(
    path: str | os.PathLike[str],
    *,
    verify: bool = True,
    trust: Trust = "trusted",
    trusted_keys: Iterable[KeySource] | None = None,
) -> Checkpoint:
    """Open and verify a checkpoint artifact; nothing is restored.

    Refused unless a trusted key signed it (this host's own, one in the trust dir, or one of
    ``trusted_keys``), or ``trust="any"``; see :meth:`cedana.Checkpoint.open`.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        UntrustedArtifact: Unsigned, signed by an untrusted key, or a bad signature.
        ArtifactCorrupt, UnsafeArtifact, UnsupportedFormat: It cannot be used.
    """
    return Checkpoint.open(path, verify=verify, trust=trust, trusted_keys=trusted_keys)


def restore(
    path: str | os.PathLike[str] | Checkpoint,
    *,
    into: str | None = None,
    trust: Trust = "trusted",
    trusted_keys: Iterable[KeySource] | None = None,
    progress: ProgressArg = None,
    **options: Any,
) -> Any:
    """Restore a checkpoint; the workload runs again.

    First of all, its signer must be trusted: this host's own key, a key in the trust dir
    (``cedana key trust``), or one of ``trusted_keys`` (PEM files); otherwise it is refused
    (:class:`~cedana.UntrustedArtifact`) before anything is unpacked, unless ``trust="any"``.

    A process checkpoint comes back as a :class:`~cedana.Process`. Keyword
    options are those of :class:`~cedana.RestoreOptions` (``tcp_established``,
    ``stdin``, ``stdout``, ``stderr``, ``work_dir``, ``criu``).

    A runc container checkpoint comes back as a :class:`~cedana.RuncContainer`
    running under runc; keyword options are those of
    :meth:`~cedana.RuncContainer.restore` (``name``, ``bundle``, ``root``,
    ``stdin``, ``stdout``, ``stderr``, ``tcp_established``, ``lower``,
    ``hooks``, ``grants``...). A container checkpoint is confined like an
    untrusted image: what it asks of the host beyond the runtime's defaults
    is refused unless granted (``hooks=``, ``grants=``; see the Security page).

    A containerd checkpoint comes back as a :class:`~cedana.ContainerdContainer`
    (``into="containerd"``, the default; options of
    :meth:`~cedana.ContainerdContainer.restore`: ``name``, ``namespace``,
    ``address``, ``log``...) or, with ``into="runc"``, as a plain
    :class:`~cedana.RuncContainer`.

    A checkpoint of any runc-based runtime also restores into any other
    (``into="podman"`` for a docker one...): the image is brought into the target's
    store from the source's (at ``source_address=``, else its default place), the
    source runtime's own mounts become the target's, and the target confines it as its
    own checkpoints (see "Into another runtime" in the docs).

    ``progress`` is called with a :class:`cedana.progress.Progress` as the images are
    unpacked and the tree restored, or True shows a bar (see :mod:`cedana.progress`).

    Options left None mean "the default", so a caller (the command line) may pass
    every option it knows; one that the chosen restore does not take is a clear error.

    Raises:
        UntrustedArtifact: No trusted key signed it, and ``trust`` is not ``"any"``.
        CedanaError: the artifact is unusable, ``into`` or an option does not fit it,
            a pid is taken, or CRIU failed; nothing of the workload is left running then.
    """
    ckpt = Checkpoint.of(path, trust=trust, trusted_keys=trusted_keys)
    manifest = ckpt.manifest
    source = "process" if manifest.kind == "process" else manifest.runtime or manifest.kind
    refused = ContainerError if manifest.kind == "container" else CedanaError
    runtime = registry.lookup(source)
    if runtime is None:
        raise CedanaError(
            f"{ckpt.path} holds a {source!r} checkpoint, which this cedana cannot restore; upgrade"
        )
    targets = registry.restore_targets(runtime)
    target = into or targets[0]
    into_runtime = registry.lookup(target)
    if target not in targets or into_runtime is None:
        why = ""
        if into_runtime is not None and into_runtime.adopt is not None:
            why = (
                f" ({source} records no image in a store that {target} could make the "
                f"container from; restore it into {' or '.join(targets)})"
            )
        raise refused(
            f"{ckpt.path} holds a {source} checkpoint; it restores into "
            f"{' or '.join(targets)}, not into {target!r}{why}"
        )
    restorer = into_runtime.restore
    if target not in runtime.restores_into and into_runtime.adopt is not None:
        restorer = into_runtime.adopt  # another runtime's: through the neutral description
    given = {k: v for k, v in options.items() if v is not None}  # None: the default
    unusable = sorted(given.keys() - _keywords(restorer))
    if unusable:
        raise refused(
            f"{ckpt.path} holds a {source} checkpoint; restoring it into {target} does not "
            f"take {', '.join(_spelled(k) for k in unusable)}"
        )
    with reporting(progress):
        return restorer(ckpt, trust=trust, trusted_keys=trusted_keys, **given)


#: How the command line spells the restore keywords it passes; the others are Python-only.
_FLAGS = {
    "address": "--address",
    "bundle": "--bundle",
    "name": "--name",
    "namespace": "--name NAMESPACE/NAME",
    "root": "--root",
    "source_address": "--source-address",
    "tcp_established": "--tcp-established",
}


def _spelled(keyword: str) -> str:
    """``keyword=`` as an error message names it, with its command line form if it has one."""
    flag = _FLAGS.get(keyword)
    return f"{keyword}= ({flag})" if flag else f"{keyword}="


def _keywords(restorer: Callable[..., Any]) -> set[str]:
    """The keyword options ``restorer`` takes."""
    params = inspect.signature(restorer).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY}
