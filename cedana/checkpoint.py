"""Checkpoint: the public face of one checkpoint artifact."""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from cedana.artifact import Manifest, foreign, open_artifact, thaw
from cedana.artifact.foreign import ReadableArtifact
from cedana.artifact.signing import KeySource, Trust, TrustStatus, check_trust, untrusted
from cedana.errors import ArtifactCorrupt, ArtifactError
from cedana.staging import scratch_dir
from cedana.units import human_bytes

if TYPE_CHECKING:
    from cedana.artifact import Inspection

__all__ = ["Checkpoint"]


def _needed_for_inspection(name: str) -> bool:
    # Page contents can be gigabytes and say nothing inspect shows.
    return not name.startswith("pages-") and "/" not in name


@attrs.define(eq=False)
class Checkpoint:
    """An opened checkpoint artifact: its manifest, signer, verification, inspection.

    Get one from :func:`cedana.open` or from a ``checkpoint()`` call.
    """

    _artifact: ReadableArtifact = attrs.field(alias="artifact")
    _trust: TrustStatus = attrs.field(alias="trust")
    #: CRIU's account of the dump that made this checkpoint, on the object a
    #: ``checkpoint()`` call returns (None on one opened from a file): ``frozen_time``,
    #: ``freezing_time``, ``memdump_time``, ``memwrite_time`` (microseconds),
    #: ``pages_written``, ... as CRIU's ``stats-dump`` names them.
    dump_stats: Mapping[str, int] | None = attrs.field(default=None, kw_only=True)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        verify: bool = True,
        trust: Trust = "trusted",
        trusted_keys: Iterable[KeySource] | None = None,
    ) -> Checkpoint:
        """Open the artifact at ``path``, check who signed it, then (by default) verify it.

        Args:
            verify: Read every member and check it against the manifest now.
            trust: ``"trusted"`` refuses an artifact that no trusted key signed (this host's
                own key, the keys in its trust dir, ``trusted_keys``); ``"any"`` accepts an
                unsigned one or an unknown signer's. A signature that does not verify is
                refused either way.
            trusted_keys: More public keys to trust (PEM files or
                :class:`~cedana.artifact.signing.PublicKey`).

        An archive another tool wrote in a format cedana reads (podman's ``container
        checkpoint --export``: :mod:`cedana.artifact.foreign`) opens as a checkpoint
        too. It is unsigned, so it needs ``trust="any"``; it is then verified whole
        whatever ``verify`` says.

        Raises:
            FileNotFoundError: Nothing at ``path``.
            UntrustedArtifact: Unsigned, an untrusted signer, or a bad signature; checked
                before any member is read.
            ArtifactCorrupt, UnsafeArtifact, UnsupportedFormat: Not usable.
        """
        path = Path(path)
        fmt = foreign.recognise(path)
        if fmt is not None:
            if trust != "any":
                raise fmt.untrusted(path)
            return cls(artifact=fmt.open(path), trust=TrustStatus(signature=None, trusted=False))
        artifact = open_artifact(path, verify=False)
        status = check_trust(path, artifact.signature, trust=trust, trusted_keys=trusted_keys)
        if verify:
            artifact.verify()
        return cls(artifact=artifact, trust=status)

    @classmethod
    def of(
        cls,
        checkpoint: Checkpoint | str | os.PathLike[str],
        *,
        trust: Trust = "trusted",
        trusted_keys: Iterable[KeySource] | None = None,
    ) -> Checkpoint:
        """What restores take: ``checkpoint`` itself, or the one at that path opened unverified
        (extracting it checks every member anyway); either way refused unless a trusted key
        signed it (trusted when it was opened, or by ``trusted_keys``) or ``trust`` is
        ``"any"``.

        Raises:
            UntrustedArtifact: As for :meth:`open`.
        """
        if not isinstance(checkpoint, Checkpoint):
            return cls.open(checkpoint, verify=False, trust=trust, trusted_keys=trusted_keys)
        if checkpoint.trusted or trust == "any":
            return checkpoint
        fmt = foreign.recognise(checkpoint.path) if checkpoint.signer.signature is None else None
        if fmt is not None:  # another tool's archive: never signed
            raise fmt.untrusted(checkpoint.path)
        if trusted_keys is not None:
            signature = checkpoint.signer.signature
            status = check_trust(checkpoint.path, signature, trusted_keys=trusted_keys)
            return cls(artifact=checkpoint._artifact, trust=status)
        raise untrusted(checkpoint.path, checkpoint.signer)

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
    def signer(self) -> TrustStatus:
        """Who signed it (``signer.key_id``, None when unsigned) and whether this host trusts
        them (``signer.trusted``, ``signer.trusted_by``)."""
        return self._trust

    @property
    def trusted(self) -> bool:
        """A trusted key signed it (as decided when it was opened)."""
        return self._trust.trusted

    @property
    def kind(self) -> str:
        """``"process"``, ``"container"``, ``"rootfs"`` (root filesystem changes only) or
        ``"vm"`` (a whole VM: :mod:`cedana.runtimes.kata`)."""
        return self.manifest.kind

    @property
    def runtime(self) -> str | None:
        """The container runtime it came from, if any."""
        return self.manifest.runtime

    @property
    def images_size(self) -> int:
        """The members' bytes: what unpacking it for a restore takes."""
        return sum(m.size for m in self.manifest.members)

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

    def stream_member(self, name: str, write: Callable[[bytes], object]) -> None:
        """Hand one member's bytes to ``write`` as they are read (a VM's saved state into
        the QEMU that loads it); its digest is checked at its end (see
        :meth:`cedana.artifact.Artifact.stream_member`).

        Raises:
            ArtifactError: The artifact's format cannot stream a member, or it is damaged.
        """
        stream = getattr(self._artifact, "stream_member", None)
        if stream is None:
            raise ArtifactError(f"{self.path} is not a cedana artifact: it cannot stream {name}")
        stream(name, write)

    def inspect(self) -> Inspection:
        """Decode the CRIU images: processes, memory, files, sockets. Needs no root.

        A rootfs-only checkpoint has no CRIU images: its inspection is empty (no processes,
        no memory); :func:`cedana.container.runc.container_summary` says what it holds.

        Raises:
            ArtifactError: A VM checkpoint (kind ``"vm"``) holds QEMU's state, not CRIU
                images; its manifest says what it holds.
        """
        from cedana.artifact import Inspection, inspect_images

        if self.kind == "rootfs":
            return Inspection(
                processes=(),
                files=(),
                sockets=(),
                memory_pages=0,
                memory_bytes=0,
                images_bytes=self.images_size,
            )

        if self.kind == "vm":
            raise ArtifactError(
                f"{self.path} is a VM checkpoint: it holds QEMU's saved state, not CRIU "
                "images; its manifest (cedana inspect) says what it holds"
            )

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
        return attrs.evolve(inspection, images_bytes=self.images_size)

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
            "signature": self._trust.to_dict(),
            "members": len(m.members),
            "images_bytes": self.images_size,
            "size": self.size,
            **({"dump_stats": dict(self.dump_stats)} if self.dump_stats else {}),
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
            f"{human_bytes(s['size'])} on disk ({human_bytes(s['images_bytes'])} of images), "
            f"signature: {html.escape(self._trust.describe())}"
            f"<table><tr><th>pid</th><th>ppid</th><th>command</th></tr>{rows}</table></div>"
        )
