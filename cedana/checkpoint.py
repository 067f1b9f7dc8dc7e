"""Checkpoint: the public face of one checkpoint artifact."""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from cedana.artifact.archive import Artifact, open_artifact
from cedana.artifact.manifest import Manifest, thaw
from cedana.errors import ArtifactCorrupt
from cedana.staging import scratch_dir
from cedana.units import human_bytes

if TYPE_CHECKING:
    from cedana.artifact.inspect import Inspection

__all__ = ["Checkpoint"]


def _needed_for_inspection(name: str) -> bool:
    # Page contents can be gigabytes and say nothing inspect shows.
    return not name.startswith("pages-") and "/" not in name


@attrs.define(eq=False)
class Checkpoint:
    """An opened checkpoint artifact: its manifest, verification, inspection.

    Get one from :func:`cedana.open` or from a ``checkpoint()`` call.
    """

    _artifact: Artifact = attrs.field(alias="artifact")

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = True) -> Checkpoint:
        """Open (and by default fully verify) the artifact at ``path``.

        Raises:
            FileNotFoundError: Nothing at ``path``.
            ArtifactCorrupt, UnsafeArtifact, UnsupportedFormat: Not usable.
        """
        return cls(artifact=open_artifact(Path(path), verify=verify))

    @classmethod
    def of(cls, checkpoint: Checkpoint | str | os.PathLike[str]) -> Checkpoint:
        """``checkpoint`` itself, or the one at that path opened unverified (what restores
        take: extracting it checks every member anyway)."""
        if isinstance(checkpoint, Checkpoint):
            return checkpoint
        return cls.open(checkpoint, verify=False)

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, kind={self.kind!r})"

    @property
    def path(self) -> Path:
        """The artifact's file or directory."""
        return self._artifact.path

    @property
    def manifest(self) -> Manifest:
        """The artifact's manifest."""
        return self._artifact.manifest

    @property
    def kind(self) -> str:
        """``"process"`` or ``"container"``."""
        return self.manifest.kind

    @property
    def runtime(self) -> str | None:
        """The container runtime it came from, if any."""
        return self.manifest.runtime

    @property
    def size(self) -> int:
        """Bytes on disk."""
        if self.path.is_dir():
            return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return self.path.stat().st_size

    def verify(self) -> None:
        """Check every member against the manifest; raise if anything is off."""
        self._artifact.verify()

    def extract(self, dest: Path, *, only: Callable[[str], bool] | None = None) -> None:
        """Unpack the members into ``dest``, verifying them as they come."""
        self._artifact.extract(dest, only=only)

    def read_member(self, name: str) -> bytes:
        """One small member's bytes, verified."""
        return self._artifact.read_member(name)

    def inspect(self) -> Inspection:
        """Decode the CRIU images: processes, memory, files, sockets. Needs no root."""
        from cedana.artifact.inspect import inspect_images

        with scratch_dir(".cedana-inspect-", fills="the checkpoint's images") as tmp:
            images = tmp / "images"
            self.extract(images, only=_needed_for_inspection)
            # CRIU's images give the tree's root ppid 0; the manifest has its real parent.
            parents = {p.pid: p.ppid for p in self.manifest.tree}
            try:
                inspection = inspect_images(images, parents=parents)
            except ArtifactCorrupt as exc:  # it names the scratch copy: name the artifact
                detail = str(exc).removeprefix(f"{images}: ")
                raise ArtifactCorrupt(
                    f"{self.path} is damaged: {detail}; the checkpoint cannot be used"
                ) from exc
        # Page contents were not unpacked; the manifest knows every member's size.
        return attrs.evolve(inspection, images_bytes=sum(m.size for m in self.manifest.members))

    def summary(self) -> dict[str, Any]:
        """The manifest's key facts as a JSON-able dict."""
        m = self.manifest
        return {
            "path": str(self.path),
            "kind": m.kind,
            "runtime": m.runtime,
            "created": m.created,
            "host": {"kernel": m.host.kernel, "arch": m.host.arch, "criu": m.host.criu_version},
            "processes": [{"pid": p.pid, "ppid": p.ppid, "command": p.command} for p in m.tree],
            "options": thaw(m.options),
            "members": len(m.members),
            "images_bytes": sum(x.size for x in m.members),
            "size": self.size,
        }

    def _repr_html_(self) -> str:
        s = self.summary()
        rows = "".join(
            f"<tr><td>{p['pid']}</td><td>{p['ppid']}</td><td><code>{html.escape(p['command'])}"
            "</code></td></tr>"
            for p in s["processes"]
        )
        runtime = f" ({html.escape(s['runtime'])})" if s["runtime"] else ""
        return (
            f"<div><b>cedana checkpoint</b> <code>{html.escape(s['path'])}</code><br>"
            f"{html.escape(s['kind'])}{runtime}, created {html.escape(s['created'])} "
            f"on {html.escape(s['host']['kernel'])} / CRIU {html.escape(s['host']['criu'])}, "
            f"{human_bytes(s['size'])} on disk ({human_bytes(s['images_bytes'])} of images)"
            f"<table><tr><th>pid</th><th>ppid</th><th>command</th></tr>{rows}</table></div>"
        )
