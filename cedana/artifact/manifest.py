"""The manifest of a checkpoint artifact: what was dumped, where, how, and every member's digest.

The manifest is ``manifest.json``, the first member of an artifact. It is plain JSON written with
sorted keys, so two manifests with the same content are the same bytes, and a person can read it
with ``tar --zstd -xOf job.tar.zst manifest.json``.

JSON-able values (``options``, ``workload``) are frozen on the way in: mappings become read-only
``types.MappingProxyType`` views and lists become tuples. A manifest is shared between the layers
(the container layer reads what the process layer wrote), and a frozen value means no layer can
change what another one sees; ``to_json`` writes them back as JSON objects and arrays, so a
manifest survives ``from_json(to_json(m)) == m`` exactly.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import types
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import attrs

from cedana.errors import ArtifactCorrupt, UnsupportedFormat

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "READABLE_FORMAT_VERSIONS",
    "HostInfo",
    "Manifest",
    "Member",
    "ProcessEntry",
    "thaw",
]

FORMAT_VERSION = 3
"""The format version this cedana writes. Version 2 adds the ``manifest.sig`` member and
the rootfs diff's ``format``; an older cedana then says to upgrade instead of taking the
signature for an added member. Version 3 lists each member's BLAKE3 digest instead of its
sha256 (BLAKE3 hashes a gigabyte in a fraction of sha256's time on CPUs without SHA
instructions, so the digest keeps up with the compressor) and may store members in any
order after the manifest (pages as CRIU sends them)."""

READABLE_FORMAT_VERSIONS = frozenset({1, 2, 3})
"""The format versions this cedana reads (version 1: unsigned, written before signatures)."""

MANIFEST_NAME = "manifest.json"
"""The name of the manifest member, always the first member of an artifact."""

_SHA256 = re.compile(r"[0-9a-f]{64}")
#: ``rootfs``: a container's root filesystem changes only (no process images), which a
#: cedana reading only the first two kinds refuses as malformed: never as a process's.
#: ``vm``: a whole virtual machine saved through its hypervisor (no process images).
_KINDS = ("process", "container", "rootfs", "vm")

_T = TypeVar("_T")


def _freeze(value: Any) -> Any:
    """Return ``value`` as frozen JSON: mappings as read-only views, arrays as tuples.

    Raises:
        TypeError: ``value`` holds something JSON cannot carry (a non-string key, a set, ...).
        ValueError: ``value`` holds a NaN or an infinity, which JSON cannot carry either.
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} cannot be written to JSON")
        return value
    if isinstance(value, Mapping):
        frozen = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {key!r}")
            frozen[key] = _freeze(item)
        return types.MappingProxyType(frozen)
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    raise TypeError(f"{type(value).__name__} value {value!r} cannot be written to JSON")


def _freeze_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a JSON object, not {type(value).__name__}")
    frozen: Mapping[str, Any] = _freeze(value)
    return frozen


def thaw(value: Any) -> Any:
    """Turn a manifest's frozen JSON (read-only mappings, tuples) back into plain dicts and
    lists, as :func:`json.dumps` takes them."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thaw(item) for item in value]
    return value


def _int(minimum: int) -> Any:
    """Validator: an ``int`` (not a ``bool``) no smaller than ``minimum``."""

    def check(_instance: object, attribute: attrs.Attribute[int], value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{attribute.name} must be an integer, not {value!r}")
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, not {value}")

    return check


def _hex256(_instance: object, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not _SHA256.fullmatch(value)):
        raise ValueError(f"{attribute.name} must be 64 lowercase hex digits, not {value!r}")


def _utc_timestamp(_instance: object, _attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"created must be a string, not {value!r}")
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"created must be an ISO 8601 time, not {value!r}") from None
    if when.utcoffset() != datetime.timedelta(0):
        raise ValueError(f"created must be in UTC (ending in 'Z'), not {value!r}")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_str = attrs.validators.instance_of(str)


@attrs.frozen(kw_only=True)
class Member:
    """One file of the artifact besides the manifest: a CRIU image or a layer's own file.

    Attributes:
        name: Path inside the artifact, ``/``-separated and relative (``pages-1.img``,
            ``rootfs/diff.tar``).
        size: Size in bytes.
        blake3: Lowercase hex BLAKE3 (256 bits) of the content (format version 3).
        sha256: Lowercase hex SHA-256 of the content (format versions 1 and 2).

    A member has exactly one of the two digests.
    """

    name: str = attrs.field(validator=_str)
    size: int = attrs.field(validator=_int(0))
    blake3: str | None = attrs.field(default=None, validator=_hex256)
    sha256: str | None = attrs.field(default=None, validator=_hex256)

    def __attrs_post_init__(self) -> None:
        if (self.blake3 is None) == (self.sha256 is None):
            raise ValueError(
                f"member {self.name!r} must have exactly one digest (blake3 or sha256)"
            )

    @property
    def algorithm(self) -> str:
        """The digest's algorithm: ``"blake3"`` or ``"sha256"``."""
        return "blake3" if self.blake3 is not None else "sha256"

    @property
    def digest(self) -> str:
        """The digest, lowercase hex."""
        return self.blake3 if self.blake3 is not None else str(self.sha256)


@attrs.frozen(kw_only=True)
class HostInfo:
    """The machine a checkpoint was taken on; restore compares it with its own."""

    kernel: str = attrs.field(validator=_str)
    arch: str = attrs.field(validator=_str)
    criu_version: str = attrs.field(validator=_str)
    hostname: str = attrs.field(validator=_str)

    @classmethod
    def current(cls, criu_version: str) -> HostInfo:
        """Describe this machine, with the CRIU version the caller found."""
        uname = os.uname()
        return cls(
            kernel=uname.release,
            arch=uname.machine,
            criu_version=criu_version,
            hostname=uname.nodename,
        )


@attrs.frozen(kw_only=True)
class ProcessEntry:
    """One process of the dumped tree, for people and for ``inspect``."""

    pid: int = attrs.field(validator=_int(1))
    ppid: int = attrs.field(validator=_int(0))
    command: str = attrs.field(validator=_str)


def _entries(value: Iterable[ProcessEntry]) -> tuple[ProcessEntry, ...]:
    return tuple(value)


def _members(value: Iterable[Member]) -> tuple[Member, ...]:
    return tuple(value)


def _tuple_of(kind: type[_T]) -> Any:
    return attrs.validators.deep_iterable(
        member_validator=attrs.validators.instance_of(kind),
        iterable_validator=attrs.validators.instance_of(tuple),
    )


@attrs.frozen(kw_only=True)
class Manifest:
    """Everything an artifact says about itself (``manifest.json``).

    Attributes:
        format_version: The artifact format; readers refuse versions they do not know.
        created: When the checkpoint was taken, ISO 8601 in UTC (``2026-11-28T23:59:59Z``);
            defaults to now.
        host: The machine it was taken on.
        kind: ``"process"``, ``"container"`` (processes and their container),
            ``"rootfs"`` (a container's root filesystem changes only, no processes), or
            ``"vm"`` (a whole virtual machine, saved through its hypervisor:
            :mod:`cedana.runtimes.kata`).
        runtime: For containers, the name of the runtime that ran it, as that runtime
            names itself; this layer stores it and never reads a meaning into it.
        options: The checkpoint options used, as JSON.
        tree: The dumped processes, root first.
        workload: What the layer that took the checkpoint needs at restore (external file
            descriptors, container config, rootfs changes, ...), as JSON.
        members: Every other member of the artifact, sorted by name; filled in by
            :func:`cedana.artifact.write_artifact`.

    ``options`` and ``workload`` are frozen (see the module docstring): read them as mappings,
    and build a new manifest with :func:`attrs.evolve` to change them.
    """

    format_version: int = attrs.field(
        default=FORMAT_VERSION, validator=attrs.validators.in_(READABLE_FORMAT_VERSIONS)
    )
    created: str = attrs.field(factory=_now, validator=_utc_timestamp)
    host: HostInfo = attrs.field(validator=attrs.validators.instance_of(HostInfo))
    kind: str = attrs.field(validator=attrs.validators.in_(_KINDS))
    runtime: str | None = attrs.field(default=None, validator=attrs.validators.optional(_str))
    options: Mapping[str, Any] = attrs.field(converter=_freeze_mapping)
    tree: tuple[ProcessEntry, ...] = attrs.field(
        converter=_entries, validator=_tuple_of(ProcessEntry)
    )
    workload: Mapping[str, Any] = attrs.field(converter=_freeze_mapping)
    members: tuple[Member, ...] = attrs.field(
        default=(), converter=_members, validator=_tuple_of(Member)
    )

    def member(self, name: str) -> Member:
        """Return the member called ``name``.

        Raises:
            KeyError: The manifest lists no such member.
        """
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)

    def to_json(self) -> bytes:
        """Serialize to ``manifest.json`` bytes: sorted keys, 2-space indent, trailing newline."""
        document = thaw(attrs.asdict(self, recurse=True, filter=_listed))
        # ensure_ascii keeps a command line that is not valid UTF-8 (decoded with
        # surrogateescape) writable; the escapes read back to the same string.
        text = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False)
        return (text + "\n").encode("ascii")

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Parse ``manifest.json``.

        Keys this cedana does not know are ignored, so later releases can add information
        without a new format version; anything that changes how to restore bumps the version.

        Raises:
            UnsupportedFormat: The format version is not one this cedana reads.
            ArtifactCorrupt: The bytes are not JSON, or a field is missing or of the wrong type.
        """
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ArtifactCorrupt(
                f"the checkpoint manifest is not valid JSON ({exc}); the artifact is damaged, "
                "take a new checkpoint"
            ) from None
        if not isinstance(document, dict):
            raise _malformed("it is not a JSON object")
        version = document.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise _malformed("format_version is missing or not an integer")
        if version not in READABLE_FORMAT_VERSIONS:
            readable = ", ".join(str(v) for v in sorted(READABLE_FORMAT_VERSIONS))
            raise UnsupportedFormat(
                f"the checkpoint has format version {version}, but this cedana reads only "
                f"version(s) {readable}; upgrade cedana to restore it"
            )
        try:
            return cls(
                format_version=version,
                created=document["created"],
                host=HostInfo(**_fields(HostInfo, document["host"])),
                kind=document["kind"],
                runtime=document.get("runtime"),
                options=document["options"],
                tree=tuple(ProcessEntry(**_fields(ProcessEntry, e)) for e in document["tree"]),
                workload=document["workload"],
                members=tuple(Member(**_fields(Member, m)) for m in document.get("members", ())),
            )
        except KeyError as exc:
            raise _malformed(f"field {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError) as exc:
            raise _malformed(str(exc)) from None


def _listed(attribute: attrs.Attribute[Any], value: object) -> bool:
    """What ``to_json`` writes: all but the digest a member does not have."""
    return not (attribute.name in ("blake3", "sha256") and value is None)


def _fields(cls: type[Any], document: object) -> dict[str, Any]:
    """Pick the fields of attrs class ``cls`` out of a JSON object."""
    if not isinstance(document, dict):
        raise TypeError(f"{cls.__name__} must be a JSON object, not {document!r}")
    return {f.name: document[f.name] for f in attrs.fields(cls) if f.name in document}


def _malformed(detail: str) -> ArtifactCorrupt:
    return ArtifactCorrupt(
        f"the checkpoint manifest is malformed ({detail}); the artifact is damaged or was "
        "edited, take a new checkpoint"
    )
