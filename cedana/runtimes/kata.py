"""KataSandbox: a kata containers sandbox VM (QEMU) saved whole through its hypervisor and
started again from that state (experimental).

A kata container runs in a lightweight VM, so host CRIU cannot reach its processes. This
runtime takes the VM-level snapshot instead, over QEMU's machine protocol (QMP,
:mod:`._qmp`):

- **find** the sandbox's QEMU: the process whose ``-name`` is ``sandbox-<id>`` (as kata
  starts it), or the one serving an explicit ``qmp=`` socket; its QMP socket is the one on
  its command line, else ``/run/vc/vm/<id>/qmp.sock``. A sandbox run by another
  hypervisor (cloud-hypervisor, firecracker) is refused, naming QEMU as the one supported.
- **check** before anything is stopped: the command line must be one a restore can rebuild
  (:mod:`._qemu_spec`'s allow-list), QEMU must report no migration blocker
  (``query-migrate``'s ``blocked-reasons``: a mounted 9p share is one), and a shared
  directory may hold writable overlay mounts (a container's rootfs) and no other mounts.
- **save**: ``stop``; each virtiofs shared directory (found from the virtiofsd serving the
  device's socket) is captured while the VM is paused, as for runc with the overlay
  snapshotter: its own contents, and each container rootfs overlay in it as its upper
  directory's changes with its lower layers' identities; then ``migrate`` to ``fd:`` on a pipe
  (its write end passed to QEMU with ``getfd``, ``SCM_RIGHTS``), whose bytes go straight
  into the artifact's zstd stream as member ``vm/state`` (no raw copy on disk);
  ``query-migrate`` must say ``completed``. The manifest (kind ``"vm"``) records QEMU's
  command line, version, the machine type it resolved (``pc-q35-10.0``), the accelerator,
  the device models and the kernel's and initrd's digests.
- ``leave_running`` continues the VM (``cont``); otherwise it is quit only once the
  artifact is complete, fsynced and read back, as a process is killed only then. Any failure
  before continues a VM that was running: it is never left paused.

Restore verifies the whole artifact first (a damaged ``vm/state`` is refused before any
QEMU starts), rebuilds the command line from the parsed, allow-listed description (never
the recorded argv: kernel and initrd must be the recorded files, by digest; the machine
type and every device model must exist in this host's QEMU), puts each shared directory
back into a new directory (its overlays mounted again on their checked lower layers),
starts a fresh ``virtiofsd`` for it, starts QEMU with
``-incoming fd:N`` fed from the artifact's member, waits for the load to complete,
``cont``, and hands back a :class:`KataSandbox` for the new VM (``pid``, ``qmp_socket``,
``stop()``). A restore that fails stops what it started and removes what it made.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import attrs
import blake3

from cedana import progress, registry
from cedana.artifact.manifest import HostInfo, Manifest, ProcessEntry, thaw
from cedana.artifact.signing import KeySource, Trust
from cedana.artifact.signing import signing_key as load_signing_key
from cedana.artifact.writer import ArtifactWriter, MemberStream, check_destination
from cedana.checkpoint import Checkpoint
from cedana.errors import (
    ArtifactCorrupt,
    ArtifactError,
    CedanaError,
    ContainerError,
    ContainerExists,
    ContainerNotFound,
    DumpFailed,
    InvalidOption,
    NotCheckpointable,
    RestoreFailed,
    RuntimeUnavailable,
    UnsafeArtifact,
)
from cedana.process import CheckpointOptions
from cedana.progress import ProgressArg, reporting
from cedana.rootfs.mounts import bind_mount, umount
from cedana.rootfs.overlay import (
    OverlayLayers,
    apply_upper,
    capture_upper,
    layers_json,
    same_layer,
)
from cedana.runtimes._qemu_spec import UnsupportedVm, VmSpec, parse_command_line, split_options
from cedana.runtimes._qmp import QmpConnection
from cedana.staging import scratch_dir

__all__ = ["DEFAULT_RUNTIME_DIR", "KataSandbox", "find_virtiofsd_binary", "kvm_usable"]

logger = logging.getLogger("cedana.kata")

#: This runtime's name in the registry (the manifest's ``runtime``).
KATA = "kata"
#: Where kata keeps a sandbox's hypervisor sockets (``/run/vc/vm/<id>/qmp.sock``).
DEFAULT_RUNTIME_DIR = Path("/run/vc/vm")
#: The VM's saved state (QEMU's migration stream) in the artifact.
STATE_MEMBER = "vm/state"
_SHARE_MEMBER = "vm/share-{}.tar"
_OVERLAY_MEMBER = "vm/share-{}-overlay-{}.tar"
_MIGRATION_FD = "cedana-migration"
_F_SETPIPE_SZ = 1031
_MIGRATING = ("setup", "active", "device", "pre-switchover", "wait-unplug")
_CHUNK = 1 << 20
_REPORT_STEP = 8 << 20
#: Seconds a VM's save or load may take.
_MIGRATION_TIMEOUT = 600.0
_SUPPORTED = "QEMU (kata's configuration-qemu.toml)"
#: Other hypervisors kata runs, by their program names and the sockets they leave in the
#: sandbox's runtime dir.
_OTHER_HYPERVISORS = {
    "cloud-hypervisor": ("clh-api.sock", "clh.sock"),
    "firecracker": ("firecracker.socket", "fc.sock"),
}
_VIRTIOFSD_PATHS = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
_CACHE_MODES = ("auto", "always", "never", "metadata")
_SANDBOX_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


# --------------------------------------------------------------------------- the host


def kvm_usable() -> bool:
    """Whether QEMU can use KVM here: ``/dev/kvm`` opens and the CPU shows hardware
    virtualisation (``vmx``/``svm``). A nested hypervisor without them (PVM) has a
    ``/dev/kvm`` whose guests do not run, so TCG is used there."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M))


def find_virtiofsd_binary() -> str | None:
    """The virtiofsd a restore starts: ``virtiofsd`` on PATH, else where Debian puts it."""
    found = shutil.which("virtiofsd")
    if found:
        return found
    return next((p for p in _VIRTIOFSD_PATHS if os.access(p, os.X_OK)), None)


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return [os.fsdecode(a) for a in raw.rstrip(b"\0").split(b"\0")]


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = _cmdline(int(entry))
            if argv:
                yield int(entry), argv


def _option_values(argv: list[str], *names: str) -> Iterator[str]:
    """The values of ``--opt VALUE`` / ``--opt=VALUE`` / ``-opt VALUE`` in ``argv``."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                yield argv[i + 1]
            elif arg.startswith(name + "="):
                yield arg[len(name) + 1 :]


def _guest_name(argv: list[str]) -> str | None:
    for value in _option_values(argv, "-name", "--name"):
        implied, props = split_options(value)
        return props.get("guest", implied)
    return None


def _is_qemu(argv: list[str]) -> bool:
    name = Path(argv[0]).name
    return name.startswith("qemu-system-") or name == "qemu-kvm"


def _other_hypervisor(sandbox_id: str, runtime_dir: Path) -> str | None:
    """The other hypervisor running ``sandbox_id``, if one visibly does."""
    for hypervisor, sockets in _OTHER_HYPERVISORS.items():
        if any((runtime_dir / sandbox_id / s).exists() for s in sockets):
            return hypervisor
        if (runtime_dir.parent / hypervisor / sandbox_id).exists():  # /run/vc/firecracker/<id>
            return hypervisor
    for _pid, argv in _processes():
        name = Path(argv[0]).name
        if name in _OTHER_HYPERVISORS and any(sandbox_id in a for a in argv[1:]):
            return name
    return None


@attrs.frozen
class _Overlay:
    """An overlay mounted inside a share (a container's rootfs, as kata mounts it)."""

    path: str  # relative to the share
    mountpoint: Path
    layers: OverlayLayers


@attrs.frozen
class _Share:
    """One virtiofs share of the VM: its tag, the host directory virtiofsd serves, and the
    overlays mounted in it."""

    tag: str
    directory: Path
    cache: str
    overlays: tuple[_Overlay, ...] = ()

    def record(self, n: int) -> dict[str, Any]:
        """What the manifest says of it (the overlays' lower layers with their identity)."""
        return {
            "tag": self.tag,
            "member": _SHARE_MEMBER.format(n),
            "cache": self.cache,
            "overlays": [
                {"path": o.path, "member": _OVERLAY_MEMBER.format(n, k), **layers_json(o.layers)}
                for k, o in enumerate(self.overlays)
            ],
        }

    def capture(self, writer: ArtifactWriter, n: int) -> None:
        """Its own contents (seen through a non-recursive bind mount, so the mounts in it
        are empty directories), then each overlay's upper directory, as members."""
        with scratch_dir(".cedana-kata-view-") as view:
            bind_mount(self.directory, view)
            try:
                member = writer.open_member(_SHARE_MEMBER.format(n))
                capture_upper(view, _TarOut(member))  # type: ignore[arg-type]
                member.close()
            finally:
                umount(view, detach=True)
        for k, overlay in enumerate(self.overlays):
            member = writer.open_member(_OVERLAY_MEMBER.format(n, k))
            upper = Path(str(overlay.layers.upper))
            capture_upper(upper, _TarOut(member), merged=overlay.mountpoint)  # type: ignore[arg-type]
            member.close()


def _virtiofsd_for(socket_path: str) -> tuple[Path, str] | None:
    """The shared directory and cache mode of the virtiofsd serving ``socket_path``."""
    for _pid, argv in _processes():
        # Run as itself or through a loader (``ld.so --library-path DIR virtiofsd``).
        if not any(Path(a).name == "virtiofsd" for a in argv[:5]):
            continue
        sockets = list(_option_values(argv, "--socket-path"))
        for value in _option_values(argv, "-o"):
            for item in value.split(","):
                if item.startswith("vhost_user_socket="):
                    sockets.append(item.removeprefix("vhost_user_socket="))
        if socket_path not in sockets:
            continue
        shared = next(_option_values(argv, "--shared-dir"), None)
        cache = next(_option_values(argv, "--cache"), "auto")
        for value in _option_values(argv, "-o"):
            for item in value.split(","):
                if item.startswith("source="):
                    shared = item.removeprefix("source=")
                if item.startswith("cache="):
                    cache = {"none": "never"}.get(item.removeprefix("cache="), cache)
        if shared is not None:
            return Path(shared), cache if cache in _CACHE_MODES else "auto"
    return None


def _mounts_under(directory: Path) -> list[str]:
    """Mount points strictly below ``directory`` (from this process's mountinfo)."""
    top = os.path.realpath(directory)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point != top and point.startswith(top.rstrip("/") + "/"):
                found.append(point)
    return found


def _overlays_in(directory: Path) -> tuple[_Overlay, ...]:
    """The overlay mounts in a shared directory (each with an upper directory, none inside
    another mount of it).

    Raises:
        NotCheckpointable: Another kind of mount, a read-only overlay, or nested mounts.
    """
    top = os.path.realpath(directory)
    points = sorted(_mounts_under(directory))
    found = []
    for point in points:
        if any(point.startswith(other + "/") for other in points if other != point):
            raise NotCheckpointable(
                f"the VM's shared directory {directory} holds a mount inside a mount ({point}); "
                "cedana saves one level of overlay mounts in a share"
            )
        layers = OverlayLayers.of(Path(point))
        if layers is None or layers.upper is None or layers.work is None:
            raise NotCheckpointable(
                f"{point}, in the VM's shared directory, is a mount cedana cannot save: only "
                "writable overlay mounts (a container's rootfs) are captured in a share"
            )
        found.append(
            _Overlay(path=os.path.relpath(point, top), mountpoint=Path(point), layers=layers)
        )
    return tuple(found)


def _file_digest(path: str) -> str:
    hasher = blake3.blake3()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _checked_image(path: str | None, digest: str | None, what: str) -> str | None:
    """A recorded kernel or initrd path, if it is safe to hand QEMU: an absolute path to a
    regular file that root owns and only root may write, whose digest is the recorded one.

    Raises:
        UnsafeArtifact: It is not (the message says which check failed).
    """
    if path is None:
        return None
    if not os.path.isabs(path) or ".." in Path(path).parts:
        raise UnsafeArtifact(f"the checkpoint's {what} {path!r} is not a plain absolute path")
    # Where its links lead is what QEMU opens (/etc/mtab leads into /proc), and QEMU gets
    # that path, so a link changed after these checks changes nothing.
    real = os.path.realpath(path)
    if Path(real).parts[1:2] in (("proc",), ("sys",), ("dev",)):
        raise UnsafeArtifact(f"the checkpoint's {what} {path!r} is not a file cedana hands QEMU")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise ContainerError(
            f"the VM's {what} {path} is not on this host; install the same guest {what} there "
            "to restore it"
        ) from None
    import stat as stat_mod

    if not stat_mod.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise UnsafeArtifact(
            f"the VM's {what} {path} is not a regular file that only root may write; "
            "cedana does not hand it to QEMU"
        )
    if digest is None or _file_digest(real) != digest:
        raise ContainerError(
            f"{path} is not the {what} the VM was checkpointed with (its digest differs); "
            "restore on a host with the same guest image"
        )
    return real


class _TarOut:
    """A file object over a member stream, for :mod:`tarfile` (it asks where it is)."""

    def __init__(self, stream: MemberStream) -> None:
        self._stream = stream
        self._at = 0

    def write(self, data: bytes) -> int:
        self._stream.write(data)
        self._at += len(data)
        return len(data)

    def tell(self) -> int:
        return self._at


def _runtime_dir(value: str | os.PathLike[str] | None) -> Path:
    return DEFAULT_RUNTIME_DIR if value is None else Path(value)


def _sandbox_keyword(ident: str) -> Mapping[str, Any]:
    if not _SANDBOX_ID.fullmatch(ident):
        raise ValueError(ident)
    return {"sandbox_id": ident}


# --------------------------------------------------------------------------- the sandbox


@attrs.define(eq=False)
class KataSandbox:
    """A kata sandbox's QEMU VM: checkpoint it, or (from :meth:`restore`) the VM restored.

    Args:
        sandbox_id: The kata sandbox id (its QEMU runs with ``-name sandbox-<id>``).
        qmp: The VM's QMP socket, instead of finding it by id.
        runtime_dir: Where kata keeps sandboxes' sockets (``/run/vc/vm``).

    Experimental: see the kata page of the docs for what is and is not covered.

    Raises (on first use, not here):
        ContainerNotFound: No such sandbox.
        NotCheckpointable: It runs under another hypervisor, or its VM cannot be saved.
    """

    sandbox_id: str | None = None
    qmp: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    runtime_dir: Path = attrs.field(default=DEFAULT_RUNTIME_DIR, converter=_runtime_dir)
    _qemu: subprocess.Popen[bytes] | None = attrs.field(default=None, alias="qemu", repr=False)
    _helpers: tuple[subprocess.Popen[bytes], ...] = attrs.field(
        default=(), alias="helpers", repr=False
    )
    _owned_dirs: tuple[Path, ...] = attrs.field(default=(), alias="owned_dirs", repr=False)
    _mounts: tuple[Path, ...] = attrs.field(default=(), alias="mounts", repr=False)
    _pid: int | None = attrs.field(default=None, alias="pid", repr=False)

    def __attrs_post_init__(self) -> None:
        if self.sandbox_id is None and self.qmp is None:
            raise InvalidOption("KataSandbox needs a sandbox_id or a qmp= socket path")

    # ----------------------------------------------------------------- finding it

    def _locate(self) -> tuple[int, list[str]]:
        """The sandbox's QEMU: its pid and command line.

        Raises:
            ContainerNotFound: No QEMU runs it.
            NotCheckpointable: Another hypervisor does.
        """
        want_qmp = os.path.realpath(self.qmp) if self.qmp is not None else None
        name = f"sandbox-{self.sandbox_id}" if self.sandbox_id else None
        for pid, argv in _processes():
            if not argv or pid == os.getpid():
                continue
            if want_qmp is not None:
                qmps = [v for v in _option_values(argv, "-qmp", "--qmp")]
                paths = [split_options(v.removeprefix("unix:")) for v in qmps]
                if not any(
                    os.path.realpath(props.get("path", first or "")) == want_qmp
                    for first, props in paths
                ):
                    continue
            elif _guest_name(argv) != name:
                continue
            if not _is_qemu(argv):
                other = Path(argv[0]).name
                raise NotCheckpointable(
                    f"sandbox {self._what()} runs under {other}, not QEMU; cedana checkpoints "
                    f"kata sandboxes whose hypervisor is {_SUPPORTED} only"
                )
            return pid, argv
        if self.sandbox_id is not None:
            hypervisor = _other_hypervisor(self.sandbox_id, self.runtime_dir)
            if hypervisor is not None:
                raise NotCheckpointable(
                    f"kata sandbox {self.sandbox_id} runs under {hypervisor}; cedana checkpoints "
                    f"kata sandboxes whose hypervisor is {_SUPPORTED} only (cloud-hypervisor "
                    "and firecracker are not supported)"
                )
        where = (
            f"serving QMP on {self.qmp}"
            if self.qmp is not None
            else f"with -name {name}, and {self.runtime_dir / str(self.sandbox_id)} has no "
            "QMP socket"
        )
        raise ContainerNotFound(
            f"no kata sandbox {self._what()}: no QEMU runs {where}; check the id with "
            "`kata-runtime list` or pass qmp= the VM's QMP socket"
        )

    def _what(self) -> str:
        return self.sandbox_id if self.sandbox_id is not None else str(self.qmp)

    def _qmp_of(self, argv: list[str]) -> Path:
        """The QMP socket: ``qmp=``, else the command line's ``-qmp unix:``, else kata's."""
        if self.qmp is not None:
            return self.qmp
        for value in _option_values(argv, "-qmp", "--qmp"):
            if value.startswith("unix:"):
                first, props = split_options(value.removeprefix("unix:"))
                path = props.get("path", first)
                if path:
                    return Path(path)
        return self.runtime_dir / str(self.sandbox_id) / "qmp.sock"

    @property
    def pid(self) -> int:
        """The QEMU process's pid.

        Raises:
            ContainerNotFound: The VM is not running.
        """
        if self._pid is not None:
            return self._pid
        return self._locate()[0]

    @property
    def qmp_socket(self) -> Path:
        """The VM's QMP socket."""
        if self.qmp is not None:
            return self.qmp
        return self._qmp_of(self._locate()[1])

    @property
    def running(self) -> bool:
        """True while the VM's QEMU process runs."""
        if self._qemu is not None:
            return self._qemu.poll() is None
        try:
            self._locate()
        except CedanaError:
            return False
        return True

    def connect(self, *, timeout: float = 60.0) -> QmpConnection:
        """A QMP session with the VM (close it after use)."""
        return QmpConnection.open(self.qmp_socket, timeout=timeout)

    # ----------------------------------------------------------------- checkpoint

    def checkpoint(
        self,
        path: str | os.PathLike[str],
        *,
        leave_running: bool = False,
        tcp_established: bool = False,
        file_locks: bool = False,
        shell_job: bool | None = None,
        rootfs_only: bool | None = None,
        shift_owners: bool | None = None,
        compress: Literal["zstd", "none"] | None = None,
        level: int | None = None,
        threads: int | None = None,
        directory: bool | None = None,
        overwrite: bool | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        signing_key: str | os.PathLike[str] | None = None,
        criu: Mapping[str, Any] | None = None,
        progress: ProgressArg = None,
        options: CheckpointOptions | None = None,
    ) -> Checkpoint:
        """Save the whole VM (and its shared directories) to ``path``.

        Args:
            leave_running: Continue the VM once its state is saved; otherwise it is quit
                once the artifact is complete, fsynced and verified.
            tcp_established, file_locks, shell_job, criu: CRIU's options, which a VM
                snapshot does not take (the guest's connections and locks are in its
                memory): setting one is refused.
            rootfs_only, shift_owners: A runc container's rootfs-only checkpoint; a VM is
                saved whole, so setting one is refused.
            compress, level, threads, directory, overwrite, signing_key, options: As for
                :class:`~cedana.CheckpointOptions`.
            work_dir: Unused: nothing is staged, the VM state streams into the artifact.
            progress: Called with a :class:`cedana.progress.Progress` as the state streams
                (phase ``dump``, ``total`` the guest's RAM: an estimate), or True for a bar.

        Raises:
            ContainerNotFound: No such sandbox.
            NotCheckpointable: Another hypervisor, a migration blocker (a mounted 9p
                share), a command line a restore could not rebuild, or a shared directory
                that holds mounts; the VM was not touched.
            DumpFailed: QEMU's migration failed; the VM runs on.
            InvalidOption, ArtifactExists, NoSpace: As for a process checkpoint.
        """
        opts = CheckpointOptions.merged(
            options,
            leave_running=leave_running,
            tcp_established=tcp_established,
            file_locks=file_locks,
            shell_job=shell_job,
            rootfs_only=rootfs_only,
            shift_owners=shift_owners,
            compress=compress,
            level=level,
            threads=threads,
            directory=directory,
            overwrite=overwrite,
            work_dir=work_dir,
            signing_key=signing_key,
            criu=criu,
            progress=progress,
        )
        if opts.tcp_established or opts.file_locks or opts.shell_job is not None or opts.criu:
            raise InvalidOption(
                "tcp_established, file_locks, shell_job and criu are CRIU's options; a VM is "
                "saved whole through QEMU (its connections and locks are in the guest's "
                "memory): drop them"
            )
        if opts.rootfs_only:
            raise InvalidOption(
                "rootfs_only saves a runc container's root filesystem; a kata sandbox is saved "
                "as a whole VM (its shares with it): drop rootfs_only (--rootfs-only)"
            )
        dest = Path(path)
        opts.check_path(dest)
        check_destination(dest, overwrite=opts.overwrite)
        signer = load_signing_key(opts.signing_key)  # before the VM is touched
        started = time.monotonic()
        logger.debug("checkpoint of kata sandbox %s -> %s: start", self._what(), dest)
        pid, argv = self._locate()
        logger.debug("found QEMU pid %d in %.3f s", pid, time.monotonic() - started)
        with reporting(opts.progress), QmpConnection.open(self._qmp_of(argv)) as qmp:
            # QEMU's own word first: a 9p share is refused as what blocks migration.
            status = qmp.execute("query-status")
            migration = qmp.execute("query-migrate")
            blocked = list(migration.get("blocked-reasons") or [])
            if blocked:
                raise NotCheckpointable(
                    f"QEMU cannot save kata sandbox {self._what()}: {'; '.join(blocked)}. "
                    "A 9p share blocks it while mounted: share the rootfs through virtiofs "
                    "(kata's shared_fs = virtio-fs)"
                )
            if migration.get("status") in _MIGRATING:
                raise NotCheckpointable(
                    f"a migration of kata sandbox {self._what()} is already running"
                )
            spec = parse_command_line(argv)
            shares = self._shares(spec)
            images = {
                "kernel": (spec.kernel, _file_digest(spec.kernel) if spec.kernel else None),
                "initrd": (spec.initrd, _file_digest(spec.initrd) if spec.initrd else None),
            }
            machine_type = str(
                qmp.execute("qom-get", {"path": "/machine", "property": "type"})
            ).removesuffix("-machine")
            version = qmp.execute("query-version")
            accel = "kvm" if qmp.execute("query-kvm").get("enabled") else "tcg"
            was_running = bool(status.get("running"))
            manifest = Manifest(
                host=HostInfo.current(criu_version=""),
                kind="vm",
                runtime=KATA,
                options={**opts.to_manifest(), "criu": {}},
                tree=(ProcessEntry(pid=pid, ppid=_ppid(pid), command=" ".join(argv)[:4096]),),
                workload={
                    "sandbox": {"id": self.sandbox_id, "name": spec.name},
                    "qemu": {
                        "argv": argv,
                        "version": (version.get("qemu") or {}),
                        "package": version.get("package", ""),
                        "machine_type": machine_type,
                        "accel": accel,
                        "devices": spec.device_models(),
                        "was_running": was_running,
                    },
                    "images": {k: {"path": p, "blake3": d} for k, (p, d) in images.items() if p},
                    "shares": [share.record(n) for n, share in enumerate(shares)],
                },
            )
            with ArtifactWriter(
                dest,
                compress=opts.compress,
                level=opts.level,
                threads=opts.threads,
                directory=opts.directory,
                overwrite=opts.overwrite,
                signer=signer,
                draft=manifest,
            ) as writer:
                resumed = False
                try:
                    qmp.execute("stop")
                    for n, share in enumerate(shares):
                        share.capture(writer, n)
                    self._migrate(qmp, writer, _MIGRATION_TIMEOUT)
                    if opts.leave_running and was_running:
                        qmp.execute("cont")
                        resumed = True
                    # Before the VM is quit, the artifact is read back; one left running
                    # can be saved again, and restore verifies every byte first.
                    writer.finish(manifest, verify=not opts.leave_running)
                except BaseException:
                    _cancel_migration(qmp)
                    if was_running and not resumed:
                        with contextlib.suppress(CedanaError):
                            qmp.execute("cont")
                    raise
            if not opts.leave_running:
                with contextlib.suppress(CedanaError):  # QEMU may close the socket first
                    qmp.execute("quit")
        if not opts.leave_running:
            _wait_gone(pid, 30)
        logger.debug(
            "checkpoint of kata sandbox %s: %.3f s", self._what(), time.monotonic() - started
        )
        return Checkpoint.open(dest, verify=False, trust="any")

    def _shares(self, spec: VmSpec) -> list[_Share]:
        shares = []
        for tag, chardev in spec.virtiofs():
            found = _virtiofsd_for(chardev.path)
            if found is None:
                raise NotCheckpointable(
                    f"no virtiofsd serves the VM's share {tag!r} (socket {chardev.path}); "
                    "cedana saves a shared directory's contents from the virtiofsd that serves it"
                )
            directory, cache = found
            overlays = _overlays_in(directory)
            shares.append(_Share(tag=tag, directory=directory, cache=cache, overlays=overlays))
        return shares

    def _migrate(self, qmp: QmpConnection, writer: ArtifactWriter, timeout: float) -> None:
        """``migrate`` to a pipe whose bytes become member ``vm/state``; wait until QEMU
        says it completed."""
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # fewer, larger reads; the default 64 KiB works
            fcntl.fcntl(read_fd, _F_SETPIPE_SZ, _CHUNK)
        try:
            try:
                qmp.pass_fd(write_fd, _MIGRATION_FD)
            finally:
                os.close(write_fd)
            watched = progress.current() is not None
            ram = _guest_memory(qmp) if watched else None
            member = writer.open_member(STATE_MEMBER)
            qmp.execute("migrate", {"uri": f"fd:{_MIGRATION_FD}"})
            began = time.monotonic()
            reported = 0
            while chunk := os.read(read_fd, _CHUNK):
                member.write(chunk)
                if watched and member.size - reported >= _REPORT_STEP:
                    reported = member.size
                    progress.report("dump", member.size, ram)
            member.close()
            if watched:
                progress.report("dump", member.size, ram)
        finally:
            os.close(read_fd)
        deadline = time.monotonic() + timeout
        while True:
            info = qmp.execute("query-migrate")
            state = info.get("status")
            if state == "completed":
                break
            if state in ("failed", "cancelled") or time.monotonic() > deadline:
                with contextlib.suppress(CedanaError):
                    qmp.execute("migrate_cancel")
                raise DumpFailed(
                    f"QEMU could not save kata sandbox {self._what()}: migration {state}"
                    f" ({info.get('error-desc', 'no reason given')}); the VM runs on"
                )
            time.sleep(0.02)
        logger.debug("vm state %d bytes in %.3f s", member.size, time.monotonic() - began)

    # ----------------------------------------------------------------- restore

    @classmethod
    def restore(
        cls,
        checkpoint: Checkpoint | str | os.PathLike[str],
        *,
        name: str | None = None,
        root: str | os.PathLike[str] | None = None,
        shared_dir: str | os.PathLike[str] | None = None,
        trust: Trust = "trusted",
        trusted_keys: Iterable[KeySource] | None = None,
        timeout: float = 600.0,
    ) -> KataSandbox:
        """Start a VM from a kata checkpoint; it runs where it was saved.

        Args:
            name: The new sandbox's id (its QEMU's ``-name sandbox-<name>``); the
                checkpointed one's by default.
            root: The runtime dir the new sandbox's sockets go in (``<root>/<name>/``:
                ``qmp.sock``, the console, virtiofsd's sockets); ``/run/vc/vm`` by default.
            shared_dir: Where the first share's contents are put back (a new or empty
                directory); ``<root>/<name>/share-0`` by default, as are the others'.
            timeout: Seconds loading the state may take.

        Raises:
            UntrustedArtifact: As for :func:`cedana.restore`.
            ArtifactCorrupt: The artifact is damaged (refused before QEMU starts).
            UnsafeArtifact: A recorded kernel or initrd is not a file cedana hands QEMU.
            UnsupportedVm: The recorded command line is outside the allow-list.
            ContainerError: A recorded device, machine type, binary or image is not on
                this host.
            ContainerExists: ``<root>/<name>`` is in use.
            RestoreFailed: QEMU could not load the state; nothing is left running.
        """
        ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
        manifest = ckpt.manifest
        if manifest.kind != "vm" or manifest.runtime != KATA:
            raise ContainerError(f"{ckpt.path} is not a kata VM checkpoint")
        ckpt.verify()  # every member, before anything starts: a damaged state never loads
        workload = thaw(manifest.workload)
        qemu_facts = workload.get("qemu") or {}
        spec = parse_command_line([str(a) for a in qemu_facts.get("argv") or []])
        _checked_shares(workload, spec)
        plan = _plan_restore(spec, workload)
        new_id = name or (workload.get("sandbox") or {}).get("id") or spec.sandbox_id
        if not isinstance(new_id, str) or not _SANDBOX_ID.fullmatch(new_id):
            raise InvalidOption(
                f"{new_id!r} is not a sandbox id (letters, digits, '.', '_', '-'): pass name="
            )
        runtime_dir = Path(root) if root is not None else DEFAULT_RUNTIME_DIR
        run_dir = runtime_dir / new_id
        with contextlib.ExitStack() as undo:
            runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            try:
                run_dir.mkdir(mode=0o700)
            except FileExistsError:
                raise ContainerExists(
                    f"{run_dir} exists: sandbox {new_id} is in use (or was left behind); "
                    "pass another name="
                ) from None
            undo.callback(shutil.rmtree, run_dir, ignore_errors=True)
            helpers, mounts = _restore_shares(
                ckpt,
                workload=workload,
                spec=spec,
                plan=plan,
                run_dir=run_dir,
                shared_dir=shared_dir,
                undo=undo,
            )
            pipe = undo.enter_context(_Pipe())
            argv = spec.command_line(
                binary=plan.binary,
                name=f"sandbox-{new_id}",
                machine_type=plan.machine_type,
                accel=plan.accel,
                run_dir=run_dir,
                kernel=plan.kernel,
                initrd=plan.initrd,
                incoming_fd=pipe.read_fd,
            )
            started = time.monotonic()
            qemu = _start_qemu(argv, run_dir, pipe.read_fd)
            undo.callback(_end, qemu)
            pipe.close_read()  # QEMU has its copy
            _feed_and_load(ckpt, qemu, pipe, run_dir, timeout)
            with QmpConnection.open(run_dir / "qmp.sock", wait=10) as qmp:
                if qemu_facts.get("was_running", True):
                    qmp.execute("cont")
            logger.debug("kata sandbox %s restored in %.3f s", new_id, time.monotonic() - started)
            undo.pop_all()
        return cls(
            sandbox_id=new_id,
            qmp=run_dir / "qmp.sock",
            runtime_dir=runtime_dir,
            qemu=qemu,
            helpers=tuple(helpers),
            owned_dirs=(run_dir,),
            mounts=tuple(mounts),
            pid=qemu.pid,
        )

    # ----------------------------------------------------------------- ending it

    def stop(self, *, timeout: float = 20.0) -> None:
        """End the VM: QMP ``quit`` (killed if it does not go), its virtiofsds, the overlays
        and directories a restore made for it (idempotent)."""
        pid = self._pid
        if pid is None:
            with contextlib.suppress(CedanaError):
                pid = self._locate()[0]
        if pid is not None and _alive(pid):
            with (
                contextlib.suppress(CedanaError, OSError),
                QmpConnection.open(self.qmp_socket, timeout=5) as qmp,
            ):
                qmp.execute("quit")
            if self._qemu is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._qemu.wait(timeout)
            _wait_gone(pid, timeout, kill=True)
        if self._qemu is not None:
            _end(self._qemu)
        for helper in self._helpers:
            _end(helper)
        for point in reversed(self._mounts):
            with contextlib.suppress(OSError):
                umount(point, detach=True)
        self._mounts = ()
        for directory in self._owned_dirs:
            # A share's overlays first (deepest first): never remove through a mount.
            for inner in sorted(_mounts_under(directory), reverse=True):
                with contextlib.suppress(OSError):
                    umount(inner, detach=True)
            shutil.rmtree(directory, ignore_errors=True)
        self._owned_dirs = ()
        self._helpers = ()

    def close(self) -> None:
        """Let go of the VM: it runs on (:meth:`stop` ends it)."""
        self._qemu = None
        self._helpers = ()

    def __enter__(self) -> KataSandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@attrs.frozen(kw_only=True)
class _RestorePlan:
    binary: str
    machine_type: str
    accel: str
    kernel: str | None
    initrd: str | None
    virtiofsd: str | None


def _qemu_help(binary: str, *args: str) -> str:
    try:
        out = subprocess.run(
            [binary, *args], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ContainerError(f"{binary} {' '.join(args)} failed: {exc}") from exc
    return out.stdout


def _plan_restore(spec: VmSpec, workload: Mapping[str, Any]) -> _RestorePlan:
    """Check that this host has what the recorded VM needs; nothing is started.

    Raises:
        ContainerError: A binary, the machine type, a device model, an image or KVM is
            missing here (the message names it).
        UnsafeArtifact: A recorded image path is not one cedana hands QEMU.
    """
    qemu = workload.get("qemu") or {}
    binary = shutil.which(spec.binary)
    if binary is None:
        raise ContainerError(f"the VM ran on {spec.binary}, which is not installed here")
    machine_type = str(qemu.get("machine_type") or spec.machine)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", machine_type):
        raise UnsupportedVm(f"machine type {machine_type!r} is not a plain word")
    machines = {
        line.split()[0]
        for line in _qemu_help(binary, "-machine", "help").splitlines()[1:]
        if line.strip()
    }
    if machine_type not in machines:
        raise ContainerError(
            f"this host's {spec.binary} has no machine type {machine_type} (the VM's); "
            "restore with the QEMU version it was saved with"
        )
    devices = set(re.findall(r'^name "([^"]+)"', _qemu_help(binary, "-device", "help"), re.M))
    missing = sorted(set(spec.device_models()) - devices)
    if missing:
        raise ContainerError(
            f"this host's {spec.binary} has no device {missing[0]} (the VM has one); "
            "the restored VM's devices must match the saved one's"
        )
    accel = str(qemu.get("accel") or spec.accel)
    if accel not in ("kvm", "tcg"):
        raise UnsupportedVm(f"accelerator {accel!r} is not supported")
    if accel == "kvm" and not kvm_usable():
        raise ContainerError(
            "the VM was saved running under KVM, which this host cannot use; restore it on "
            "a host with KVM"
        )
    _checked_memory_dirs(spec)
    images = workload.get("images") or {}
    kernel = _checked_image(spec.kernel, (images.get("kernel") or {}).get("blake3"), "kernel")
    initrd = _checked_image(spec.initrd, (images.get("initrd") or {}).get("blake3"), "initrd")
    virtiofsd = None
    if spec.virtiofs():
        virtiofsd = find_virtiofsd_binary()
        if virtiofsd is None:
            raise ContainerError(
                "the VM shares a directory through virtiofs, and no virtiofsd is installed "
                "here (one that can migrate: virtiofsd >= 1.11 with --migration-mode)"
            )
    return _RestorePlan(
        binary=binary,
        machine_type=machine_type,
        accel=accel,
        kernel=kernel,
        initrd=initrd,
        virtiofsd=virtiofsd,
    )


def _checked_shares(workload: Mapping[str, Any], spec: VmSpec) -> None:
    """The manifest's ``shares`` are records of the shape :meth:`_Share.record` writes,
    one per virtiofs device: checked before anything is made for them.

    Raises:
        UnsafeArtifact: They are not (the message names the field).
    """
    shares = workload.get("shares") or []

    def bad(what: str) -> UnsafeArtifact:
        return UnsafeArtifact(
            f"the checkpoint's shares {what}; cedana writes none such: do not use this checkpoint"
        )

    if not isinstance(shares, list):
        raise bad("are not a list")
    for n, share in enumerate(shares):
        if not isinstance(share, Mapping) or not isinstance(share.get("member"), str):
            raise bad(f"[{n}] is not a record with a member")
        overlays = share.get("overlays") or []
        if not isinstance(overlays, list) or not all(isinstance(o, Mapping) for o in overlays):
            raise bad(f"[{n}].overlays are not a list of records")
    if len(shares) != len(spec.virtiofs()):
        raise bad(f"are {len(shares)} for {len(spec.virtiofs())} virtiofs devices")


def _checked_memory_dirs(spec: VmSpec) -> None:
    """Each file-backed guest memory's ``mem-path`` (/dev/shm or /dev/hugepages, by the
    allow-list) must be a directory here: QEMU makes a file of a path that is missing
    (0644, the guest's memory in it) and leaves it behind.

    Raises:
        UnsupportedVm: One is not a directory on this host.
    """
    for kind, props in spec.objects:
        path = dict(props).get("mem-path")
        if kind == "memory-backend-file" and path is not None and not os.path.isdir(path):
            raise UnsupportedVm(
                f"the VM's memory backend is in {path}, which is not a directory on this "
                "host; mount it (hugetlbfs on /dev/hugepages) or restore on a host that has it"
            )


def _empty_dir(target: Path) -> bool:
    """Make ``target`` (True), or accept it empty (False).

    Raises:
        ContainerExists: It exists and is not an empty directory.
    """
    try:
        target.mkdir(mode=0o755)
        return True
    except FileExistsError:
        if not target.is_dir() or target.is_symlink() or any(target.iterdir()):
            raise ContainerExists(
                f"{target} is not an empty directory; the shared directory is put back in a "
                "new or empty one"
            ) from None
        return False


def _empty_again(target: Path) -> None:
    """Remove what a failed restore put into the caller's (empty) directory ``target``
    (its overlays are unmounted first: they were mounted later)."""
    for entry in os.scandir(target):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _checked_lower(recorded: Any, identities: Any) -> tuple[str, ...]:
    """A share's overlay's recorded lower layers, if each is still the same directory (its
    :func:`~cedana.rootfs.overlay.layer_identity`): a crafted manifest names no host
    directory it did not read.

    Raises:
        UnsafeArtifact: A layer is not a plain absolute path or not the same directory.
        ContainerError: A layer is gone.
    """
    layers = [str(p) for p in recorded or ()]
    ids = list(identities or ())
    if not layers or len(ids) != len(layers):
        raise UnsafeArtifact("a share's overlay records no lower layers with their identity")
    for layer, identity in zip(layers, ids, strict=True):
        plain = os.path.isabs(layer) and ".." not in Path(layer).parts
        if not plain or os.path.realpath(layer) != os.path.normpath(layer):
            raise UnsafeArtifact(f"a share's overlay layer {layer!r} is not a plain absolute path")
        if not os.path.isdir(layer):
            raise ContainerError(
                f"the image layer {layer} a share's overlay is mounted on is not on this host"
            )
        if not same_layer(layer, str(identity)):
            raise UnsafeArtifact(
                f"{layer} is not the image layer the share's overlay was checkpointed on"
            )
    return tuple(layers)


def _mount_overlay(
    ckpt: Checkpoint,
    overlay: Mapping[str, Any],
    share: Path,
    base: Path,
    undo: contextlib.ExitStack,
) -> Path:
    """Mount a share's overlay again: its recorded lower layers (checked), a new upper
    directory filled with the captured changes, at the same place in the share."""
    rel = str(overlay.get("path") or "")
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or any(p in ("..", ".") for p in parts):
        raise UnsafeArtifact(f"{ckpt.path}: a share's overlay path {rel!r} is not relative")
    point = share / rel
    if os.path.realpath(point) != os.path.join(os.path.realpath(share), *parts) or not (
        point.is_dir()
    ):
        raise UnsafeArtifact(f"{ckpt.path}: the overlay's mount point {rel!r} is not a directory")
    lower = _checked_lower(overlay.get("lower"), overlay.get("lower_identity"))
    member = str(overlay.get("member") or "")
    if not re.fullmatch(r"vm/share-\d+-overlay-\d+\.tar", member):
        raise UnsafeArtifact(f"{ckpt.path}: overlay member {member!r} is not one cedana writes")
    userxattr = bool(overlay.get("userxattr"))
    base.mkdir(mode=0o700)
    upper, work = base / "upper", base / "work"
    upper.mkdir(mode=0o755)
    work.mkdir(mode=0o700)
    _put_back(ckpt, member, upper, userxattr=userxattr)
    layers = OverlayLayers(lower=lower, upper=str(upper), work=str(work), userxattr=userxattr)
    layers.mount(point)
    undo.callback(umount, point, detach=True)
    logger.debug("overlay on %s: lower %s, upper %s", point, ":".join(lower), upper)
    return point


def _put_back(ckpt: Checkpoint, member: str, target: Path, *, userxattr: bool = False) -> None:
    """Write a share's captured contents into ``target`` (checked as a rootfs diff is)."""
    if not re.fullmatch(r"vm/share-\d+(-overlay-\d+)?\.tar", member):
        raise UnsafeArtifact(f"{ckpt.path}: share member {member!r} is not one cedana writes")
    with scratch_dir(".cedana-kata-") as tmp:
        diff = tmp / "share.tar"
        with open(diff, "wb") as out:
            ckpt.stream_member(member, out.write)
        try:
            apply_upper(diff, target, userxattr=userxattr)
        except tarfile.TarError as exc:
            raise ArtifactCorrupt(f"{ckpt.path}: {member} is not a readable tar ({exc})") from exc


def _guest_memory(qmp: QmpConnection) -> int | None:
    """The guest's RAM in bytes: what a progress bar takes as the state's size (an
    estimate: QEMU skips zero pages, and adds its devices' state)."""
    try:
        return int(qmp.execute("query-memory-size-summary")["base-memory"])
    except (CedanaError, KeyError, TypeError, ValueError):
        return None


def _cancel_migration(qmp: QmpConnection, timeout: float = 30.0) -> None:
    """Cancel a migration still going (the artifact failed, not QEMU) and wait until it
    has ended, so the VM can continue."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(CedanaError):
        if qmp.execute("query-migrate").get("status") in _MIGRATING:
            qmp.execute("migrate_cancel")
        while qmp.execute("query-migrate").get("status") in (*_MIGRATING, "cancelling"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)


class _Pipe:
    """The pipe QEMU's ``-incoming fd:`` reads; each end closed once, whoever closes it."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        self._lock = threading.Lock()

    def close_read(self) -> None:
        with self._lock:
            fd, self.read_fd = self.read_fd, -1
        if fd >= 0:
            os.close(fd)

    def close_write(self) -> None:
        with self._lock:
            fd, self.write_fd = self.write_fd, -1
        if fd >= 0:
            os.close(fd)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.write_fd, view) :]

    def __enter__(self) -> _Pipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_read()
        self.close_write()


def _restore_shares(
    ckpt: Checkpoint,
    *,
    workload: Mapping[str, Any],
    spec: VmSpec,
    plan: _RestorePlan,
    run_dir: Path,
    shared_dir: str | os.PathLike[str] | None,
    undo: contextlib.ExitStack,
) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    """Put each share's contents (and overlays) back and start a virtiofsd for it (undone
    by ``undo``); the virtiofsds and the overlays mounted."""
    helpers = []
    mounts: list[Path] = []
    shares = list(workload.get("shares") or [])
    sockets = spec.virtiofs_sockets(run_dir)
    if len(shares) != len(sockets):
        raise ArtifactCorrupt(
            f"{ckpt.path} records {len(shares)} shares for {len(sockets)} virtiofs devices"
        )
    for n, (share, (tag, sock)) in enumerate(zip(shares, sockets, strict=True)):
        target = Path(shared_dir) if (n == 0 and shared_dir is not None) else run_dir / f"share-{n}"
        if _empty_dir(target):
            undo.callback(shutil.rmtree, target, ignore_errors=True)
        else:  # the caller's: left empty, as it was given
            undo.callback(_empty_again, target)
        _put_back(ckpt, str(share["member"]), target)
        for k, overlay in enumerate(share.get("overlays") or []):
            mounts.append(_mount_overlay(ckpt, overlay, target, run_dir / f"overlay-{n}-{k}", undo))
        proc = _start_virtiofsd(
            plan.virtiofsd, sock, target, cache=str(share.get("cache")), run_dir=run_dir, n=n
        )
        undo.callback(_end, proc)
        helpers.append(proc)
        logger.debug("virtiofsd for %r on %s: pid %d", tag, sock, proc.pid)
    return helpers, mounts


def _start_qemu(argv: list[str], run_dir: Path, read_fd: int) -> subprocess.Popen[bytes]:
    log = open(run_dir / "qemu.log", "ab")  # noqa: SIM115 (QEMU keeps it)
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(read_fd,),
            start_new_session=True,
            cwd=run_dir,  # what QEMU opens by a relative name is never the caller's
        )
    except OSError as exc:
        raise ContainerError(f"starting {argv[0]} failed: {exc}") from exc
    finally:
        log.close()


def _start_virtiofsd(
    binary: str | None, sock: Path, shared: Path, *, cache: str, run_dir: Path, n: int
) -> subprocess.Popen[bytes]:
    """A virtiofsd serving ``shared`` on ``sock``; returns once the socket is there."""
    assert binary is not None
    cache = cache if cache in _CACHE_MODES else "auto"
    log = open(run_dir / f"virtiofsd-{n}.log", "ab")  # noqa: SIM115 (virtiofsd keeps it)
    try:
        proc = subprocess.Popen(
            [
                binary,
                f"--socket-path={sock}",
                f"--shared-dir={shared}",
                f"--cache={cache}",
                "--sandbox=chroot",
                "--migration-mode=find-paths",
                # An inode the guest still holds that has no path in the share (a file
                # replaced by a rename, deleted while open) fails that inode for the
                # guest, not the whole restore.
                "--migration-on-error=guest-error",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    except OSError as exc:
        raise ContainerError(f"starting {binary} failed: {exc}") from exc
    finally:
        log.close()
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _end(proc)
            tail = _tail(run_dir / f"virtiofsd-{n}.log")
            raise ContainerError(f"virtiofsd did not start for {shared}: {tail}")
        time.sleep(0.02)
    return proc


def _feed_and_load(
    ckpt: Checkpoint, qemu: subprocess.Popen[bytes], pipe: _Pipe, run_dir: Path, timeout: float
) -> None:
    """Stream the VM state into QEMU's ``-incoming`` pipe and wait until QEMU loaded it.

    Raises:
        ArtifactCorrupt: The member did not match its digest (QEMU is then stopped).
        RestoreFailed: QEMU refused the state or exited.
    """
    failure: list[BaseException] = []

    total = next((m.size for m in ckpt.manifest.members if m.name == STATE_MEMBER), None)
    fed = 0
    notify = progress.current()

    def write(data: bytes) -> None:
        nonlocal fed
        pipe.write(data)
        fed += len(data)
        if notify is not None and (fed == total or fed % _REPORT_STEP < len(data)):
            notify(progress.Progress("unpack", fed, total))

    def feed() -> None:
        try:
            ckpt.stream_member(STATE_MEMBER, write)
        except BrokenPipeError:
            pass  # QEMU stopped reading: its log says why
        except BaseException as exc:
            failure.append(exc)
        finally:
            pipe.close_write()  # end of stream: QEMU has it all

    feeder = threading.Thread(target=feed, name="cedana-kata-feed", daemon=True)
    feeder.start()
    deadline = time.monotonic() + timeout
    while feeder.is_alive():
        if qemu.poll() is not None:
            break
        if time.monotonic() > deadline:
            raise RestoreFailed(f"QEMU did not take the VM state within {timeout:g} s")
        feeder.join(0.05)
    feeder.join(5)
    if failure:
        exc = failure[0]
        if isinstance(exc, ArtifactError):
            raise exc
        raise RestoreFailed(f"feeding the VM state to QEMU failed: {exc}") from exc
    try:
        qmp = QmpConnection.open(run_dir / "qmp.sock", wait=10, timeout=30)
    except RuntimeUnavailable:
        raise RestoreFailed(
            f"QEMU exited while loading the VM state: {_tail(run_dir / 'qemu.log')}"
        ) from None
    with qmp:
        while True:
            if qemu.poll() is not None:
                raise RestoreFailed(
                    f"QEMU exited while loading the VM state: {_tail(run_dir / 'qemu.log')}"
                )
            try:
                state = qmp.execute("query-migrate").get("status")
                status = qmp.execute("query-status").get("status")
            except RuntimeUnavailable:
                continue
            if state == "completed" or status in ("paused", "running"):
                return
            if state == "failed" or time.monotonic() > deadline:
                raise RestoreFailed(
                    f"QEMU could not load the VM state ({state}): {_tail(run_dir / 'qemu.log')}"
                )
            time.sleep(0.02)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process cedana started (TERM, then KILL) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _wait_gone(pid: int, timeout: float, *, kill: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            if not kill:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            kill = False
        time.sleep(0.02)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def vm_summary(manifest: Manifest) -> dict[str, Any]:
    """A VM checkpoint's facts for ``cedana inspect`` (from its manifest)."""
    workload = thaw(manifest.workload)
    qemu = workload.get("qemu") or {}
    version = qemu.get("version") or {}
    state = next((m.size for m in manifest.members if m.name == STATE_MEMBER), 0)
    return {
        "sandbox": (workload.get("sandbox") or {}).get("id"),
        "qemu": ".".join(str(version.get(k, "?")) for k in ("major", "minor", "micro")),
        "machine_type": qemu.get("machine_type"),
        "accel": qemu.get("accel"),
        "devices": list(qemu.get("devices") or []),
        "shares": [s.get("tag") for s in workload.get("shares") or []],
        "state_bytes": state,
    }


def vm_lines(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """:func:`vm_summary` as ``(label, value)`` lines for people."""
    return [
        ("sandbox", str(summary["sandbox"])),
        ("qemu", f"{summary['qemu']}, machine {summary['machine_type']}, {summary['accel']}"),
        ("devices", ", ".join(summary["devices"]) or "none"),
        ("shares", ", ".join(str(t) for t in summary["shares"]) or "none"),
        ("state", f"{summary['state_bytes']} bytes"),
    ]


def _summary(sandbox: KataSandbox) -> Mapping[str, Any]:
    return {"name": sandbox.sandbox_id, "qmp": str(sandbox.qmp)}


registry.register(
    registry.Runtime(
        name=KATA,
        target="kata:ID",
        help="a kata containers sandbox VM on QEMU, by sandbox id (experimental: the whole "
        "VM is saved through QMP)",
        cls=KataSandbox,
        parse=_sandbox_keyword,
        restores_into=(KATA,),
        flags={"root": "runtime_dir"},
        summary=_summary,
        noun="sandbox",
    )
)
