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

This module is the sandbox and its two verbs; :mod:`._kata_vm` holds the plumbing under
them (finding the processes, capturing and putting back shares, starting and feeding
QEMU and virtiofsd).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import attrs

from cedana import progress, registry
from cedana.artifact.manifest import HostInfo, Manifest, ProcessEntry, thaw
from cedana.artifact.signing import KeySource, Trust
from cedana.artifact.signing import signing_key as load_signing_key
from cedana.artifact.writer import ArtifactWriter, check_destination
from cedana.checkpoint import Checkpoint
from cedana.errors import (
    CedanaError,
    ContainerError,
    ContainerExists,
    ContainerNotFound,
    DumpFailed,
    InvalidOption,
    NotCheckpointable,
)
from cedana.process import CheckpointOptions
from cedana.progress import ProgressArg, reporting
from cedana.rootfs.mounts import umount
from cedana.runtimes._kata_vm import (
    _CHUNK,
    _F_SETPIPE_SZ,
    _MIGRATING,
    _MIGRATION_FD,
    _MIGRATION_TIMEOUT,
    _REPORT_STEP,
    _SANDBOX_ID,
    _SUPPORTED,
    DEFAULT_RUNTIME_DIR,
    KATA,
    STATE_MEMBER,
    _alive,
    _cancel_migration,
    _checked_shares,
    _end,
    _feed_and_load,
    _file_digest,
    _guest_memory,
    _guest_name,
    _is_qemu,
    _mounts_under,
    _option_values,
    _other_hypervisor,
    _overlays_in,
    _Pipe,
    _plan_restore,
    _ppid,
    _processes,
    _restore_shares,
    _runtime_dir,
    _sandbox_keyword,
    _Share,
    _start_qemu,
    _virtiofsd_for,
    _wait_gone,
    find_virtiofsd_binary,
    kvm_usable,
)
from cedana.runtimes._qemu_spec import VmSpec, parse_command_line, split_options
from cedana.runtimes._qmp import QmpConnection

__all__ = ["DEFAULT_RUNTIME_DIR", "KataSandbox", "find_virtiofsd_binary", "kvm_usable"]

logger = logging.getLogger("cedana.kata")

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
