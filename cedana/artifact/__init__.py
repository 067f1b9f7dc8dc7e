"""The checkpoint artifact: its manifest, its signature, and the archive that holds them with
the CRIU images.

``manifest``     what an artifact says about itself (``manifest.json``)
``signing``      Ed25519 signatures over the manifest, and whose keys are trusted
``writer``       :func:`write_artifact`: zstd tar, plain tar or directory, written atomically
``reader``       :func:`open_artifact` and :class:`Artifact`: verifying, reading, safe extraction
``inspection``   the records :func:`inspect_images` decodes from the images
``_zstd``        zstd frame tracking (a cut file is told from a whole one)
``_tar``         member headers, and the strict tar reader
``_members``     what both sides share: safe names, listing a tree, hashing, the errors
``_files``       sinks and the tree writer members are extracted with
``_decode``      CRIU images -> inspection records (through :func:`cedana.criu.load_image`)
``_render``      inspection records -> text and HTML tables

Other layers import from here, not from the modules.
"""

from cedana.artifact._decode import inspect_images
from cedana.artifact._files import remove_path
from cedana.artifact.inspection import FileInfo, Inspection, ProcessInfo, SocketInfo
from cedana.artifact.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    READABLE_FORMAT_VERSIONS,
    HostInfo,
    Manifest,
    Member,
    ProcessEntry,
    thaw,
)
from cedana.artifact.reader import Artifact, Form, open_artifact
from cedana.artifact.writer import (
    ArtifactWriter,
    Compression,
    MemberStream,
    check_destination,
    check_write_arguments,
    sweep_temporaries,
    write_artifact,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "READABLE_FORMAT_VERSIONS",
    "Artifact",
    "ArtifactWriter",
    "Compression",
    "FileInfo",
    "Form",
    "HostInfo",
    "Inspection",
    "Manifest",
    "Member",
    "MemberStream",
    "ProcessEntry",
    "ProcessInfo",
    "SocketInfo",
    "check_destination",
    "check_write_arguments",
    "inspect_images",
    "open_artifact",
    "remove_path",
    "sweep_temporaries",
    "thaw",
    "write_artifact",
]
