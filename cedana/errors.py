"""Errors raised by cedana.

Every error derives from :class:`CedanaError`; leaves also derive from the
builtin that fits, so ``except ProcessLookupError`` keeps working::

    CedanaError
    ├── InvalidOption                   (ValueError) an option's value or a combination is wrong
    ├── NoSpace                         (OSError, errno ENOSPC) a filesystem filled up; names
    │                                   the path and what filled it
    ├── SetupError                      the machine cannot checkpoint (no CRIU, old CRIU, no root)
    │   ├── CriuNotFound                no usable ``criu`` binary or pycriu
    │   └── NotPermitted                (PermissionError) needs root / capabilities
    ├── CriuError                       CRIU refused or failed; carries ``errno`` and ``log_tail``
    │   ├── DumpFailed
    │   └── RestoreFailed
    │       ├── PidInUse                (FileExistsError) a pid of the tree is taken
    │       └── IncompatibleHost        this host's CRIU is older than the checkpoint's, or
    │                                   its CPU or architecture cannot run the images
    ├── ProcessNotFound                 (ProcessLookupError) no such pid
    ├── NotCheckpointable               the target cannot be dumped as asked (kernel thread,
    │                                   established TCP without ``tcp_established``, ...)
    ├── ArtifactError                   a checkpoint artifact is unusable
    │   ├── ArtifactExists              (FileExistsError) refusing to overwrite
    │   ├── ArtifactCorrupt             truncated, modified, or members added / missing
    │   ├── UnsafeArtifact              a member would escape the target or is a link / device,
    │   │                               or a container checkpoint asks the host for more than
    │   │                               the runtime's defaults and the caller's grants
    │   └── UnsupportedFormat           a format version this cedana does not read
    ├── ContainerError                  container runtimes
    │   ├── RuntimeUnavailable          the runtime or its API cannot be reached
    │   ├── RuntimeTimeout              (TimeoutError) a runtime command hung; names the
    │   │                               command and the timeout
    │   ├── ContainerNotFound           (LookupError)
    │   ├── ImageNotFound               (LookupError) a restore's image is not there
    │   ├── ContainerNotRunning
    │   └── ContainerExists             (FileExistsError) the name is taken
    ├── RegistryError                   an OCI registry or image reference cannot be used
    │   ├── RegistryUnavailable         (ConnectionError) no connection, TLS failed, or it
    │   │                               dropped mid-transfer
    │   ├── RegistryRefused             (PermissionError) the registry answered with an error
    │   │                               (credentials, denied, unsupported); carries ``status``
    │   └── ReferenceNotFound           (LookupError) no image or blob at the reference
    ├── ImageMismatch                   a rootfs diff does not fit the image it is to be
    │                                   committed on (another base, or no base layers found)
    ├── UntrustedArtifact               unsigned, or signed by a key this host does not trust,
    │                                   or its signature does not verify
    └── SigningKeyError                 a signing key or trusted public key file is unusable

Warnings (:mod:`warnings` categories, also logged at WARNING) derive from
:class:`CedanaWarning`::

    CedanaWarning                       (UserWarning)
    └── LiveConnectionsWarning          leave_running with tcp_established: the connections
                                        stay live in the original
"""

from __future__ import annotations

import errno as errno_mod

__all__ = [
    "ArtifactCorrupt",
    "ArtifactError",
    "ArtifactExists",
    "CedanaError",
    "CedanaWarning",
    "ContainerError",
    "ContainerExists",
    "ContainerNotFound",
    "ContainerNotRunning",
    "CriuError",
    "CriuNotFound",
    "DumpFailed",
    "ImageMismatch",
    "ImageNotFound",
    "IncompatibleHost",
    "InvalidOption",
    "LiveConnectionsWarning",
    "NoSpace",
    "NotCheckpointable",
    "NotPermitted",
    "PidInUse",
    "ProcessNotFound",
    "ReferenceNotFound",
    "RegistryError",
    "RegistryRefused",
    "RegistryUnavailable",
    "RestoreFailed",
    "RuntimeTimeout",
    "RuntimeUnavailable",
    "SetupError",
    "SigningKeyError",
    "UnsafeArtifact",
    "UnsupportedFormat",
    "UntrustedArtifact",
]


class CedanaError(Exception):
    """Root of every error cedana raises."""


class InvalidOption(CedanaError, ValueError):
    """An option has a value it cannot take, or options that do not go together; raised
    before anything is frozen, the message says which and what to pass instead."""


class NoSpace(CedanaError, OSError):
    """A filesystem filled up while cedana wrote to it (``errno`` is ``ENOSPC`` or
    ``EDQUOT``, ``filename`` the path). The message names what filled it (the artifact,
    CRIU's images in the work dir) and what to do; the workload keeps running."""

    def __init__(
        self, message: str, *, filename: str | None = None, errno: int = errno_mod.ENOSPC
    ) -> None:
        super().__init__(errno, message, filename)

    def __str__(self) -> str:
        return str(self.strerror)


class SetupError(CedanaError):
    """The machine cannot checkpoint or restore as it is set up."""


class CriuNotFound(SetupError):
    """No usable ``criu`` binary (or pycriu) was found, or it is too old."""


class NotPermitted(SetupError, PermissionError):
    """The operation needs privileges this process lacks (usually root)."""


class CriuError(CedanaError):
    """CRIU failed.

    Attributes:
        errno: CRIU's error number (0 when CRIU gave none).
        log_tail: The last lines of CRIU's log, which usually say why.
        log_path: Where the full log was kept, if it was kept.
    """

    def __init__(
        self, message: str, *, errno: int = 0, log_tail: str = "", log_path: str | None = None
    ):
        super().__init__(message)
        self.errno = errno
        self.log_tail = log_tail
        self.log_path = log_path

    def __str__(self) -> str:
        text = super().__str__()
        if self.log_tail:
            text += "\nCRIU log (last lines):\n" + self.log_tail
        return text


class DumpFailed(CriuError):
    """CRIU could not dump the tree; the workload was left running."""


class RestoreFailed(CriuError):
    """CRIU could not restore the tree; nothing of it is left running."""


class PidInUse(RestoreFailed, FileExistsError):  # type: ignore[misc]  # errno: int, never None
    """A pid the checkpoint needs is taken by another process (or a zombie)."""


class IncompatibleHost(RestoreFailed):
    """This host cannot restore the checkpoint: its CRIU is older than the one that made
    it, or its CPU lacks features the images need, or it is another architecture.
    Raised before anything is unpacked or runs."""


class ProcessNotFound(CedanaError, ProcessLookupError):
    """No process has the given pid."""


class NotCheckpointable(CedanaError):
    """The target cannot be checkpointed as asked; the message says what to change."""


class ArtifactError(CedanaError):
    """A checkpoint artifact cannot be used."""


class ArtifactExists(ArtifactError, FileExistsError):
    """The output path exists and overwriting was not asked for."""


class ArtifactCorrupt(ArtifactError):
    """The artifact is truncated, was modified, or has members added or missing."""


class UnsafeArtifact(ArtifactError):
    """A member would land outside the target, or is a link or a device node; or a
    container checkpoint asks the host for more than the target runtime's defaults and
    the caller's grants allow (hooks, host paths, namespaces, capabilities, mounts,
    devices: see :mod:`cedana.container.confine`)."""


class UnsupportedFormat(ArtifactError):
    """The artifact's format version is not one this cedana reads."""


class ContainerError(CedanaError):
    """A container or its runtime could not be used."""


class RuntimeUnavailable(ContainerError):
    """The container runtime (binary or API socket) cannot be reached."""


class RuntimeTimeout(ContainerError, TimeoutError):
    """A runtime's command (``runc ...``) did not finish in time and was killed."""


class ContainerNotFound(ContainerError, LookupError):
    """No container has the given id or name."""


class ImageNotFound(ContainerError, LookupError):
    """The image a container checkpoint builds on is not in the target runtime."""


class ContainerNotRunning(ContainerError):
    """The container exists but has no running task to checkpoint."""


class ContainerExists(ContainerError, FileExistsError):
    """A container with the requested name already exists."""


class RegistryError(CedanaError):
    """An OCI registry, image layout or image reference cannot be used."""


class RegistryUnavailable(RegistryError, ConnectionError):
    """The registry cannot be reached (refused, timed out, TLS failed) or the connection
    dropped mid-transfer; nothing local was left half-written."""


class RegistryRefused(RegistryError, PermissionError):
    """The registry answered with an error: credentials missing or wrong, access denied,
    or a request it does not support. ``status`` is the HTTP status (0 when none)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ReferenceNotFound(RegistryError, LookupError):
    """No image (manifest) or blob is at the reference: a wrong tag, repository or path."""


class ImageMismatch(CedanaError):
    """A container's rootfs changes do not fit the image they are to be committed on: the
    image's layers are not the ones the checkpoint recorded, or cannot be found."""


class UntrustedArtifact(CedanaError):
    """The artifact's origin cannot be vouched for: it is unsigned, its signer's key is not
    trusted here, or its signature does not verify against its manifest.

    Nothing was restored or extracted. The message says how to trust the signer (or, for an
    unsigned or unknown-signer artifact, how to accept it anyway).
    """


class SigningKeyError(CedanaError):
    """A signing key or a trusted public key file cannot be used (missing, unreadable,
    readable by others, or not an Ed25519 key)."""


class CedanaWarning(UserWarning):
    """Root of the warnings cedana issues (``warnings.simplefilter("error", CedanaWarning)``
    turns them into errors)."""


class LiveConnectionsWarning(CedanaWarning):
    """A checkpoint with ``leave_running`` and ``tcp_established``: the original keeps its
    connections open, so a restore elsewhere meets peers that already talked to it (or saw
    its sockets close)."""
