"""The registry of runtimes: what can be checkpointed, how the command line names it, and
what its checkpoints restore into.

Each runtime registers itself with one line in its own module (``process`` in
:mod:`cedana.process`, ``runc`` in :mod:`cedana.container.runc`, ``containerd`` in
:mod:`cedana.runtimes.containerd`); the command line's targets, :func:`cedana.restore`'s
dispatch and inspection read this table, so a new runtime is one module that registers
itself, with no edit to the layers below, the command line or ``cedana.restore``.

The registry sits at the bottom of the import graph (it imports nothing of cedana but
the error tree), so the lowest layer can register itself without a cycle.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from cedana.errors import CedanaError

__all__ = [
    "PLANNED",
    "Runtime",
    "entries",
    "lookup",
    "one_name",
    "parse_target",
    "register",
    "restore_targets",
]


def _no_summary(_restored: Any) -> dict[str, Any]:
    return {}


@attrs.frozen(kw_only=True)
class Runtime:
    """One runtime's entry.

    Attributes:
        name: The runtime's name: the manifest's ``runtime`` (``kind`` for processes), the
            command line's target prefix and ``restore(into=...)``'s value.
        target: How a command line target names one of its workloads (``runc:ID``).
        help: What such a target is, for the command line's help (one phrase).
        cls: The class of its workloads (``cls(**parse(ident), **flags)`` opens one).
        parse: The part of a target after ``NAME:`` -> ``cls``'s keywords; raises
            ValueError when it is malformed.
        restores_into: The runtimes its checkpoints restore into, the default first.
        flags: Command line option (``root``, ``address``) -> ``cls``'s keyword for it.
        runc_root: The runc state root its containers live under by default (None for a
            runtime not based on runc). A restore into plain runc reuses a checkpoint's
            recorded runc root only when this is runc's own default root: another
            runtime's shim root is that runtime's to manage.
        bare: A target without ``NAME:`` names one of these (a bare PID).
        summary: A restored ``cls`` -> the command line's ``runtime``/``name`` facts.
        adopt: Restores a checkpoint of another runc-based runtime into this one, through
            the runtime-neutral description (:mod:`cedana.container.portable`); None for
            a runtime that restores only the checkpoints ``restores_into`` lists.
        describe: The checkpoints of this runtime -> their neutral description, for
            another runtime's ``adopt``; None when they restore only into ``restores_into``.
        noun: What the command line calls one of its workloads (``container``).
    """

    name: str
    target: str
    help: str
    cls: type[Any]
    parse: Callable[[str], Mapping[str, Any]]
    restores_into: tuple[str, ...]
    flags: Mapping[str, str] = attrs.field(factory=dict)
    runc_root: Path | None = None
    bare: bool = False
    summary: Callable[[Any], Mapping[str, Any]] = _no_summary
    adopt: Callable[..., Any] | None = None
    describe: Callable[..., Any] | None = None
    noun: str = "container"

    @property
    def restore(self) -> Callable[..., Any]:
        """The restore of checkpoints into this runtime (``cls.restore``)."""
        restore: Callable[..., Any] = self.cls.restore
        return restore

    @property
    def restore_fresh(self) -> Callable[..., Any] | None:
        """The restore of its rootfs-only checkpoints as a new container started fresh
        (``cls.restore_fresh``); None for a runtime that has none."""
        fresh: Callable[..., Any] | None = getattr(self.cls, "restore_fresh", None)
        return fresh


#: Runtimes to come: their targets are recognised and said to be unsupported yet.
PLANNED: Mapping[str, str] = {}

_REGISTRY: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    """Add ``runtime`` to the registry (a runtime module calls this once, at import)."""
    _REGISTRY[runtime.name] = runtime
    return runtime


def entries() -> Iterator[Runtime]:
    """Every registered runtime, in the order they registered (lowest layer first)."""
    return iter(list(_REGISTRY.values()))


def lookup(name: str | None) -> Runtime | None:
    """The runtime named ``name``; None when no such runtime is registered."""
    return _REGISTRY.get(name or "")


def restore_targets(source: Runtime) -> tuple[str, ...]:
    """Every runtime ``source``'s checkpoints restore into, the default first: those it
    lists, then each runtime that adopts another's checkpoints, if ``source`` describes
    its own (:attr:`Runtime.describe`)."""
    adopting = [r.name for r in _REGISTRY.values() if r.adopt is not None]
    more = adopting if source.describe is not None else []
    return tuple(dict.fromkeys([*source.restores_into, *more]))


def one_name(keyword: str, *, forbidden: str = "") -> Callable[[str], Mapping[str, Any]]:
    """A ``parse`` for a target that is one non-empty name (``runc:ID``, ``podman:NAME``):
    the name as ``cls``'s ``keyword``; empty, or holding a character of ``forbidden``,
    is malformed."""

    def parse(ident: str) -> Mapping[str, Any]:
        if not ident or any(c in ident for c in forbidden):
            raise ValueError(ident)
        return {keyword: ident}

    return parse


def parse_target(target: str) -> tuple[Runtime, dict[str, Any]]:
    """A command line target (``runc:web``, ``1234``) -> its runtime and ``cls``'s keywords.

    Raises:
        CedanaError: A malformed target, one of a planned runtime, or an unknown prefix.
    """
    name, sep, ident = target.partition(":")
    if not sep:
        runtime = next((r for r in _REGISTRY.values() if r.bare), None)
        ident = target
    else:
        runtime = _REGISTRY.get(name)
    if runtime is None:
        if name in PLANNED:
            raise CedanaError(f"{name} containers are not supported by this cedana yet")
        spelled = [r.target for r in _REGISTRY.values()] + list(PLANNED.values())
        raise CedanaError(
            f"bad target {target!r}: expected {', '.join(spelled[:-1])} or {spelled[-1]}"
        )
    try:
        return runtime, dict(runtime.parse(ident))
    except ValueError:
        raise CedanaError(f"bad target {target!r}: expected {runtime.target}") from None


def targets_help() -> str:
    """The command line's target list (a reStructuredText literal block), one per runtime."""
    width = 27
    lines = ["Targets (checkpoint TARGET)::", ""]
    for r in _REGISTRY.values():
        left = f"  {r.target:<{width}}"
        if len(left) > width + 2:
            lines.append(left.rstrip())
            left = " " * (width + 2)
        body = textwrap.wrap(r.help, 78 - len(left))
        lines.append(left + body[0])
        lines += [" " * (width + 2) + more for more in body[1:]]
    return "\n".join(lines) + "\n"
