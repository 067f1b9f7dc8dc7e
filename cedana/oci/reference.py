"""Image references: where an image is read from or written to.

========================================  ===================================================
``oci:DIR[:NAME]``                         an OCI image layout directory (skopeo's spelling)
``oci-archive:PATH[:NAME]``                the same layout as a tar file (podman save's)
``docker://HOST[:PORT]/REPO[:TAG|@DIG]``   a registry, through the OCI distribution API
========================================  ===================================================

A layout's NAME (its ``org.opencontainers.image.ref.name``) is split off at the first
colon, as containers/image does, so it may be a tag (``latest``) or a whole image name
(``localhost/app:v1``, which ``podman load`` and ``ctr images import`` name the image by).
A registry reference must name its host (there is no default registry). The tag defaults
to ``latest``. Whether a registry is spoken to over TLS is the caller's (``tls=``); left
unsaid, it is plain HTTP for a loopback host (``localhost``, ``127.*``, ``[::1]``), as
test registries are, and TLS everywhere else.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

import attrs

from cedana.errors import InvalidOption
from cedana.oci.media import check_digest

__all__ = ["Reference", "parse_reference"]

Transport = Literal["oci", "oci-archive", "docker"]

# distribution/reference's grammar, lower case path components.
_REPO = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# image-spec's org.opencontainers.image.ref.name: a tag or a whole name (localhost/app:v1).
_REF_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._:@/+-]{0,254})")
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?")

_FORMS = "oci:DIR[:TAG], oci-archive:PATH[:TAG] or docker://HOST/REPO[:TAG]"


@attrs.frozen(kw_only=True)
class Reference:
    """A parsed image reference.

    Attributes:
        transport: ``"oci"`` (a layout directory), ``"oci-archive"`` (a layout tar) or
            ``"docker"`` (a registry).
        path: The directory or tar file (the layout transports).
        host: ``HOST[:PORT]`` of the registry.
        repository: The repository in the registry (``team/app``).
        tag: The tag (a layout's ``org.opencontainers.image.ref.name``); None for a
            layout reference without one, which means its only image.
        digest: ``sha256:...`` when the reference pins a manifest by digest.
    """

    transport: Transport
    path: Path | None = None
    host: str | None = None
    repository: str | None = None
    tag: str | None = None
    digest: str | None = None

    @property
    def is_registry(self) -> bool:
        """Whether this names a registry (``docker://``) rather than a local layout."""
        return self.transport == "docker"

    @property
    def loopback(self) -> bool:
        """Whether the registry's host is this machine (plain HTTP by default)."""
        if self.host is None:
            return False
        name = self.host
        if name.startswith("["):
            name = name[1 : name.index("]")]
        else:
            name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def with_tag(self, tag: str) -> Reference:
        """The same place with another tag (and no digest)."""
        return attrs.evolve(self, tag=tag, digest=None)

    def __str__(self) -> str:
        if self.transport == "docker":
            pin = f"@{self.digest}" if self.digest else f":{self.tag}"
            return f"docker://{self.host}/{self.repository}{pin}"
        return f"{self.transport}:{self.path}" + (f":{self.tag}" if self.tag else "")


def parse_reference(text: str | Reference) -> Reference:
    """Parse ``oci:DIR[:TAG]``, ``oci-archive:PATH[:TAG]`` or ``docker://HOST/REPO[:TAG]``.

    Raises:
        InvalidOption: Not one of these forms; the message shows them.
    """
    if isinstance(text, Reference):
        return text
    if text.startswith("docker://"):
        return _parse_registry(text, text[len("docker://") :])
    transports: tuple[Transport, ...] = ("oci-archive", "oci")
    for transport in transports:
        prefix = transport + ":"
        if text.startswith(prefix):
            return _parse_layout(text, transport, text[len(prefix) :])
    raise InvalidOption(f"{text!r} is no image reference; use {_FORMS}")


def _parse_layout(text: str, transport: Transport, rest: str) -> Reference:
    # As containers/image splits it: at the first colon, so the name may hold colons.
    path, sep, tag_text = rest.partition(":")
    tag = tag_text if sep else None
    if not path:
        raise InvalidOption(f"{text!r} names no path; use {_FORMS}")
    if tag is not None and not _REF_NAME.fullmatch(tag):
        raise InvalidOption(f"{text!r}: {tag!r} is not a valid image name or tag")
    return Reference(transport=transport, path=Path(path), tag=tag)


def _parse_registry(text: str, rest: str) -> Reference:
    host, slash, name = rest.partition("/")
    if not slash or not name or not _HOST.fullmatch(host):
        raise InvalidOption(f"{text!r} names no registry host; use docker://HOST[:PORT]/REPO[:TAG]")
    digest = tag = None
    if "@" in name:
        name, _, digest = name.partition("@")
        check_digest(digest, f"{text!r}'s digest")
    else:
        last = name.rsplit("/", 1)[-1]
        if ":" in last:
            name, _, tag = name.rpartition(":")
            if not _TAG.fullmatch(tag):
                raise InvalidOption(f"{text!r}: {tag!r} is not a valid tag")
        else:
            tag = "latest"
    if not _REPO.fullmatch(name):
        raise InvalidOption(
            f"{text!r}: {name!r} is not a repository name (lower case letters, digits and "
            "separators . _ - /)"
        )
    return Reference(transport="docker", host=host, repository=name, tag=tag, digest=digest)
