"""The plumbing under :class:`cedana.runtimes.kata.KataSandbox`: finding a sandbox's QEMU
and virtiofsd on the host and capturing its shares; planning a restored VM, starting
QEMU and a fresh virtiofsd, feeding QEMU the saved state through a pipe, putting the
shares back, and ending what was started (on failure too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import blake3

from cedana import progress
from cedana.artifact.writer import ArtifactWriter, MemberStream
from cedana.checkpoint import Checkpoint
from cedana.errors import (
    ArtifactCorrupt,
    ArtifactError,
    CedanaError,
    ContainerError,
    ContainerExists,
    NotCheckpointable,
    RestoreFailed,
    RuntimeUnavailable,
    UnsafeArtifact,
)
from cedana.rootfs.mounts import bind_mount, umount
from cedana.rootfs.overlay import (
    OverlayLayers,
    apply_upper,
    capture_upper,
    layers_json,
    same_layer,
)
from cedana.runtimes._qemu_spec import UnsupportedVm, VmSpec, split_options
from cedana.runtimes._qmp import QmpConnection
from cedana.staging import scratch_dir

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


# --------------------------------------------------------------------------- restoring


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
