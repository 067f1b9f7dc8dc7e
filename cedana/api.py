"""The top-level verbs: check, open, restore (dispatching on what was checkpointed), export."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from cedana import registry
from cedana.artifact.signing import KeySource, Trust
from cedana.checkpoint import Checkpoint
from cedana.criu import CriuReport, default_backend
from cedana.errors import CedanaError, ContainerError, InvalidOption
from cedana.progress import ProgressArg, reporting

if TYPE_CHECKING:
    from cedana.oci import Reference

__all__ = ["check", "export", "open", "restore"]


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


def export(
    checkpoint: str | os.PathLike[str] | Checkpoint,
    dest: str | os.PathLike[str] | None = None,
    *,
    format: Literal["podman", "kubernetes", "containerd", "oci-image"],
    to: str | None = None,
    archive: Literal["kubernetes", "containerd", "podman"] = "kubernetes",
    name: str | None = None,
    compress: Literal["zstd", "none"] = "zstd",
    work_dir: str | os.PathLike[str] | None = None,
    trust: Trust = "trusted",
    trusted_keys: Iterable[KeySource] | None = None,
) -> Path | str:
    """Write a container checkpoint in another engine's format, for it to restore or read.

    ``"podman"``: the archive ``podman container restore --import`` takes
    (:meth:`cedana.PodmanContainer.export`; ``compress`` applies to it only).
    ``"kubernetes"``: the uncompressed archive a CRI-O node writes for the kubelet's
    checkpoint API; ``"containerd"``: containerd's flavour of it (``status.dump``, the
    rootfs changes as an OCI layer). ``checkpointctl`` reads all three. Each goes to the
    file ``dest``. ``"oci-image"``: Kubernetes' checkpoint OCI image (the ``archive``
    flavour's files at ``/`` of one layer on scratch, annotated for CRI-O, containerd and
    checkpointctl; ``archive="podman"``: podman's variant, for ``podman container restore
    IMAGE``) to the image reference ``to`` (``oci:DIR[:NAME]``,
    ``oci-archive:PATH[:NAME]``, ``docker://HOST/REPO:TAG``).

    Returns:
        ``dest``; for ``"oci-image"`` the image manifest's digest.

    Raises:
        ArtifactExists: ``dest`` (or an ``oci-archive:`` file) exists.
        ContainerError: Not a container checkpoint (or, for podman, not a podman one).
        UntrustedArtifact: Refused as a restore would be (``trust`` as there).
        RegistryUnavailable, RegistryRefused: The registry is down or refused.
    """
    if format == "oci-image":
        from cedana.runtimes._kube_image import export_image

        if to is None or dest is not None:
            raise InvalidOption("format='oci-image' writes to an image reference: pass to=")
        return export_image(
            checkpoint,
            to,
            format=archive,
            name=name,
            work_dir=work_dir,
            trust=trust,
            trusted_keys=trusted_keys,
        )
    if dest is None or to is not None:
        raise InvalidOption(f"format={format!r} writes a file: pass dest (to= is for oci-image)")
    if format == "podman":
        from cedana.runtimes.podman import PodmanContainer

        return PodmanContainer.export(
            checkpoint,
            dest,
            name=name,
            compress=compress,
            work_dir=work_dir,
            trust=trust,
            trusted_keys=trusted_keys,
        )
    from cedana.runtimes._kube_archive import export_archive

    return export_archive(
        checkpoint,
        dest,
        format=format,
        name=name,
        work_dir=work_dir,
        trust=trust,
        trusted_keys=trusted_keys,
    )


def restore(
    path: str | os.PathLike[str] | Checkpoint | Reference,
    *,
    into: str | None = None,
    trust: Trust = "trusted",
    trusted_keys: Iterable[KeySource] | None = None,
    progress: ProgressArg = None,
    **options: Any,
) -> Any:
    """Restore a checkpoint; the workload runs again.

    ``path`` may also be an image reference a checkpoint was pushed to with
    :func:`cedana.push` (``docker://HOST/REPO:TAG``, ``oci:DIR[:NAME]``,
    ``oci-archive:PATH[:NAME]``): it is pulled to a private temp dir, its digest checked,
    then restored as a file would be and removed. The registry is reached as
    :class:`cedana.oci.RegistryOptions` does by default (plain HTTP for localhost, the
    auth files' credentials); for other settings pull it first (:func:`cedana.pull`).

    First of all, its signer must be trusted: this host's own key, a key in the trust dir
    (``cedana key trust``), or one of ``trusted_keys`` (PEM files); otherwise it is refused
    (:class:`~cedana.UntrustedArtifact`) before anything is unpacked, unless ``trust="any"``.

    A process checkpoint comes back as a :class:`~cedana.Process`. Keyword
    options are those of :class:`~cedana.RestoreOptions` (``tcp_established``,
    ``stdin``, ``stdout``, ``stderr``, ``work_dir``, ``pid_namespace``, ``pid_wait``,
    ``criu``): ``pid_namespace="new"`` restores the tree into a new pid namespace, so no
    pid of it can be taken (see :doc:`elsewhere`).

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

    A rootfs-only checkpoint (kind ``"rootfs"``: ``rootfs_only=True``) comes back as a new
    container of the runtime it came from, started fresh from the same image plus the
    changes, without CRIU (the runtime's ``restore_fresh``: ``name`` and the runtime's
    own options); ``into`` may only name that runtime.

    A checkpoint of any runc-based runtime also restores into any other
    (``into="podman"`` for a docker one...): the image is brought into the target's
    store from the source's (at ``source_address=``, else its default place), the
    source runtime's own mounts become the target's, and the target confines it as its
    own checkpoints (see "Into another runtime" in the docs).

    A kata sandbox checkpoint (a whole VM) comes back as a :class:`~cedana.KataSandbox`
    running in a new QEMU (options of :meth:`~cedana.KataSandbox.restore`: ``name``,
    ``root``, ``shared_dir``...).

    ``progress`` is called with a :class:`cedana.progress.Progress` as the images are
    unpacked and the tree restored, or True shows a bar (see :mod:`cedana.progress`).

    ``path`` may also name a checkpoint OCI image (``oci-archive:PATH``, ``oci:DIR``,
    ``docker://HOST/REPO:TAG``): it is pulled, every blob checked, and the archive it
    carries restored as a file would be (unsigned: it needs ``trust="any"``).

    Options left None mean "the default", so a caller (the command line) may pass
    every option it knows; one that the chosen restore does not take is a clear error.

    Raises:
        UntrustedArtifact: No trusted key signed it, and ``trust`` is not ``"any"``.
        CedanaError: the artifact is unusable, ``into`` or an option does not fit it,
            a pid is taken, or CRIU failed; nothing of the workload is left running then.
    """
    from cedana.images import is_reference, pulled

    if is_reference(path):
        with pulled(cast("str | Reference", path)) as local:
            return restore(
                local,
                into=into,
                trust=trust,
                trusted_keys=trusted_keys,
                progress=progress,
                **options,
            )
    local_path = cast("str | os.PathLike[str] | Checkpoint", path)
    ckpt = Checkpoint.of(local_path, trust=trust, trusted_keys=trusted_keys)
    manifest = ckpt.manifest
    if manifest.kind == "rootfs":
        with reporting(progress):
            return _restore_fresh(ckpt, into, trust=trust, trusted_keys=trusted_keys, **options)
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


def _restore_fresh(
    ckpt: Checkpoint,
    into: str | None,
    *,
    trust: Trust,
    trusted_keys: Iterable[KeySource] | None,
    **options: Any,
) -> Any:
    """A rootfs-only checkpoint: a new container of the runtime it came from, started fresh
    from the image plus the changes (the runtime's ``restore_fresh``)."""
    source = ckpt.manifest.runtime or ""
    runtime = registry.lookup(source)
    restorer = runtime.restore_fresh if runtime is not None else None
    if runtime is None:
        raise ContainerError(
            f"{ckpt.path} holds the root filesystem changes of a {source or 'unnamed'} "
            "container, a runtime this cedana does not know; upgrade"
        )
    if restorer is None:
        raise ContainerError(
            f"{ckpt.path} holds the root filesystem changes of a {source} container, which "
            f"cedana does not start afresh ({source} starts its own containers); make an "
            "image of it with cedana commit FILE --to REF and start that"
        )
    if into is not None and into != source:
        raise ContainerError(
            f"{ckpt.path} holds the root filesystem changes of a {source} container; it "
            f"restores as a new {source} container (its config is {source}'s), not into {into!r}"
        )
    given = {k: v for k, v in options.items() if v is not None}
    unusable = sorted(given.keys() - _keywords(restorer))
    if unusable:
        raise ContainerError(
            f"{ckpt.path} holds the root filesystem changes of a {source} container; starting "
            f"it afresh does not take {', '.join(_spelled(k) for k in unusable)}"
        )
    return restorer(ckpt, trust=trust, trusted_keys=trusted_keys, **given)


#: How the command line spells the restore keywords it passes; the others are Python-only.
_FLAGS = {
    "address": "--address",
    "bundle": "--bundle",
    "name": "--name",
    "namespace": "--name NAMESPACE/NAME",
    "pid_namespace": "--pid-namespace",
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
