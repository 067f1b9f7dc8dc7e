"""A kata sandbox's QEMU command line, parsed into an allow-listed description and built
again from it.

A checkpoint records the command line QEMU was started with; a restore must start a QEMU
with the same machine and devices, or the migration stream does not load. But a recorded
command line is untrusted input (an artifact may come from anywhere): executed as it is,
it could open any host file, socket or device. So a restore never runs it. It is parsed
here into a :class:`VmSpec` that holds only what this module knows to be safe: the
machine type, memory and cpus, the kernel and initrd (paths checked by the caller),
device models from :data:`DEVICES` with plain-word properties only, memory backends in
guest RAM (``memfd``, or files under ``/dev/shm``), the random-number source
``/dev/urandom``. Every host-facing socket and file (QMP, the console, virtiofsd's socket,
the pid file) is left out of the spec and made by cedana in its own directory at restore
(:meth:`VmSpec.command_line`). Anything else is refused with the option named, at
checkpoint time already (so a VM that could not be restored is never stopped for it).

The same parser reads the recorded command line at restore, so what is allowed is one list,
not two that could drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from cedana.errors import NotCheckpointable

__all__ = ["DEVICES", "UnsupportedVm", "VmSpec", "parse_command_line", "split_options"]

#: Device models a restored VM may have, and the properties each may carry (values are
#: plain words: no paths, no commas; ``romfile`` only empty, as kata writes it).
#: ``chardev`` and ``rng`` name a chardev or object of the command line, which the spec
#: then holds as well.
DEVICES: Mapping[str, frozenset[str]] = {
    "vhost-user-fs-pci": frozenset(
        {"id", "bus", "addr", "tag", "queue-size", "chardev", "romfile"}
    ),
    "virtio-serial-pci": frozenset({"id", "bus", "addr", "disable-modern", "romfile"}),
    "virtconsole": frozenset({"id", "chardev", "name"}),
    "virtio-rng-pci": frozenset({"id", "bus", "addr", "rng", "disable-modern", "romfile"}),
    "virtio-scsi-pci": frozenset({"id", "bus", "addr", "disable-modern", "romfile"}),
    "pci-bridge": frozenset(
        {"id", "bus", "addr", "chassis_nr", "shpc", "io-reserve", "mem-reserve", "pref64-reserve"}
    ),
    "pcie-root-port": frozenset({"id", "bus", "addr", "chassis", "slot", "port", "multifunction"}),
}
_MACHINE_PROPS = frozenset(
    {
        "nvdimm",
        "kernel_irqchip",
        "smm",
        "vmport",
        "usb",
        "dump-guest-core",
        "hpet",
        "memory-backend",
    }
)
_FLAGS = frozenset({"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-no-hpet"})
#: Options cedana makes itself at restore (its own sockets and files); dropped from the spec.
_OWN = frozenset({"-qmp", "-pidfile", "-monitor", "-incoming"})
_DROPPED_FLAGS = frozenset({"-daemonize", "-S"})
_GLOBALS = frozenset({"kvm-pit.lost_tick_policy=discard"})
_SHM_DIRS = ("/dev/shm", "/dev/hugepages")
_RNG_SOURCES = ("/dev/urandom", "/dev/random")
_WORD = re.compile(r"[A-Za-z0-9_.:+-]*")
_SIZE = re.compile(r"\d+[KMGT]?")
_SMP = re.compile(r"\d+(,(cpus|cores|threads|sockets|dies|maxcpus)=\d+)*")
_CPU = re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.+-]+(=[A-Za-z0-9_.-]+)?)*")
_RTC = re.compile(
    r"(base=(utc|localtime)|driftfix=(slew|none)|clock=(host|rt|vm))(,(base=(utc|localtime)|driftfix=(slew|none)|clock=(host|rt|vm)))*"
)
_UUID = re.compile(r"[0-9a-fA-F-]{36}")
_BINARY = re.compile(r"qemu-system-[a-z0-9_]+|qemu-kvm")
_MAX_APPEND = 4096


class UnsupportedVm(NotCheckpointable):
    """The QEMU command line holds something a restore could not rebuild safely."""


def split_options(text: str) -> tuple[str | None, dict[str, str]]:
    """``"q35,accel=tcg"`` -> ``("q35", {"accel": "tcg"})``: QEMU's ``key=value`` lists
    (``,,`` is a literal comma); the first item may be a bare value (the implied key)."""
    items: list[str] = []
    current = ""
    i = 0
    while i < len(text):
        if text[i] == ",":
            if text[i : i + 2] == ",,":
                current += ","
                i += 2
                continue
            items.append(current)
            current = ""
        else:
            current += text[i]
        i += 1
    items.append(current)
    implied = None
    props: dict[str, str] = {}
    for n, item in enumerate(items):
        key, sep, value = item.partition("=")
        if not sep:
            if n == 0:
                implied = item
                continue
            props[item] = "on"
            continue
        props[key] = value
    return implied, props


def _word(value: str, what: str) -> str:
    if not _WORD.fullmatch(value):
        raise UnsupportedVm(f"{what} {value!r} is not a plain word; cedana does not restore it")
    return value


@attrs.frozen(kw_only=True)
class Chardev:
    """A chardev a device or the serial port uses; its host end is cedana's at restore."""

    id: str
    backend: str  # "socket" (QEMU the server for a console; virtiofsd's for vhost-user) or "file"
    path: str = ""  # as recorded: only for finding virtiofsd at checkpoint, never reused


@attrs.frozen(kw_only=True)
class VmSpec:
    """What a restore may rebuild of a QEMU command line (see the module docstring).

    Attributes:
        binary: The QEMU program's name (``qemu-system-x86_64``), looked up on this host.
        name: ``-name``'s guest name (``sandbox-<id>``).
        machine: The machine type as given (``q35``); the checkpoint also records the
            versioned type QEMU resolved it to, which a restore uses.
        machine_props: Allowed machine properties (``accel`` apart).
        accel: ``kvm`` or ``tcg``.
        cpu, memory, smp, uuid, rtc: Those options' values, checked.
        objects: ``-object`` entries: ``memory-backend-memfd``, ``memory-backend-file``
            (under /dev/shm), ``rng-random`` (/dev/urandom).
        numa: ``-numa`` entries (``node,memdev=ID``).
        devices: ``(driver, props)`` of every ``-device``, from :data:`DEVICES`.
        chardevs: The chardevs those devices and the serial port use.
        serial: The chardev id of ``-serial chardev:ID`` (or a ``file:`` serial's own).
        kernel, initrd: Host paths, checked by the restore.
        append: The kernel command line (guest-facing only).
        flags: Bare flags from an allow-list (``-nodefaults``...).
        globals: ``-global`` settings from an allow-list.
        qmp: The QMP socket path as recorded (for finding the live VM, never reused).
    """

    binary: str
    name: str
    machine: str
    machine_props: tuple[tuple[str, str], ...] = ()
    accel: str = "tcg"
    cpu: str | None = None
    memory: str = "128M"
    smp: str | None = None
    uuid: str | None = None
    rtc: str | None = None
    objects: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    numa: tuple[str, ...] = ()
    devices: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    chardevs: tuple[Chardev, ...] = ()
    serial: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    flags: tuple[str, ...] = ()
    globals: tuple[str, ...] = ()
    qmp: str | None = None

    @property
    def sandbox_id(self) -> str | None:
        """The kata sandbox id in the guest name (``sandbox-<id>``), if it is one."""
        return self.name.removeprefix("sandbox-") if self.name.startswith("sandbox-") else None

    def chardev(self, ident: str) -> Chardev:
        """The chardev ``ident``."""
        return next(c for c in self.chardevs if c.id == ident)

    def virtiofs(self) -> list[tuple[str, Chardev]]:
        """``(tag, chardev)`` of every vhost-user-fs device."""
        found = []
        for driver, props in self.devices:
            if driver == "vhost-user-fs-pci":
                p = dict(props)
                found.append((p.get("tag", ""), self.chardev(p["chardev"])))
        return found

    def device_models(self) -> list[str]:
        """The device models, in order."""
        return [driver for driver, _ in self.devices]

    def command_line(
        self,
        *,
        binary: str,
        name: str,
        machine_type: str,
        accel: str,
        run_dir: Path,
        kernel: str | None,
        initrd: str | None,
        incoming_fd: int,
    ) -> list[str]:
        """The argv of a QEMU that takes this VM's migration stream on ``incoming_fd``.

        Built from the spec's fields, never from recorded text: every socket and file is
        in ``run_dir`` (which cedana made): ``qmp.sock``, ``pid``, ``console.log`` or
        ``console.sock``, ``vhost-fs-<n>.sock`` (where cedana's virtiofsd listens).
        """
        argv = [binary, "-name", name]
        if self.uuid:
            argv += ["-uuid", self.uuid]
        machine = ",".join(
            [machine_type, f"accel={accel}", *(f"{k}={v}" for k, v in self.machine_props)]
        )
        argv += ["-machine", machine]
        if self.cpu:
            argv += ["-cpu", self.cpu]
        argv += ["-m", self.memory]
        if self.smp:
            argv += ["-smp", self.smp]
        for kind, props in self.objects:
            argv += ["-object", ",".join([kind, *(f"{k}={v}" for k, v in props)])]
        for node in self.numa:
            argv += ["-numa", node]
        fs_socks = {
            c.id: run_dir / f"vhost-fs-{n}.sock" for n, (_, c) in enumerate(self.virtiofs())
        }
        for dev in self.chardevs:
            if dev.id in fs_socks:
                argv += ["-chardev", f"socket,id={dev.id},path={fs_socks[dev.id]}"]
            elif dev.backend == "file":
                argv += ["-chardev", f"file,id={dev.id},path={run_dir / 'console.log'}"]
            else:
                sock = run_dir / "console.sock"
                argv += ["-chardev", f"socket,id={dev.id},path={sock},server=on,wait=off"]
        for driver, props in self.devices:
            argv += ["-device", ",".join([driver, *(f"{k}={v}" for k, v in props)])]
        if self.serial:
            argv += ["-serial", f"chardev:{self.serial}"]
        if kernel:
            argv += ["-kernel", kernel]
        if initrd:
            argv += ["-initrd", initrd]
        if self.append is not None:
            argv += ["-append", self.append]
        if self.rtc:
            argv += ["-rtc", self.rtc]
        for setting in self.globals:
            argv += ["-global", setting]
        argv += list(self.flags)
        if "-nographic" not in self.flags:
            argv += ["-display", "none"]
        argv += [
            "-qmp",
            f"unix:{run_dir / 'qmp.sock'},server=on,wait=off",
            "-pidfile",
            str(run_dir / "pid"),
            "-incoming",
            f"fd:{incoming_fd}",
        ]
        return argv

    def virtiofs_sockets(self, run_dir: Path) -> list[tuple[str, Path]]:
        """``(tag, socket)`` where a restore's virtiofsd for each share listens."""
        return [(tag, run_dir / f"vhost-fs-{n}.sock") for n, (tag, _) in enumerate(self.virtiofs())]


def _pairs(props: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(props.items())


def _options(argv: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    """``(option, value)`` of a QEMU argv (after the program), ``--opt`` read as ``-opt``."""
    takes_no_value = _FLAGS | _DROPPED_FLAGS | {"-enable-kvm"}
    i = 0
    while i < len(argv):
        opt = argv[i]
        if opt.startswith("--"):
            opt = opt[1:]
        if not opt.startswith("-"):
            raise UnsupportedVm(f"the QEMU command line has a stray argument {argv[i]!r}")
        if opt in takes_no_value:
            yield opt, None
            i += 1
            continue
        if i + 1 >= len(argv):
            raise UnsupportedVm(f"the QEMU command line ends in {argv[i]!r} without its value")
        yield opt, argv[i + 1]
        i += 2


def parse_command_line(argv: Sequence[str]) -> VmSpec:
    """Parse a QEMU argv (``argv[0]`` the program) into a :class:`VmSpec`.

    Raises:
        UnsupportedVm: (a NotCheckpointable) An option, device, object or value outside
            the allow-list; the message names it and what is supported.
    """
    if not argv:
        raise UnsupportedVm("the QEMU command line is empty")
    binary = Path(argv[0]).name
    if not _BINARY.fullmatch(binary):
        raise UnsupportedVm(f"{argv[0]!r} is not a QEMU system emulator (qemu-system-*)")
    fields: dict[str, Any] = {"binary": binary}
    objects: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    devices: list[tuple[str, dict[str, str]]] = []
    chardevs: dict[str, Chardev] = {}
    numa: list[str] = []
    flags: list[str] = []
    globals_: list[str] = []
    object_ids: set[str] = set()
    serial_file: str | None = None
    for opt, value in _options(argv[1:]):
        if value is None:
            if opt == "-enable-kvm":
                fields["accel"] = "kvm"
            elif opt in _FLAGS:
                flags.append(opt)
            continue
        if opt == "-name":
            implied, props = split_options(value)
            name = props.get("guest", implied or "")
            fields["name"] = _word(name, "the guest name")
        elif opt in {"-machine", "-M"}:
            implied, props = split_options(value)
            fields["machine"] = _word(props.pop("type", implied or ""), "the machine type")
            accel = props.pop("accel", None)
            if accel is not None:
                fields["accel"] = _accel(accel)
            unknown = sorted(props.keys() - _MACHINE_PROPS)
            if unknown:
                raise UnsupportedVm(f"machine property {unknown[0]!r} is not supported")
            fields["machine_props"] = tuple((k, _word(v, k)) for k, v in props.items())
        elif opt == "-accel":
            implied, _props = split_options(value)
            fields["accel"] = _accel(implied or "")
        elif opt == "-cpu":
            if not _CPU.fullmatch(value):
                raise UnsupportedVm(f"-cpu {value!r} is not supported")
            fields["cpu"] = value
        elif opt == "-m":
            implied, props = split_options(value)
            size = props.pop("size", implied or "")
            if not _SIZE.fullmatch(size) or any(not _SIZE.fullmatch(v) for v in props.values()):
                raise UnsupportedVm(f"-m {value!r} is not supported")
            if props.keys() - {"slots", "maxmem"}:
                raise UnsupportedVm(f"-m {value!r} is not supported")
            fields["memory"] = value
        elif opt == "-smp":
            if not _SMP.fullmatch(value):
                raise UnsupportedVm(f"-smp {value!r} is not supported")
            fields["smp"] = value
        elif opt == "-uuid":
            if not _UUID.fullmatch(value):
                raise UnsupportedVm(f"-uuid {value!r} is not a UUID")
            fields["uuid"] = value
        elif opt == "-rtc":
            if not _RTC.fullmatch(value):
                raise UnsupportedVm(f"-rtc {value!r} is not supported")
            fields["rtc"] = value
        elif opt == "-object":
            kind, props = split_options(value)
            objects.append((kind or "", _object(kind or "", props)))
            object_ids.add(props["id"])
        elif opt == "-numa":
            implied, props = split_options(value)
            if implied != "node" or props.keys() - {"memdev", "nodeid", "cpus"}:
                raise UnsupportedVm(f"-numa {value!r} is not supported")
            for v in props.values():
                _word(v, "a -numa value")
            numa.append(value)
        elif opt == "-chardev":
            backend, props = split_options(value)
            ident = _word(props.get("id", ""), "a chardev id")
            if backend not in ("socket", "file") or props.keys() - {"id", "path", "server", "wait"}:
                raise UnsupportedVm(
                    f"-chardev {value!r} is not supported (only socket and file chardevs)"
                )
            chardevs[ident] = Chardev(id=ident, backend=backend, path=props.get("path", ""))
        elif opt == "-device":
            driver, props = split_options(value)
            driver = driver or props.pop("driver", "")
            allowed = DEVICES.get(driver)
            if allowed is None:
                raise UnsupportedVm(
                    f"device {driver!r} is not one cedana restores (supported: "
                    f"{', '.join(sorted(DEVICES))})"
                )
            unknown = sorted(props.keys() - allowed)
            if unknown:
                raise UnsupportedVm(f"device {driver} property {unknown[0]!r} is not supported")
            for key, v in props.items():
                _word(v, f"device {driver} property {key}")
            if props.get("romfile", ""):
                # QEMU opens it as a file, relative to its working directory first.
                raise UnsupportedVm(
                    f"device {driver} romfile {props['romfile']!r} is a file QEMU would open "
                    "on this host; cedana restores devices without an option ROM (romfile=)"
                )
            devices.append((driver, props))
        elif opt == "-serial":
            if value.startswith("chardev:"):
                fields["serial"] = _word(value.removeprefix("chardev:"), "a serial chardev")
            elif value.startswith("file:"):
                serial_file = value.removeprefix("file:")
            elif value != "none":
                raise UnsupportedVm(f"-serial {value!r} is not supported (chardev:ID or file:)")
        elif opt in ("-kernel", "-initrd"):
            if not value.startswith("/") or "\x00" in value:
                raise UnsupportedVm(f"{opt} {value!r} is not an absolute path")
            fields[opt[1:]] = value
        elif opt == "-append":
            if len(value) > _MAX_APPEND:
                raise UnsupportedVm("the kernel command line is too long")
            fields["append"] = value
        elif opt == "-global":
            if value not in _GLOBALS:
                raise UnsupportedVm(f"-global {value!r} is not supported")
            globals_.append(value)
        elif opt in ("-display", "-vga"):
            if value != "none":
                raise UnsupportedVm(f"{opt} {value!r} is not supported (only none)")
        elif opt == "-qmp":
            fields["qmp"] = _qmp_path(value)
        elif opt in _OWN:
            pass
        else:
            raise UnsupportedVm(f"QEMU option {opt} is not one cedana restores")
    if "name" not in fields:
        raise UnsupportedVm("the QEMU command line has no -name")
    if "machine" not in fields:
        raise UnsupportedVm("the QEMU command line has no -machine type")
    if serial_file is not None:
        chardevs["cedana-serial"] = Chardev(id="cedana-serial", backend="file", path=serial_file)
        fields["serial"] = "cedana-serial"
    used = {fields.get("serial")}
    for driver, props in devices:
        if "chardev" in props:
            if props["chardev"] not in chardevs:
                raise UnsupportedVm(
                    f"device {driver} uses chardev {props['chardev']!r}, not defined"
                )
            used.add(props["chardev"])
        if "rng" in props and props["rng"] not in object_ids:
            raise UnsupportedVm(f"device {driver} uses object {props['rng']!r}, not defined")
        if driver == "vhost-user-fs-pci" and chardevs[props["chardev"]].backend != "socket":
            raise UnsupportedVm("vhost-user-fs-pci needs a socket chardev")
    unused = sorted(chardevs.keys() - used)
    if unused:
        raise UnsupportedVm(f"chardev {unused[0]!r} is not used by a supported device")
    return VmSpec(
        objects=tuple(objects),
        devices=tuple((d, _pairs(p)) for d, p in devices),
        chardevs=tuple(chardevs.values()),
        numa=tuple(numa),
        flags=tuple(flags),
        globals=tuple(globals_),
        **fields,
    )


def _accel(value: str) -> str:
    if value not in ("kvm", "tcg"):
        raise UnsupportedVm(f"accelerator {value!r} is not supported (kvm or tcg)")
    return value


def _qmp_path(value: str) -> str | None:
    if not value.startswith("unix:"):
        return None
    first, props = split_options(value.removeprefix("unix:"))
    return props.get("path", first)


def _object(kind: str, props: dict[str, str]) -> tuple[tuple[str, str], ...]:
    ident = _word(props.get("id", ""), "an object id")
    if not ident:
        raise UnsupportedVm(f"-object {kind} has no id")
    if kind == "memory-backend-memfd":
        allowed = {"id", "size", "share", "hugetlb", "prealloc"}
    elif kind == "memory-backend-file":
        allowed = {"id", "size", "share", "mem-path", "prealloc"}
        if props.get("mem-path") not in _SHM_DIRS:
            raise UnsupportedVm(
                f"memory backend {ident} is a file at {props.get('mem-path')!r}; cedana restores "
                f"guest memory only in {' or '.join(_SHM_DIRS)} or a memfd"
            )
    elif kind == "rng-random":
        allowed = {"id", "filename"}
        if props.get("filename", "/dev/urandom") not in _RNG_SOURCES:
            raise UnsupportedVm(f"rng-random {ident} reads {props.get('filename')!r}")
    else:
        raise UnsupportedVm(
            f"-object {kind} is not supported (memory-backend-memfd, memory-backend-file in "
            "/dev/shm, rng-random)"
        )
    unknown = sorted(props.keys() - allowed)
    if unknown:
        raise UnsupportedVm(f"-object {kind} property {unknown[0]!r} is not supported")
    for key, value in props.items():
        if key not in ("mem-path", "filename"):
            _word(value, f"-object {kind} property {key}")
    return _pairs(props)
