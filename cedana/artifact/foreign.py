"""Checkpoints that other tools wrote, read as cedana artifacts.

A foreign format (podman's ``container checkpoint --export`` archive, first) is one
reader that recognises its layout and presents it as what the rest of cedana reads:
a :class:`~cedana.artifact.Manifest` (kind, runtime, workload facts, every member's
size and sha256) and members under cedana's names. Restore, inspect and export then
run unchanged on it. The reader, not this module, knows the format; each registers
itself (:func:`register`) from the runtime module that owns it, so this layer names no
runtime.

Such an archive carries no signature: whoever made it cannot be checked, so it is
refused before any of its members is read unless the caller accepts unsigned
artifacts (``trust="any"``, ``--insecure-accept-unsigned``), exactly as for an
unsigned cedana artifact. Then the reader verifies the whole archive (layout, member
names and types, sizes) before it presents anything, and every later read checks each
member against the digests it recorded, so the archive cannot change underneath.
A cedana artifact is never taken for a foreign one: its first member is
``manifest.json``, which no recogniser accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cedana.artifact.manifest import Manifest
from cedana.artifact.signing import Signature
from cedana.errors import UntrustedArtifact

__all__ = ["ForeignFormat", "ReadableArtifact", "recognise", "register"]


class ReadableArtifact(Protocol):
    """What :class:`~cedana.Checkpoint` reads of an artifact (cedana's own
    :class:`~cedana.artifact.Artifact` is one)."""

    @property
    def path(self) -> Path: ...

    @property
    def manifest(self) -> Manifest: ...

    @property
    def signature(self) -> Signature | None: ...

    def verify(self) -> None:
        """Read everything again and check it against the manifest."""
        ...

    def extract(self, dest: Path, *, only: Callable[[str], bool] | None = None) -> None:
        """Write the members (under their cedana names) into ``dest``, checking them."""
        ...

    def read_member(self, name: str) -> bytes:
        """One small member's bytes, checked."""
        ...


class ForeignFormat(Protocol):
    """One foreign checkpoint format's reader."""

    #: What people call it (``"podman checkpoint export"``).
    name: str

    def recognise(self, path: Path) -> bool:
        """Whether ``path`` is an archive of this format (a cheap look at its start)."""
        ...

    def open(self, path: Path) -> ReadableArtifact:
        """Verify the whole archive and present it as an artifact.

        Raises:
            ArtifactCorrupt, UnsafeArtifact: It is damaged or not safe to use.
        """
        ...

    def untrusted(self, path: Path) -> UntrustedArtifact:
        """The refusal of such an archive when unsigned artifacts are not accepted."""
        ...


_FORMATS: list[ForeignFormat] = []


def register(fmt: ForeignFormat) -> ForeignFormat:
    """Add a foreign format's reader (its runtime module calls this once, at import)."""
    _FORMATS.append(fmt)
    return fmt


def recognise(path: Path) -> ForeignFormat | None:
    """The foreign format of the file at ``path``, or None (a cedana artifact, or
    something no reader knows, which cedana's own reader then refuses)."""
    if not path.is_file():
        return None
    return next((f for f in _FORMATS if f.recognise(path)), None)
