"""Errors raised by cedana.

Every error derives from :class:`CedanaError`; leaves also derive from the
builtin that fits, so ``except ProcessLookupError`` keeps working::

    CedanaError
    ├── SetupError                      the machine cannot checkpoint (no CRIU, old CRIU, no root)
    │   ├── CriuNotFound                no usable ``criu`` binary or pycriu
    │   └── NotPermitted                (PermissionError) needs root / capabilities
    ├── CriuError                       CRIU refused or failed; carries ``errno`` and ``log_tail``
    │   ├── DumpFailed
    │   └── RestoreFailed
    │       └── PidInUse                (FileExistsError) a pid of the tree is taken
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
    └── ContainerError                  container runtimes
        ├── RuntimeUnavailable          the runtime or its API cannot be reached
        ├── ContainerNotFound           (LookupError)
        ├── ImageNotFound               (LookupError) a restore's image is not there
        ├── ContainerNotRunning
        └── ContainerExists             (FileExistsError) the name is taken
"""

from __future__ import annotations

__all__ = [
    "ArtifactCorrupt",
    "ArtifactError",
    "ArtifactExists",
    "CedanaError",
    "ContainerError",
    "ContainerExists",
    "ContainerNotFound",
    "ContainerNotRunning",
    "CriuError",
    "CriuNotFound",
    "DumpFailed",
    "ImageNotFound",
    "NotCheckpointable",
    "NotPermitted",
    "PidInUse",
    "ProcessNotFound",
    "RestoreFailed",
    "RuntimeUnavailable",
    "SetupError",
    "UnsafeArtifact",
    "UnsupportedFormat",
]


class CedanaError(Exception):
    """Root of every error cedana raises."""


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


class ContainerNotFound(ContainerError, LookupError):
    """No container has the given id or name."""


class ImageNotFound(ContainerError, LookupError):
    """The image a container checkpoint builds on is not in the target runtime."""


class ContainerNotRunning(ContainerError):
    """The container exists but has no running task to checkpoint."""


class ContainerExists(ContainerError, FileExistsError):
    """A container with the requested name already exists."""
