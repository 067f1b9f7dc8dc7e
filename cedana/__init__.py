"""cedana: checkpoint and restore live Linux workloads through CRIU.

Layout, one concern per layer (each holds the one below)::

    api.py        check / open / restore: the top-level verbs
    registry.py   the runtimes: CLI targets, what restores into what (each registers itself)
    process.py    Process, spawn: a live process tree (uses procfs.py, descriptors.py: what
                  leads outside the tree and how restore reattaches it; pidns.py: new pid
                  namespaces held by cedana's init, _pidinit.py; compat.py: whether this
                  host can run a checkpoint's images; options.py: CheckpointOptions,
                  RestoreOptions, which every layer takes)
    container/    RuncContainer: a runc container (runc state, cgroups, namespaces, mounts)
    rootfs/       snapshotters: a container's rootfs changes (overlay, containerd, overlay2)
    runtimes/     ContainerdContainer, DockerContainer, PodmanContainer, CrioContainer: runc +
                  a snapshotter + its own API; KataSandbox: a kata sandbox's VM saved
                  whole through QEMU (QMP)
    oci/          OCI images: layouts (oci:, oci-archive:), the distribution API (docker://)
    images.py     push / pull: a checkpoint as an OCI artifact in a registry or layout
    commit.py     commit: a container's rootfs changes as an OCI image on its original one
    checkpoint.py Checkpoint: an opened artifact (manifest, verify, inspect)
    artifact/     manifest, zstd tar archive, verification, signatures, image inspection
    criu.py       the CRIU boundary (the only importer of pycriu)
    errors.py     CedanaError and its tree
    cli.py        the ``cedana`` command, thin over the above
"""

import logging

from cedana.api import check, export, open, restore
from cedana.checkpoint import Checkpoint
from cedana.commit import commit
from cedana.container import Grants, RuncContainer
from cedana.criu import CriuReport
from cedana.errors import (
    ArtifactCorrupt,
    ArtifactError,
    ArtifactExists,
    CedanaError,
    CedanaWarning,
    ContainerError,
    ContainerExists,
    ContainerNotFound,
    ContainerNotRunning,
    CriuError,
    CriuNotFound,
    DumpFailed,
    ImageMismatch,
    ImageNotFound,
    IncompatibleHost,
    InvalidOption,
    LiveConnectionsWarning,
    NoSpace,
    NotCheckpointable,
    NotPermitted,
    PidInUse,
    ProcessNotFound,
    ReferenceNotFound,
    RegistryError,
    RegistryRefused,
    RegistryUnavailable,
    RestoreFailed,
    RuntimeTimeout,
    RuntimeUnavailable,
    SetupError,
    SigningKeyError,
    UnsafeArtifact,
    UnsupportedFormat,
    UntrustedArtifact,
)
from cedana.images import pull, push
from cedana.process import CheckpointOptions, Process, RestoreOptions, spawn
from cedana.runtimes import (
    ContainerdContainer,
    CrioContainer,
    DockerContainer,
    KataSandbox,
    PodmanContainer,
)

__version__ = "0.1.0"

logging.getLogger("cedana").addHandler(logging.NullHandler())

__all__ = [
    "ArtifactCorrupt",
    "ArtifactError",
    "ArtifactExists",
    "CedanaError",
    "CedanaWarning",
    "Checkpoint",
    "CheckpointOptions",
    "ContainerError",
    "ContainerExists",
    "ContainerNotFound",
    "ContainerNotRunning",
    "ContainerdContainer",
    "CrioContainer",
    "CriuError",
    "CriuNotFound",
    "CriuReport",
    "DockerContainer",
    "DumpFailed",
    "Grants",
    "ImageMismatch",
    "ImageNotFound",
    "IncompatibleHost",
    "InvalidOption",
    "KataSandbox",
    "LiveConnectionsWarning",
    "NoSpace",
    "NotCheckpointable",
    "NotPermitted",
    "PidInUse",
    "PodmanContainer",
    "Process",
    "ProcessNotFound",
    "ReferenceNotFound",
    "RegistryError",
    "RegistryRefused",
    "RegistryUnavailable",
    "RestoreFailed",
    "RestoreOptions",
    "RuncContainer",
    "RuntimeTimeout",
    "RuntimeUnavailable",
    "SetupError",
    "SigningKeyError",
    "UnsafeArtifact",
    "UnsupportedFormat",
    "UntrustedArtifact",
    "check",
    "commit",
    "export",
    "open",
    "pull",
    "push",
    "restore",
    "spawn",
]
