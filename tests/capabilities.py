"""What a test needs from the machine, as skip markers.

Locally a missing capability skips with a reason; under CI (``CI=true``) it
fails instead, so nothing is silently untested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

STRICT = os.environ.get("CI", "").lower() in ("true", "1", "yes")


def criu_binary() -> str | None:
    """The ``criu`` the tests run (PATH first, then the sbin dirs provision installs to)."""
    return shutil.which("criu") or shutil.which("criu", path="/usr/local/sbin:/usr/sbin:/sbin")


def busybox_binary() -> str | None:
    """busybox-static, which the container tests build their root filesystems from."""
    return shutil.which("busybox", path="/bin:/usr/bin")


def criu_version() -> tuple[int, ...] | None:
    criu = criu_binary()
    if not criu:
        return None
    out = subprocess.run([criu, "--version"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.startswith("Version:"):
            return tuple(int(x) for x in line.split()[1].split(".") if x.isdigit())
    return None


def runtime_version(name: str) -> str | None:
    binary = shutil.which(name)
    if not binary:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "?"


def _need(ok: bool, reason: str) -> pytest.MarkDecorator:
    """A mark: nothing when ``ok``; else skip (locally) or fail (under CI, see conftest)."""
    if ok:
        return pytest.mark.capabilities_met
    if STRICT:
        return pytest.mark.missing_capability(reason)
    return pytest.mark.skip(reason=reason)


requires_root = _need(os.geteuid() == 0, "needs root")


def requires_criu(minimum: tuple[int, ...] = (4, 2)) -> pytest.MarkDecorator:
    version = criu_version()
    return _need(
        version is not None and version >= minimum,
        f"needs CRIU >= {'.'.join(map(str, minimum))} (found {version}); run scripts/provision",
    )


def requires_runtime(name: str) -> pytest.MarkDecorator:
    return _need(runtime_version(name) is not None, f"needs {name}; run scripts/provision")


def requires_tool(*names: str) -> pytest.MarkDecorator:
    """Command-line tools a test runs (GNU tar, zstd, unshare...)."""
    missing = [name for name in names if shutil.which(name) is None]
    return _need(not missing, f"needs {', '.join(missing)}; run scripts/provision")


def qemu_version() -> tuple[int, ...] | None:
    """``qemu-system-x86_64``'s version, or None."""
    text = runtime_version("qemu-system-x86_64")
    found = text.split("version ")[-1].split()[0] if text and "version " in text else ""
    parts = tuple(int(x) for x in found.split(".") if x.isdigit())
    return parts or None


def requires_kata() -> pytest.MarkDecorator:
    """A kata-style sandbox VM: QEMU >= 8.2 (vhost-user-fs migrates), a virtiofsd, Debian's
    guest kernel extracted by scripts/provision, busybox-static for the initramfs."""
    from tests.kata_guest import guest_kernel

    version = qemu_version()
    return _need(
        version is not None
        and version >= (8, 2)
        and shutil.which("virtiofsd") is not None
        and guest_kernel() is not None
        and busybox_binary() is not None,
        f"needs QEMU >= 8.2 (found {version}), virtiofsd and the guest kernel; run "
        "scripts/provision",
    )


def zdtm_source() -> Path | None:
    """CRIU's source tree with its zdtm tests (scripts/provision unpacks it), or None."""
    from tests.zdtm.suite import source_tree

    return source_tree()


requires_zdtm = _need(
    zdtm_source() is not None,
    "needs CRIU's source tree with test/zdtm (its path in /usr/local/src/cedana/criu-src); "
    "run scripts/provision",
)


requires_busybox = _need(
    busybox_binary() is not None, "needs busybox-static; run scripts/provision"
)


integration = [pytest.mark.integration, requires_root, requires_criu()]


def _docker_sdk() -> bool:
    try:
        import docker  # noqa: F401
    except ImportError:
        return False
    return True


#: dockerd (Debian's docker.io) and the docker SDK (the ``docker`` extra) for DockerContainer.
requires_docker = _need(
    shutil.which("dockerd") is not None and _docker_sdk(),
    "needs dockerd (run scripts/provision) and the docker SDK (pip install 'cedana[docker]')",
)
