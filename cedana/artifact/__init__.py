"""The checkpoint artifact: its manifest, and the archive that holds it with the CRIU images.

``manifest``  what an artifact says about itself (``manifest.json``)
``archive``   writing (zstd tar, plain tar, directory), opening, verifying, safe extraction
"""

from cedana.artifact.archive import Artifact, Compression, Form, open_artifact, write_artifact
from cedana.artifact.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    READABLE_FORMAT_VERSIONS,
    HostInfo,
    Manifest,
    Member,
    ProcessEntry,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "READABLE_FORMAT_VERSIONS",
    "Artifact",
    "Compression",
    "Form",
    "HostInfo",
    "Manifest",
    "Member",
    "ProcessEntry",
    "open_artifact",
    "write_artifact",
]
