"""Owners in and out of a user namespace: a container's uid/gid mappings, both ways.

A container in a user namespace stores its files under host ids: the mapping
``containerID 0, hostID 100000, size 65536`` makes the container's root own its files as
host uid 100000. A diff that is to start a container elsewhere (on another mapping, in
another runtime, or as an image layer) needs the owners as the container sees them;
:class:`IdShift` turns host ids into the container's (:meth:`IdShift.inside`, at capture)
and back (:meth:`IdShift.outside`, when a diff is applied for a container mapped the same
or another way). An id the mapping does not cover shows inside as the overflow id 65534,
as the kernel shows it (``/proc/sys/kernel/overflowuid``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from cedana.errors import InvalidOption

__all__ = ["OVERFLOW_ID", "IdShift"]

#: What an unmapped id shows as inside a user namespace (the kernel's default overflow id).
OVERFLOW_ID = 65534

#: The mapping of a namespace's ids to the same ids (every id but the invalid -1).
_IDENTITY = (0, 0, (1 << 32) - 1)

#: (inside, outside, size): one line of ``uid_map`` (container id, host id, count).
Range = tuple[int, int, int]


def _ranges(value: Iterable[Any]) -> tuple[Range, ...]:
    out = []
    for item in value:
        if isinstance(item, Mapping):
            inside, outside, size = item["containerID"], item["hostID"], item["size"]
        else:
            inside, outside, size = item
        values = (inside, outside, size)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"a uid/gid mapping needs three non-negative integers, not {item!r}")
        if size == 0:
            raise ValueError(f"a uid/gid mapping of size 0: {item!r}")
        out.append((inside, outside, size))
    return tuple(out)


def _map(ranges: tuple[Range, ...], value: int, *, inward: bool) -> int | None:
    for inside, outside, size in ranges:
        start, to = (outside, inside) if inward else (inside, outside)
        if start <= value < start + size:
            return to + value - start
    return None


@attrs.frozen(kw_only=True)
class IdShift:
    """A container's uid and gid mappings (its OCI config's ``uidMappings`` and
    ``gidMappings``, or ``/proc/PID/uid_map``'s lines).

    Attributes:
        uids: (container id, host id, size) ranges of user ids.
        gids: The same for group ids.
    """

    uids: tuple[Range, ...] = attrs.field(converter=_ranges)
    gids: tuple[Range, ...] = attrs.field(converter=_ranges)

    @classmethod
    def of_config(cls, config: Mapping[str, Any], *, what: str) -> IdShift | None:
        """The mappings of an OCI runtime config (``linux.uidMappings``/``gidMappings``);
        None when it has none (no user namespace: ids inside are the host's).

        Raises:
            InvalidOption: The mappings are malformed.
        """
        linux = config.get("linux") or {}
        uids, gids = linux.get("uidMappings") or (), linux.get("gidMappings") or ()
        if not uids and not gids:
            return None
        try:
            return cls(uids=uids or [_IDENTITY], gids=gids or [_IDENTITY])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidOption(f"the uid/gid mappings of {what} are malformed ({exc})") from None

    def inside(self, uid: int, gid: int) -> tuple[int, int]:
        """Host owner -> the owner the container sees (65534 for an id it does not map)."""
        u = _map(self.uids, uid, inward=True)
        g = _map(self.gids, gid, inward=True)
        return (OVERFLOW_ID if u is None else u, OVERFLOW_ID if g is None else g)

    def outside(self, uid: int, gid: int) -> tuple[int, int]:
        """The container's owner -> the host's; an id the mapping does not cover stays
        as it is, so a diff never names a host id outside the mapping it comes with but the
        overflow id's owner (nobody)."""
        u = _map(self.uids, uid, inward=False)
        g = _map(self.gids, gid, inward=False)
        return (
            self.outside_overflow(self.uids) if u is None else u,
            self.outside_overflow(self.gids) if g is None else g,
        )

    @staticmethod
    def outside_overflow(ranges: tuple[Range, ...]) -> int:
        """What an id the mapping does not cover becomes on the host: the overflow id,
        mapped out if the mapping covers it, else the overflow id itself."""
        mapped = _map(ranges, OVERFLOW_ID, inward=False)
        return OVERFLOW_ID if mapped is None else mapped

    def to_json(self) -> dict[str, Any]:
        """The mappings as the manifest records them (OCI's spelling)."""

        def spelled(ranges: tuple[Range, ...]) -> list[dict[str, int]]:
            return [{"containerID": i, "hostID": o, "size": n} for i, o, n in ranges]

        return {"uidMappings": spelled(self.uids), "gidMappings": spelled(self.gids)}
