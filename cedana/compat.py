"""Can this host restore a checkpoint? Checked before anything is unpacked or runs.

A checkpoint taken on another host restores here only when this host's CRIU reads what
the other's wrote and this CPU runs what the other's ran:

- **CRIU version**: the manifest records the dumping CRIU's version; an older CRIU here
  is refused (images gain fields and kinds between releases, and an old CRIU fails on
  them half-way, or restores them wrongly), a newer one is fine (CRIU reads its older
  images).
- **Architecture**: the images are of one architecture.
- **CPU features**: CRIU writes ``cpuinfo.img`` with every dump cedana makes (its FPU,
  xsave and instruction features); CRIU's own ``cpuinfo check`` (RPC ``CPUINFO_CHECK``,
  with the checks restore makes, :data:`cedana.criu.CPU_CAP`) compares it with this CPU.
  A workload restored on a CPU without a feature it used (AVX-512, a larger xsave area)
  would crash at its next such instruction, or have its FPU state cut short.
"""

from __future__ import annotations

import logging
import os
import re
import time

from cedana.checkpoint import Checkpoint
from cedana.criu import CriuBackend
from cedana.errors import IncompatibleHost
from cedana.staging import scratch_dir

__all__ = ["CPUINFO", "check_criu_version", "check_host", "parse_version"]

logger = logging.getLogger("cedana.compat")

#: CRIU's CPU image, as the artifact holds it.
CPUINFO = "cpuinfo.img"

_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``"4.2.1 (gitid)"`` -> ``(4, 2, 1)``; None for ``"unknown"`` or anything unreadable."""
    found = _VERSION.match(text)
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2)), int(found.group(3) or 0)


def check_criu_version(recorded: str, here: tuple[int, ...], here_text: str) -> None:
    """Refuse when this host's CRIU (``here``) is older than the one that dumped the
    images (``recorded``, as the manifest has it); an unreadable record is let through.

    Raises:
        IncompatibleHost: This CRIU is older.
    """
    dumped = parse_version(recorded)
    if dumped is None:
        logger.debug("checkpoint's CRIU version %r unknown: not compared", recorded)
        return
    mine = tuple(here) + (0,) * (3 - len(here))
    if mine[:3] < dumped:
        raise IncompatibleHost(
            f"this checkpoint was made by CRIU {recorded}, and this host has CRIU "
            f"{here_text}, which is older and may not read its images: install CRIU "
            f"{'.'.join(map(str, dumped))} or newer here (scripts/provision builds one), or "
            "restore on a host that has it"
        )


def check_host(checkpoint: Checkpoint, backend: CriuBackend) -> None:
    """Refuse a checkpoint this host cannot restore: older CRIU, other architecture, or a
    CPU without features the images need (CRIU's own check). Nothing is unpacked but
    ``cpuinfo.img``, and nothing runs. What the checkpoint does not record is not
    compared: a checkpoint without ``cpuinfo.img`` (made before cedana recorded it), a
    foreign archive's unknown host.

    Raises:
        IncompatibleHost: The reason, and what to do.
    """
    host = checkpoint.manifest.host
    machine = os.uname().machine
    # A foreign archive (podman's export) records no host: "unknown (...)".
    if not host.arch.startswith("unknown") and host.arch != machine:
        raise IncompatibleHost(
            f"this checkpoint was made on {host.arch} ({host.hostname}), and this host is "
            f"{machine}: CRIU images run on the architecture that made them; restore on "
            f"a {host.arch} host"
        )
    numbers, text = backend.version()
    check_criu_version(host.criu_version, numbers, text)
    if not any(m.name == CPUINFO for m in checkpoint.manifest.members):
        logger.debug("%s has no %s: CPU features not compared", checkpoint.path, CPUINFO)
        return
    started = time.monotonic()
    with scratch_dir(".cedana-cpuinfo-") as work:
        (work / CPUINFO).write_bytes(checkpoint.read_member(CPUINFO))
        reason = backend.cpuinfo_check(work)
    logger.debug("cpuinfo check: %s in %.3fs", reason or "ok", time.monotonic() - started)
    if reason is not None:
        raise IncompatibleHost(
            f"this host's CPU lacks what the checkpoint's images need (made on "
            f"{host.hostname}); CRIU's cpuinfo check says: {reason}. Restore on a host with "
            "the same CPU features (or a superset: same vendor and xsave layout); "
            "`criu cpuinfo check` in the unpacked images shows the same"
        )
