"""The CRIU boundary: the one module that imports pycriu.

Everything else describes what it wants as a plain :class:`CriuRequest` (CRIU
option names mapped to values) and hands it to a :class:`CriuBackend`. The real
backend, :class:`SwrkCriu`, starts one ``criu swrk`` child per request, speaks
CRIU's RPC over a socketpair, answers notify callbacks, maps every failure to a
:class:`~cedana.errors.CriuError` carrying CRIU's errno and the tail of its log,
and always reaps the child and closes its socket. Unit tests hand a fake
backend to the layers above.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import io
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

from cedana import procfs
from cedana.errors import (
    CriuError,
    CriuNotFound,
    DumpFailed,
    InvalidOption,
    NotPermitted,
    ProcessNotFound,
    RestoreFailed,
)

__all__ = [
    "CPU_CAP",
    "MIN_VERSION",
    "CriuBackend",
    "CriuReport",
    "CriuRequest",
    "Notify",
    "SwrkCriu",
    "SwrkRunner",
    "default_backend",
    "explain",
    "load_image",
    "log_tail",
    "pagemap_image",
    "restore_failed",
]

logger = logging.getLogger("cedana.criu")

#: Oldest CRIU that dumps INET sockets on Linux >= 6.16 (SO_PASSCRED refusal).
MIN_VERSION = (4, 2)

#: ``cpu_cap`` for every dump and restore: CRIU's default checks (FPU and instruction
#: features, ``CPU_CAP_FPU | CPU_CAP_INS``). Set over RPC, it also makes a dump write
#: ``cpuinfo.img`` (CRIU adds ``CPU_CAP_IMAGE``), which a restore elsewhere checks first.
CPU_CAP = 0x1 | 0x4

#: Called for each CRIU notify event (``"post-dump"``, ``"setup-namespaces"``, ...)
#: with the event name and the pid CRIU names; raising aborts the operation.
Notify = Callable[[str, int], None]


class SwrkRunner(Protocol):
    """Starts ``criu swrk`` somewhere other than as a plain child (inside a pid namespace)."""

    def start(self, argv: Sequence[str], pass_fds: Sequence[int]) -> subprocess.Popen[bytes] | None:
        """Start ``argv`` (``criu swrk FD``) with ``pass_fds`` inherited; return the process
        the session waits for when it ends, or None when another process reaps CRIU."""
        ...


_LOG_TAIL_LINES = 12
_RECV_LIMIT = 1 << 20


@attrs.frozen(kw_only=True)
class CriuRequest:
    """One dump or restore, described in CRIU's own option names.

    Attributes:
        images_dir: Where CRIU reads or writes its images.
        options: ``criu_opts`` fields (``rpc.proto``) to values; repeated fields
            take sequences, ``inherit_fd`` takes ``(key, fd)`` pairs,
            ``join_ns`` takes ``(ns, ns_file)`` pairs, ``ext_mnt`` takes
            ``(key, val)`` pairs.
        pass_fds: Descriptors of this process that CRIU must see under the same
            numbers (for ``inherit_fd``).
        log_file: Log name inside ``images_dir``.
        notify: Callback for notify events; ``notify_scripts`` is set when given.
        log_dir: Where CRIU writes its log (``work_dir``); ``images_dir`` when None,
            which puts the log among the images (always with a ``runner``).
        terminal: Give CRIU our stdin terminal, for a shell job that had one.
        runner: Starts ``criu swrk`` (inside a pid namespace); a plain child when None.
    """

    images_dir: Path
    options: Mapping[str, Any] = attrs.field(factory=dict)
    pass_fds: Sequence[int] = ()
    log_file: str = "criu.log"
    notify: Notify | None = None
    log_dir: Path | None = None
    terminal: bool = False
    runner: SwrkRunner | None = None

    @property
    def log_path(self) -> Path:
        """Where CRIU's log for this request ends up."""
        log_dir = self.log_dir if self.runner is None else None
        return (log_dir or self.images_dir) / self.log_file


@attrs.frozen(kw_only=True)
class CriuReport:
    """What ``cedana.check()`` tells about the CRIU on this machine."""

    binary: str
    version: tuple[int, ...]
    version_text: str
    kernel: str
    check_ok: bool
    check_error: str
    features: Mapping[str, bool]

    @property
    def usable(self) -> bool:
        """True when this CRIU can checkpoint and restore here."""
        return self.check_ok and self.version >= MIN_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "binary": self.binary,
            "version": self.version_text,
            "kernel": self.kernel,
            "check": self.check_ok,
            "check_error": self.check_error,
            "features": dict(self.features),
            "usable": self.usable,
        }


class CriuBackend(Protocol):
    """What the layers above need from CRIU."""

    def preflight(self) -> None:
        """Raise NotPermitted / CriuNotFound when dumps or restores cannot work here."""

    def dump(self, request: CriuRequest) -> None:
        """Dump the tree named by ``request.options["pid"]``; raise DumpFailed."""

    def restore(self, request: CriuRequest) -> int:
        """Restore from ``request.images_dir``; return the root pid; raise RestoreFailed."""

    def version(self) -> tuple[tuple[int, ...], str]:
        """CRIU's version, as numbers and as text."""

    def report(self) -> CriuReport:
        """Describe the CRIU binary and what this kernel supports."""

    def cpuinfo_check(self, images_dir: Path) -> str | None:
        """Whether this CPU runs what ``images_dir/cpuinfo.img`` describes (CRIU's
        ``cpuinfo check``): None when it does, else CRIU's reason."""


def _import_pycriu() -> tuple[Any, Any]:
    try:
        import pycriu.images
        import pycriu.rpc_pb2 as rpc
    except ImportError as exc:
        raise CriuNotFound(
            "pycriu is not installed in this Python environment; run scripts/provision "
            "as root and install the pycriu wheel it builds (see README)"
        ) from exc
    return rpc, pycriu.images


def load_image(path: Path) -> dict[str, Any]:
    """Decode one CRIU image file to a dict (pycriu's JSON form), page contents left out.

    Raises:
        ValueError: The file is not a CRIU image pycriu can decode.
    """
    _, images = _import_pycriu()
    with open(path, "rb") as f:
        try:
            image: dict[str, Any] = images.load(f, pretty=False, no_payload=True)
        except Exception as exc:  # pycriu raises bare Exceptions and MagicException
            raise ValueError(f"{path.name}: not a CRIU image pycriu can decode ({exc})") from exc
    return image


def rewrite_image(path: Path, change: Callable[[dict[str, Any]], bool]) -> bool:
    """Decode the CRIU image ``path``, let ``change`` edit it in place, and write it back
    when ``change`` says it changed something (the return value).

    Raises:
        ValueError: The file is not a CRIU image pycriu can decode or encode.
    """
    _, images = _import_pycriu()
    image = load_image(path)
    if not change(image):
        return False
    data = io.BytesIO()
    try:
        images.dump(image, data)
    except Exception as exc:  # pycriu raises bare Exceptions
        raise ValueError(f"{path.name}: pycriu cannot encode it ({exc})") from exc
    path.write_bytes(data.getvalue())
    return True


def pagemap_image(pages_id: int, entries: Sequence[tuple[int, int, int]]) -> bytes:
    """The bytes of a ``pagemap-*.img`` as CRIU writes it: its magics, the head naming
    ``pages-<pages_id>.img``, then one entry per ``(vaddr, nr_pages, flags)`` run."""
    _, images = _import_pycriu()
    magic = images.magic.by_name
    out = [struct.pack("=ii", magic["IMG_COMMON"], magic["PAGEMAP"])]
    messages = [images.pb.pagemap_head(pages_id=pages_id)]
    messages += [
        images.pb.pagemap_entry(vaddr=vaddr, compat_nr_pages=0, nr_pages=nr_pages, flags=flags)
        for vaddr, nr_pages, flags in entries
    ]
    for message in messages:
        data = message.SerializeToString()
        out += [struct.pack("=I", len(data)), data]
    return b"".join(out)


def _first_error(tail: str) -> str:
    """CRIU's first real error line from a log tail ('' if none)."""
    for line in tail.splitlines():
        if "Error (" in line:
            return line.split("): ", 1)[-1].strip()
    return ""


_INTERRUPT_REFUSED = re.compile(r"Unable to interrupt task: (\d+) \(Operation not permitted\)")
_BAD_SIZE = re.compile(r"File (.+) has bad size (\d+) \(expect (\d+)\)")
_HALF_UNIX = "Can't dump half of stream unix connection"
_EXPLAIN_LIMIT = 16 << 20


def explain(kind: str, log: Path) -> str | None:
    """Say in words what a known CRIU failure in the log at ``log`` means and what to do;
    None for any other failure (the error then quotes CRIU's first error line)."""
    try:
        with open(log, "rb") as f:
            text = f.read(_EXPLAIN_LIMIT).decode(errors="replace")
    except OSError:
        return None
    if kind == "dump" and _HALF_UNIX in text:
        return (
            "a process of the tree holds a unix stream socket whose other end is outside the "
            "tree, which CRIU cannot dump; give the workload pipes or files instead of that "
            "socket (cedana.spawn does), or checkpoint the process holding the other end with "
            f"it (CRIU: {_HALF_UNIX})"
        )
    if kind == "dump" and (found := _INTERRUPT_REFUSED.search(text)):
        pid = int(found.group(1))
        try:
            zombie = procfs.proc_info(pid).state == "Z"
        except ProcessNotFound:
            zombie = False
        tracer = procfs.tracer_of(pid)
        by = ""
        if tracer:
            try:
                by = f" (pid {tracer}, {procfs.proc_info(tracer).comm})"
            except ProcessNotFound:
                by = f" (pid {tracer})"
        elif zombie:  # CRIU cannot seize a zombie either, and dumps it without
            return None
        return (
            f"pid {pid} is being checkpointed or traced by another process{by}: CRIU could "
            "not seize it, a task has one tracer at a time; wait for it to finish, then "
            "checkpoint again"
        )
    if kind == "restore" and (found := _BAD_SIZE.search(text)):
        # CRIU names the file relative to the mount namespace's root.
        path = "/" + found.group(1).lstrip("/")
        now, then = int(found.group(2)), int(found.group(3))
        return (
            f"{path} is {now} bytes now but was {then} at the checkpoint: CRIU checks that "
            "the regular files the tree has open still have the size they had when it was "
            "checkpointed, and this one changed (the original kept running after a "
            "leave_running checkpoint and wrote to it); restore the file from a copy taken "
            f"at checkpoint time, truncate it back to {then} bytes if losing what was "
            f"written since is acceptable (truncate -s {then} {path}), or checkpoint without "
            "leave_running (files opened for appending, >>, are not checked)"
        )
    return None


def log_tail(path: Path) -> str:
    """The last lines of the CRIU log at ``path`` (its first error kept; RLIMIT noise
    dropped), for an error message; '' when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    # The RLIMIT_NOFILE warning appears in every log on unprivileged-resource machines.
    lines = [ln for ln in lines if "RLIMIT_NOFILE" not in ln]
    errors = [ln for ln in lines if "Error (" in ln]
    tail = lines[-_LOG_TAIL_LINES:]
    # Keep the first error even when it scrolled out of the tail: it is usually the cause.
    if errors and errors[0] not in tail:
        tail = [errors[0], "...", *tail]
    return "\n".join(tail)


def restore_failed(message: str, log: Path) -> RestoreFailed:
    """A :class:`~cedana.errors.RestoreFailed` for a restore CRIU ran under a runtime (runc,
    a shim), carrying the tail of CRIU's log at ``log`` and its path."""
    return RestoreFailed(message, log_tail=log_tail(log), log_path=str(log))


#: criu_opts fields that are lists of pairs, given as (first, second) tuples.
_PAIRS = {"inherit_fd": ("key", "fd"), "join_ns": ("ns", "ns_file"), "ext_mnt": ("key", "val")}
#: criu_opts enum fields, given by value name ("soft", "skip"...), and their enum types.
_ENUMS = {"manage_cgroups_mode": "criu_cg_mode", "network_lock": "criu_network_lock_method"}


def _set_options(opts: Any, rpc: Any, options: Mapping[str, Any]) -> None:
    for name, value in options.items():
        if value is None:
            continue
        if name in _PAIRS:
            first, second = _PAIRS[name]
            for a, b in value:
                getattr(opts, name).add(**{first: a, second: b})
        elif name == "cg_root":
            for ctrl, path in value:
                entry = opts.cg_root.add(path=path)
                if ctrl:
                    entry.ctrl = ctrl
        elif isinstance(value, Mapping):  # a message field: ps={"fd": 5}
            message = getattr(opts, name)
            for field, item in value.items():
                setattr(message, field, item)
        elif name in _ENUMS:
            setattr(opts, name, getattr(rpc, _ENUMS[name]).Value(value.upper()))
        elif isinstance(value, list | tuple):
            getattr(opts, name).extend(value)
        else:
            try:
                setattr(opts, name, value)
            except (AttributeError, TypeError, ValueError) as exc:
                raise InvalidOption(f"bad CRIU option {name}={value!r}: {exc}") from exc


def build_options(options: Mapping[str, Any]) -> Any:
    """Return a ``criu_opts`` message for ``options`` (exposed for unit tests).

    Raises:
        InvalidOption: (a ValueError) An option name or value CRIU's RPC does not know;
            raised before CRIU is started, so nothing is frozen.
    """
    rpc, _ = _import_pycriu()
    opts = rpc.criu_opts(images_dir_fd=-1)
    unknown = [n for n in options if n not in opts.DESCRIPTOR.fields_by_name]
    if unknown:
        raise InvalidOption(
            f"unknown CRIU option(s) {', '.join(sorted(unknown))}: criu= takes the field "
            "names of CRIU's RPC criu_opts (rpc.proto), e.g. ghost_limit"
        )
    try:
        _set_options(opts, rpc, options)
    except (AttributeError, TypeError, ValueError) as exc:
        if isinstance(exc, InvalidOption):
            raise
        raise InvalidOption(f"bad CRIU option value: {exc}") from exc
    return opts


class _Session:
    """One ``criu swrk`` child and its socket; closed (child reaped) for sure."""

    def __init__(
        self,
        binary: str,
        pass_fds: Sequence[int],
        *,
        terminal: bool = False,
        runner: SwrkRunner | None = None,
    ):
        self._parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [binary, "swrk", str(child.fileno())]
        fds = (child.fileno(), *pass_fds)
        try:
            if runner is not None:
                self._proc = runner.start(argv, fds)
            else:
                self._proc = subprocess.Popen(
                    argv,
                    pass_fds=fds,
                    # CRIU attaches a shell job's terminal to its own stdin's; otherwise the
                    # restored tree (CRIU's child) gets a new session, off our terminal.
                    stdin=None if terminal else subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=not terminal,
                )
        except OSError as exc:
            self._parent.close()
            raise CriuNotFound(f"cannot start {binary} swrk: {exc}") from exc
        finally:
            child.close()

    def call(self, req: Any, rpc: Any, notify: Notify | None) -> Any:
        """Send ``req``, answer notifications, return the final response.

        When ``notify`` raises, CRIU is told the callback failed (so it rolls
        back), its final answer is awaited, and the callback's error is raised.
        """
        failure: BaseException | None = None
        self._send(req)
        while True:
            try:
                data = self._parent.recv(_RECV_LIMIT)
            except OSError as exc:
                data = b""
                logger.debug("criu swrk: receive failed: %s", exc)
            if not data:
                status = self._proc.wait() if self._proc is not None else "unknown"
                if failure is not None:
                    raise failure
                raise CriuError(f"criu swrk exited before answering (status {status})")
            resp = rpc.criu_resp()
            resp.ParseFromString(data)
            if resp.type != rpc.NOTIFY:
                if failure is not None:
                    # CRIU has rolled back (thawed the tree); report why it had to.
                    raise failure
                return resp
            ok = failure is None
            if ok and notify is not None:
                try:
                    notify(resp.notify.script, resp.notify.pid)
                except BaseException as exc:
                    failure, ok = exc, False
            self._send(rpc.criu_req(type=rpc.NOTIFY, notify_success=ok))

    def _send(self, message: Any) -> None:
        try:
            self._parent.sendall(message.SerializeToString())
        except OSError as exc:  # swrk died; the next receive reports how
            logger.debug("criu swrk: send failed: %s", exc)

    def close(self) -> None:
        self._parent.close()
        if self._proc is None:  # the runner's process reaps CRIU
            return
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@attrs.define(eq=False)
class SwrkCriu:
    """The real backend: one ``criu swrk`` per request.

    Args:
        binary: The ``criu`` to run; found on PATH (and /usr/local/sbin) when None.
    """

    binary: str | None = None
    _version: tuple[tuple[int, ...], str] | None = attrs.field(default=None, init=False)

    def _binary(self) -> str:
        if self.binary:
            return self.binary
        found = shutil.which("criu") or shutil.which("criu", path="/usr/local/sbin:/usr/sbin:/sbin")
        if not found:
            raise CriuNotFound(
                "criu is not installed; run scripts/provision as root to build CRIU >= "
                f"{'.'.join(map(str, MIN_VERSION))}"
            )
        self.binary = found
        return found

    @contextlib.contextmanager
    def _session(
        self,
        pass_fds: Sequence[int] = (),
        *,
        terminal: bool = False,
        runner: SwrkRunner | None = None,
    ) -> Iterator[_Session]:
        session = _Session(self._binary(), pass_fds, terminal=terminal, runner=runner)
        try:
            yield session
        finally:
            session.close()

    def preflight(self) -> None:
        """Check we are root and that criu and pycriu are there."""
        if os.geteuid() != 0:
            raise NotPermitted(
                "checkpoint and restore need root (CRIU ptraces, freezes and recreates the "
                "tree); run as root"
            )
        _import_pycriu()
        self._binary()

    def _run(self, kind: str, request: CriuRequest) -> Any:
        rpc, _ = _import_pycriu()
        self.preflight()
        opts = build_options(request.options)
        fds: list[int] = []
        try:
            if request.runner is not None:
                # CRIU finds a descriptor given by number in /proc/<caller>/fd, and from
                # inside another pid namespace the caller is not in its /proc: the images
                # go by path (the namespace shares our filesystems), the log among them.
                opts.images_dir_fd = -1
                opts.images_dir = str(request.images_dir.resolve())
            else:
                fds.append(os.open(request.images_dir, os.O_DIRECTORY | os.O_RDONLY))
                opts.images_dir_fd = fds[-1]
                if request.log_dir is not None:
                    fds.append(os.open(request.log_dir, os.O_DIRECTORY | os.O_RDONLY))
                    opts.work_dir_fd = fds[-1]
            opts.log_file = request.log_file
            if not opts.HasField("log_level"):
                opts.log_level = 4
            if request.notify is not None:
                opts.notify_scripts = True
            req_type = rpc.DUMP if kind == "dump" else rpc.RESTORE
            req = rpc.criu_req(type=req_type, opts=opts)
            started = time.monotonic()
            logger.debug("criu %s: start (%s)", kind, request.images_dir)
            with self._session(
                (*fds, *request.pass_fds), terminal=request.terminal, runner=request.runner
            ) as session:
                try:
                    resp = session.call(req, rpc, request.notify)
                except CriuError as exc:
                    exc.log_tail = log_tail(request.log_path)
                    exc.log_path = str(request.log_path)
                    raise
        finally:
            for fd in fds:
                os.close(fd)
        elapsed = time.monotonic() - started
        if not resp.success:
            err = resp.cr_errno
            tail = log_tail(request.log_path)
            # cr_errmsg is CRIU's first error, often the harmless RLIMIT_NOFILE warning.
            message = resp.cr_errmsg if "RLIMIT_NOFILE" not in resp.cr_errmsg else ""
            what = (
                explain(kind, request.log_path)
                or _first_error(tail)
                or message
                or (os.strerror(err) if err else "see the log")
            )
            logger.debug("criu %s: failed after %.3fs: %s", kind, elapsed, what)
            cls = DumpFailed if kind == "dump" else RestoreFailed
            raise cls(
                f"CRIU {kind} failed: {what}",
                errno=err,
                log_tail=tail,
                log_path=str(request.log_path),
            )
        logger.debug("criu %s: complete in %.3fs", kind, elapsed)
        return resp

    def dump(self, request: CriuRequest) -> None:
        """Dump the tree rooted at ``request.options["pid"]``."""
        self._run("dump", request)

    def restore(self, request: CriuRequest) -> int:
        """Restore a tree; return its root pid."""
        resp = self._run("restore", request)
        return int(resp.restore.pid)

    def _simple(self, req: Any) -> Any:
        rpc, _ = _import_pycriu()
        with self._session() as session:
            return session.call(req, rpc, None)

    def version(self) -> tuple[tuple[int, ...], str]:
        """Return CRIU's version as a tuple and as text (asked once per backend)."""
        if self._version is not None:
            return self._version
        rpc, _ = _import_pycriu()
        resp = self._simple(rpc.criu_req(type=rpc.VERSION))
        v = resp.version
        numbers = (v.major_number, v.minor_number, v.sublevel if v.HasField("sublevel") else 0)
        text = ".".join(map(str, numbers)) + (f" ({v.gitid})" if v.gitid else "")
        self._version = (numbers, text)
        return self._version

    def cpuinfo_check(self, images_dir: Path) -> str | None:
        """Run CRIU's ``cpuinfo check`` (RPC ``CPUINFO_CHECK``) on ``images_dir`` with
        :data:`CPU_CAP`, the checks a restore makes; None when it passes, else CRIU's
        first error line (or its errno's text)."""
        rpc, _ = _import_pycriu()
        self.preflight()
        dir_fd = os.open(images_dir, os.O_DIRECTORY | os.O_RDONLY)
        try:
            opts = rpc.criu_opts(
                images_dir_fd=dir_fd, cpu_cap=CPU_CAP, log_file="cpuinfo.log", log_level=4
            )
            with self._session((dir_fd,)) as session:
                resp = session.call(rpc.criu_req(type=rpc.CPUINFO_CHECK, opts=opts), rpc, None)
        finally:
            os.close(dir_fd)
        if resp.success:
            return None
        return _first_error(log_tail(images_dir / "cpuinfo.log")) or os.strerror(
            resp.cr_errno or errno_mod.EINVAL
        )

    def report(self) -> CriuReport:
        """Run CRIU's version, check and feature-check requests."""
        rpc, _ = _import_pycriu()
        binary = self._binary()
        version, text = self.version()
        check_error = ""
        if os.geteuid() != 0:
            check_ok, check_error = False, "not root: criu check needs root"
            features: dict[str, bool] = {}
        else:
            resp = self._simple(rpc.criu_req(type=rpc.CHECK))
            check_ok = bool(resp.success)
            if not check_ok:
                check_error = resp.cr_errmsg or os.strerror(resp.cr_errno or errno_mod.EINVAL)
            wanted = rpc.criu_features(mem_track=True, lazy_pages=True, pidfd_store=True)
            resp = self._simple(rpc.criu_req(type=rpc.FEATURE_CHECK, features=wanted))
            features = {
                "mem_track": bool(resp.features.mem_track),
                "lazy_pages": bool(resp.features.lazy_pages),
                "pidfd_store": bool(resp.features.pidfd_store),
            }
        return CriuReport(
            binary=binary,
            version=version,
            version_text=text,
            kernel=os.uname().release,
            check_ok=check_ok,
            check_error=check_error,
            features=features,
        )


_default: CriuBackend | None = None


def default_backend() -> CriuBackend:
    """The process-wide real backend."""
    global _default  # noqa: PLW0603
    if _default is None:
        _default = SwrkCriu()
    return _default
