"""Confinement: what a container checkpoint may ask of the host at restore.

A checkpoint's manifest lists the sha256 of every member, which proves the
artifact is intact, not where it came from: anyone can build one whose digests
match whatever it holds. So a container checkpoint is restored like an
untrusted image run by the runtime. Everything host-facing it carries is
checked here before anything runs (no runc, no CRIU, no mount, nothing written
outside the restore's own directories), against the target runtime's defaults
and what the caller grants explicitly with :class:`Grants`:

- **OCI hooks** run on the host as root: an artifact's are refused; the
  caller's ``hooks=`` replace them (``hooks={}`` restores without any).
- **Host paths** named by the manifest are never taken as given: members it
  names (the config, the rootfs diff's directory) must be members of the
  artifact; a runc state root must be one runc keeps; the lower layers of an
  overlay rootfs must be the caller's ``lower=`` or match the identity recorded
  at checkpoint (:func:`~cedana.rootfs.overlay.layer_identity`), so a crafted
  ``lower=["/"]`` never becomes a root filesystem.
- **The config** (runc's ``config.json``, containerd's spec) may not ask for a
  host namespace (a default namespace left out, or one joined by path), a
  capability beyond the runtime's default set, a bind mount from outside the
  new bundle, a filesystem other than the pseudo filesystems every container
  gets (or those of them mounted read-write that runtimes mount read-only), a
  device or device-cgroup rule beyond the default set, unmasked ``/proc``
  paths, a seccomp listener socket, a user namespace mapped onto host accounts
  (root, a user's or a group's id: they would own the container's files) or a
  cgroup that is not the new container's own. Each refusal names the field.
- **CRIU's images** restore namespaces, credentials and mounts as they record
  them, whatever the config says, so :func:`check_images` holds them to the
  same rules.

The runtime modules (:mod:`cedana.container.runc`,
:mod:`cedana.runtimes.containerd`) call these checks from their restore plans,
so every runtime restores under the same rules.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from cedana.container.mounts import is_bind
from cedana.criu import load_image
from cedana.errors import ContainerError, UnsafeArtifact
from cedana.rootfs.overlay import same_layer

if TYPE_CHECKING:
    from cedana.checkpoint import Checkpoint

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_DEVICES",
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_NAMESPACES",
    "DEFAULT_READONLY_PATHS",
    "Grants",
    "apply_hooks",
    "check_config",
    "check_images",
    "check_lower",
    "check_member",
    "check_runc_root",
    "check_runtime_options",
    "refused",
    "unpack_images",
]

logger = logging.getLogger("cedana.confine")

#: The capabilities containerd and docker give a container by default (runc's own
#: ``runc spec`` gives three of them).
DEFAULT_CAPABILITIES = frozenset(
    {
        "CAP_AUDIT_WRITE",
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_MKNOD",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_RAW",
        "CAP_SETFCAP",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_CHROOT",
    }
)
#: Namespaces every container gets of its own; leaving one out shares the host's.
DEFAULT_NAMESPACES = frozenset({"pid", "network", "ipc", "uts", "mount"})
#: Namespaces a container may have of its own besides (none of them is the host's).
_OWN_NAMESPACES = DEFAULT_NAMESPACES | {"cgroup", "user", "time"}
#: Device nodes runc makes in every container: path -> (type, major, minor).
DEFAULT_DEVICES: Mapping[str, tuple[str, int, int]] = {
    "/dev/null": ("c", 1, 3),
    "/dev/zero": ("c", 1, 5),
    "/dev/full": ("c", 1, 7),
    "/dev/random": ("c", 1, 8),
    "/dev/urandom": ("c", 1, 9),
    "/dev/tty": ("c", 5, 0),
}
# Device-cgroup rules runc allows on its own (the nodes above, console, ptmx, pts).
_DEFAULT_DEVICE_RULES = frozenset(
    {(kind, major, minor) for kind, major, minor in DEFAULT_DEVICES.values()}
    | {("c", 5, 1), ("c", 5, 2), ("c", 136, -1)}
)
#: What runc's and containerd's default specs hide under /proc and /sys.
DEFAULT_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)
#: What they mount read-only (or hide): writing /proc/sysrq-trigger reboots the host.
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# Filesystems a config may mount besides binds; the first group only read-only.
_READONLY_FILESYSTEMS = frozenset({"sysfs", "cgroup", "cgroup2"})
_PSEUDO_FILESYSTEMS = _READONLY_FILESYSTEMS | {"proc", "tmpfs", "devpts", "mqueue"}
_HOOK_KINDS = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)
#: The runc shim options an artifact may set; the others name host binaries or paths
#: (``binary_name``, ``criu_path``, ``root``, ``shim_cgroup``...) or weaken isolation.
_SAFE_RUNC_OPTIONS = frozenset({"systemd_cgroup", "io_uid", "io_gid"})


def _paths(values: Iterable[str | os.PathLike[str]]) -> tuple[str, ...]:
    return tuple(os.path.abspath(os.fspath(v)) for v in values)


def _strings(values: Iterable[str]) -> frozenset[str]:
    return frozenset(str(v) for v in values)


def _namespaces(values: Mapping[str, str]) -> dict[str, str]:
    return {str(k): str(v) for k, v in values.items()}


@attrs.frozen(kw_only=True)
class Grants:
    """What the caller of a restore grants a container beyond the runtime's defaults.

    A checkpoint is untrusted input: what its config asks for beyond the
    defaults is refused unless granted here, by the caller.

    Attributes:
        binds: Host paths bind mounts may come from (each source must be one of
            them or below one). Sources inside the new bundle need no grant.
        namespaces: Namespace type (``network``, ``pid``...) -> the path the
            config may join it by, or ``"host"`` to let the config share the
            host's namespace of that type.
        capabilities: Capabilities (``CAP_SYS_ADMIN``...) allowed beyond
            :data:`DEFAULT_CAPABILITIES`.
        devices: Device paths (``/dev/fuse``) the config may add, and whose
            device-cgroup rules it may allow, beyond :data:`DEFAULT_DEVICES`.
        unmasked: Paths of :data:`DEFAULT_MASKED_PATHS` and
            :data:`DEFAULT_READONLY_PATHS` the config may leave open.
        cgroups_path: A ``linux.cgroupsPath`` the config may use although it
            is not the new container's own.
    """

    binds: tuple[str, ...] = attrs.field(default=(), converter=_paths)
    namespaces: Mapping[str, str] = attrs.field(factory=dict, converter=_namespaces)
    capabilities: frozenset[str] = attrs.field(default=frozenset(), converter=_strings)
    devices: frozenset[str] = attrs.field(default=frozenset(), converter=_strings)
    unmasked: frozenset[str] = attrs.field(default=frozenset(), converter=_strings)
    cgroups_path: str | None = None


def refused(what: str, why: str, fix: str) -> UnsafeArtifact:
    """The error for a checkpoint that asks the host for more than it grants."""
    return UnsafeArtifact(f"the checkpoint's {what} {why}, so nothing was restored; {fix}")


# --- members and host paths the manifest names -----------------------------------------


def check_member(value: Any, members: Iterable[str], *, what: str, default: str) -> str:
    """A member name the manifest gives (``container.config``, ``rootfs.dir``...), checked.

    ``value`` must name a member of the artifact (or, for a directory, a prefix
    of members); extraction makes members only, so the name stays inside the
    images directory whatever it says.

    Returns:
        ``value``, or ``default`` when the manifest gives none.

    Raises:
        UnsafeArtifact: ``value`` is not one of the artifact's members.
    """
    name = default if value in (None, "") else str(value)
    names = set(members)
    safe = not name.startswith("/") and ".." not in name.split("/")
    if safe and (name in names or any(m.startswith(name.rstrip("/") + "/") for m in names)):
        return name
    raise refused(
        f"manifest field {what}",
        f"names {name!r}, which is not one of its members",
        "do not use this checkpoint",
    )


def check_runc_root(root: Path, *, recorded: bool) -> Path:
    """Refuse a runc state root the manifest names that runc does not keep.

    A root the caller passes is the caller's. One taken from the manifest
    (``recorded``) must be an existing directory (not a symlink) of this
    user's, writable by nobody else, holding only runc's per-container state
    directories: a root a runc actually uses, never some other host directory.

    Raises:
        UnsafeArtifact: The recorded root is not such a directory.
    """
    if not recorded:
        return root
    why = ""
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        why = "does not exist"
    else:
        if not stat.S_ISDIR(st.st_mode):
            why = "is not a directory"
        elif st.st_uid != os.geteuid() or st.st_mode & 0o022:
            why = "is not a private directory of this user"
        else:
            for entry in os.scandir(root):
                if not (
                    entry.is_dir(follow_symlinks=False)
                    and os.path.isfile(os.path.join(entry.path, "state.json"))
                ):
                    why = f"holds {entry.name!r}, which is not runc state"
                    break
    if why:
        raise refused(
            "manifest field container.root",
            f"names {root} as runc's state root, which {why}",
            "pass the runc root to restore into (root=, --root)",
        )
    return root


# --- lower layers -----------------------------------------------------------------------


def check_lower(
    recorded: Sequence[Any],
    identities: Sequence[Any] | None,
    *,
    given: Sequence[str | os.PathLike[str]] | None,
) -> tuple[str, ...]:
    """The lower layers to mount a captured overlay rootfs on.

    The caller's ``given`` layers are used as they are. Otherwise each layer the
    manifest records must be an absolute path of an existing directory whose
    :func:`~cedana.rootfs.overlay.layer_identity` matches the one recorded beside it at checkpoint.

    Returns:
        The layers, uppermost first.

    Raises:
        UnsafeArtifact: A recorded layer does not match (or has no identity,
            as in checkpoints of older cedana versions).
        ContainerError: A recorded layer is gone.
    """
    fix = (
        "if you trust it, pass the image layers to restore on (lower=, uppermost first; the "
        "checkpoint records them as " + ", ".join(map(str, recorded)) + ")"
    )
    if given is not None:
        layers = tuple(os.path.abspath(os.fspath(p)) for p in given)
        for layer in layers:
            if not os.path.isdir(layer):
                raise UnsafeArtifact(f"lower layer {layer} is not a directory")
        return layers
    if not recorded:
        raise refused("rootfs", "names no lower layers", fix)
    ids = list(identities or ())
    if len(ids) != len(recorded):
        raise refused(
            "rootfs", "records no identity of its lower layers (made by an older cedana?)", fix
        )
    out = []
    for layer, expected in zip(recorded, ids, strict=True):
        path = str(layer)
        if not os.path.isabs(path) or os.path.realpath(path) != os.path.normpath(path):
            raise refused("lower layer", f"{path!r} is not an absolute path without symlinks", fix)
        if not os.path.isdir(path):
            raise ContainerError(
                f"image layer {path} of the checkpointed container is gone; the rootfs "
                "changes apply on top of the same layers (or pass lower=)"
            )
        try:
            same = same_layer(path, str(expected))
        except OSError as exc:
            raise refused("lower layer", f"{path} cannot be read ({exc.strerror})", fix) from None
        if not same:
            raise refused(
                "lower layer",
                f"{path} is not the directory it was at checkpoint (its identity differs)",
                fix,
            )
        out.append(path)
    return tuple(out)


# --- hooks ------------------------------------------------------------------------------


def apply_hooks(config: dict[str, Any], hooks: Mapping[str, Any] | None, *, what: str) -> None:
    """Put the caller's ``hooks`` in ``config``; refuse the artifact's own.

    Args:
        config: The parsed config.json / spec, changed in place.
        hooks: The caller's OCI ``hooks`` object (``{"prestart": [...]}``);
            ``{}`` for none. None: the artifact may have none.
        what: The config's name for messages (``config.json``, ``spec``).

    Raises:
        UnsafeArtifact: The artifact's config has hooks and ``hooks`` is None.
        ValueError: ``hooks`` names a hook kind OCI does not have.
    """
    if hooks is not None:
        unknown = sorted(set(hooks) - set(_HOOK_KINDS))
        if unknown:
            raise ValueError(f"hooks= has {', '.join(unknown)}; OCI hooks are {_HOOK_KINDS}")
        theirs = config.pop("hooks", None)
        if isinstance(theirs, Mapping) and any(theirs.values()):
            logger.warning(
                "the checkpoint's %s hooks (%s) are replaced by the caller's",
                what,
                ", ".join(k for k, v in theirs.items() if v),
            )
        if any(hooks.values()):
            config["hooks"] = {k: list(v) for k, v in hooks.items() if v}
        return
    asked = config.get("hooks") or {}
    kinds = [k for k, v in asked.items() if v] if isinstance(asked, Mapping) else ["?"]
    if kinds:
        raise refused(
            f"{what}",
            f"has OCI hooks ({', '.join(f'hooks.{k}' for k in kinds)}), which would run "
            "commands on the host as root",
            "pass hooks= to restore with hooks of your own (hooks={} for none)",
        )


# --- the config ---------------------------------------------------------------------------


def _inside(path: str, roots: Iterable[str]) -> bool:
    real = os.path.realpath(path)
    for root in roots:
        r = os.path.realpath(root)
        if real == r or real.startswith(r.rstrip("/") + "/"):
            return True
    return False


def check_config(
    config: Mapping[str, Any],
    *,
    name: str,
    bundle: Path | None,
    grants: Grants | None = None,
    hooks: Mapping[str, Any] | None = None,
    what: str = "config.json",
) -> dict[str, Any]:
    """The config to restore with: checked against the runtime's defaults and ``grants``.

    Args:
        config: The OCI runtime config from the artifact (after the runtime's
            own rewrites: rootfs, bind sources, cgroup name).
        name: The restored container's id (its cgroup must be its own).
        bundle: The new bundle; bind mounts from inside it need no grant.
        grants: What the caller grants beyond the defaults.
        hooks: The caller's OCI hooks (see :func:`apply_hooks`).
        what: The config's name for messages.

    Returns:
        A copy of ``config`` with the caller's hooks in place of its own.

    Raises:
        UnsafeArtifact: The first field that asks for more, named; or the
            config is not an OCI config at all.
    """
    out = dict(config)
    apply_hooks(out, hooks, what=what)
    try:
        _check_config(out, name=name, bundle=bundle, grants=grants or Grants(), what=what)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise refused(
            what, f"is not a well-formed OCI config ({exc!r})", "do not use this checkpoint"
        ) from None
    logger.debug("%s of %s: within the runtime's defaults and %r", what, name, grants)
    return out


#: (uid_t)-1, which chown takes as "leave it": no mapping may reach it.
_NO_ID = (1 << 32) - 1


def _host_uids() -> set[int]:
    """The host's user ids (root and every account), but the caller's own when not root."""
    import pwd

    ids = {0} | {p.pw_uid for p in pwd.getpwall()}
    return ids - {os.geteuid()} if os.geteuid() else ids


def _host_gids() -> set[int]:
    """The host's group ids (root's, every group, every account's primary group), but the
    caller's own when not root."""
    import grp
    import pwd

    ids = {0} | {g.gr_gid for g in grp.getgrall()} | {p.pw_gid for p in pwd.getpwall()}
    return ids - {os.getegid()} if os.geteuid() else ids


def _check_config(
    config: Mapping[str, Any], *, name: str, bundle: Path | None, grants: Grants, what: str
) -> None:
    g = grants
    fix = "if you trust the checkpoint, grant it at restore (grants=cedana.Grants(...))"

    def no(field: str, why: str, grant: str) -> UnsafeArtifact:
        return refused(f"{what} field {field}", why, f"{fix}: {grant}")

    linux = config.get("linux") or {}
    # Namespaces: each of the defaults must be the container's own.
    seen: dict[str, Any] = {}
    for i, ns in enumerate(linux.get("namespaces") or []):
        kind, path = str(ns.get("type")), ns.get("path")
        field = f"linux.namespaces[{i}]"
        if kind not in _OWN_NAMESPACES:
            raise no(field, f"asks for a {kind!r} namespace, which OCI does not have", "none")
        if path and g.namespaces.get(kind) != path:
            raise no(
                field,
                f"joins the {kind} namespace at {path}, a namespace of the host",
                f"namespaces={{{kind!r}: {str(path)!r}}}",
            )
        seen[kind] = path
    for kind in sorted(DEFAULT_NAMESPACES - set(seen)):
        if g.namespaces.get(kind) != "host":
            raise no(
                "linux.namespaces",
                f"leaves out the {kind} namespace, so the container would share the host's",
                f"namespaces={{{kind!r}: 'host'}}",
            )

    # User namespace mappings: the host ids the container's become own its files (setuid
    # ones too) and its mapped root's group is let into its bundle, so none may be an
    # account of the host's (root, a user, a group) but the caller's own.
    for field, accounts in (("uidMappings", _host_uids), ("gidMappings", _host_gids)):
        taken = None
        for i, m in enumerate(linux.get(field) or []):
            start, size = int(m["hostID"]), int(m["size"])
            if start < 0 or size < 1 or start + size > _NO_ID:
                raise no(
                    f"linux.{field}[{i}]",
                    f"maps onto host ids {start}..{start + size - 1}, which are not ids",
                    "none",
                )
            taken = accounts() if taken is None else taken
            hit = sorted(a for a in taken if start <= a < start + size)
            if hit:
                raise no(
                    f"linux.{field}[{i}]",
                    f"maps the container's ids onto host id {hit[0]}, an account of the host "
                    "(the container's files, setuid ones too, would be its)",
                    "none (map onto ids no host account has, e.g. a range of /etc/subuid)",
                )

    # Capabilities: within the default set.
    caps = (config.get("process") or {}).get("capabilities") or {}
    allowed = DEFAULT_CAPABILITIES | g.capabilities
    for kind in ("bounding", "effective", "inheritable", "permitted", "ambient"):
        extra = sorted(set(caps.get(kind) or ()) - allowed)
        if extra:
            raise no(
                f"process.capabilities.{kind}",
                f"asks for {', '.join(extra)}, beyond the runtime's default capabilities",
                f"capabilities={extra!r}",
            )

    # Mounts: binds from the new bundle or granted places; pseudo filesystems as runtimes
    # mount them.
    bundles = [str(bundle)] if bundle is not None else []
    for i, m in enumerate(config.get("mounts") or []):
        field = f"mounts[{i}] ({m.get('destination')})"
        options = [str(o) for o in m.get("options") or []]
        source = str(m.get("source") or "")
        if is_bind(m):
            if not os.path.isabs(source) or not _inside(source, [*bundles, *g.binds]):
                raise no(field, f"bind-mounts {source!r} from the host", f"binds=[{source!r}]")
            continue
        kind = str(m.get("type") or "")
        if kind not in _PSEUDO_FILESYSTEMS:
            raise no(
                field,
                f"mounts a {kind or 'typeless'!r} filesystem from {source!r}; a container gets "
                f"only {', '.join(sorted(_PSEUDO_FILESYSTEMS))} and bind mounts",
                "none (bind-mount it instead, with binds=)",
            )
        if kind in _READONLY_FILESYSTEMS and "ro" not in options:
            raise no(
                field,
                f"mounts {kind} read-write; runtimes mount it read-only for a container",
                "none",
            )
        if kind == "proc" and os.path.normpath(str(m.get("destination"))) != "/proc":
            raise no(
                field, "mounts proc outside /proc, where its masked paths do not apply", "none"
            )

    masked = set(linux.get("maskedPaths") or ())
    readonly = set(linux.get("readonlyPaths") or ()) | masked
    for paths, have, kind in (
        (DEFAULT_MASKED_PATHS, masked, "maskedPaths"),
        (DEFAULT_READONLY_PATHS, readonly, "readonlyPaths"),
    ):
        missing = sorted(p for p in paths if p not in have and p not in g.unmasked)
        if missing:
            raise no(
                f"linux.{kind}",
                f"leaves {', '.join(missing)} open, which the runtime's defaults close",
                f"unmasked={missing!r}",
            )

    # Devices: the default nodes, or granted ones.
    granted_numbers = set()
    for i, dev in enumerate(linux.get("devices") or []):
        path = str(dev.get("path"))
        numbers = (str(dev.get("type")), int(dev.get("major", -1)), int(dev.get("minor", -1)))
        if path in g.devices:
            granted_numbers.add(numbers)
        elif DEFAULT_DEVICES.get(path) != numbers:
            raise no(
                f"linux.devices[{i}]",
                f"adds device {path} ({numbers[0]} {numbers[1]}:{numbers[2]})",
                f"devices=[{path!r}]",
            )
    rules = (linux.get("resources") or {}).get("devices") or []
    for i, rule in enumerate(rules):
        if not rule.get("allow"):
            continue
        access = str(rule.get("access") or "rwm")
        kind = str(rule.get("type") or "a")
        major, minor = rule.get("major"), rule.get("minor")
        numbers = (kind, -1 if major is None else int(major), -1 if minor is None else int(minor))
        if set(access) <= {"m"}:  # making a node grants no access to it
            continue
        if numbers not in _DEFAULT_DEVICE_RULES | granted_numbers:
            shown = f"{kind} {numbers[1]}:{numbers[2]}".replace("-1", "*")
            raise no(
                f"linux.resources.devices[{i}]",
                f"allows {access} access to devices {shown}",
                "devices=[PATH] with the device listed in linux.devices",
            )

    # runc hands CRIU the config file this annotation names: its action scripts would run
    # on the host as root. An empty one (no config file at all) is harmless.
    criu_config = (config.get("annotations") or {}).get("org.criu.config")
    if criu_config:
        raise no(
            "annotations.org.criu.config",
            f"makes runc give CRIU the host's config file {criu_config!r}",
            "none (remove the annotation)",
        )

    seccomp = linux.get("seccomp") or {}
    if seccomp.get("listenerPath"):
        raise no(
            "linux.seccomp.listenerPath",
            f"hands the container's seccomp notifications to host socket {seccomp['listenerPath']}",
            "none",
        )

    cgroups_path = str(linux.get("cgroupsPath") or "")
    if cgroups_path and cgroups_path != g.cgroups_path:
        parts = cgroups_path.split(":") if ":" in cgroups_path else cgroups_path.split("/")
        if ".." in cgroups_path.split("/") or parts[-1] != name:
            raise no(
                "linux.cgroupsPath",
                f"puts the container in cgroup {cgroups_path!r}, which is not its own "
                f"(it must end in its name, {name!r})",
                f"cgroups_path={cgroups_path!r}",
            )


def check_runtime_options(
    runtime: str, options: Mapping[str, Any], *, runtimes: Sequence[str]
) -> None:
    """Refuse a containerd runtime, or runc shim options, that the artifact may not choose.

    Args:
        runtime: The runtime name the manifest records.
        options: Its decoded runc shim options.
        runtimes: The runtimes allowed (containerd's runc shims).

    Raises:
        UnsafeArtifact: Another runtime (a shim binary of its choosing), or an
            option naming a host binary or path (``binary_name``, ``criu_path``,
            ``root``, ``shim_cgroup``) or weakening isolation (``no_pivot_root``,
            ``no_new_keyring``).
    """
    if runtime not in runtimes:
        raise refused(
            "manifest field containerd.runtime.name",
            f"asks for runtime {runtime!r}; cedana restores into {', '.join(runtimes)}",
            "do not use this checkpoint",
        )
    bad = sorted(k for k, v in options.items() if v and k not in _SAFE_RUNC_OPTIONS)
    if bad:
        raise refused(
            "manifest field containerd.runtime.options",
            f"sets {', '.join(bad)}, which the runc shim would take as host binaries, paths "
            "or weaker isolation",
            "do not use this checkpoint (or restore into runc, into='runc')",
        )


# --- CRIU's images ----------------------------------------------------------------------

#: Capability numbers (linux/capability.h), for the masks in CRIU's creds.
_CAPABILITY_BITS = {
    f"CAP_{name}": bit
    for bit, name in enumerate(
        [
            "CHOWN",
            "DAC_OVERRIDE",
            "DAC_READ_SEARCH",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "LINUX_IMMUTABLE",
            "NET_BIND_SERVICE",
            "NET_BROADCAST",
            "NET_ADMIN",
            "NET_RAW",
            "IPC_LOCK",
            "IPC_OWNER",
            "SYS_MODULE",
            "SYS_RAWIO",
            "SYS_CHROOT",
            "SYS_PTRACE",
            "SYS_PACCT",
            "SYS_ADMIN",
            "SYS_BOOT",
            "SYS_NICE",
            "SYS_RESOURCE",
            "SYS_TIME",
            "SYS_TTY_CONFIG",
            "MKNOD",
            "LEASE",
            "AUDIT_WRITE",
            "AUDIT_CONTROL",
            "SETFCAP",
            "MAC_OVERRIDE",
            "MAC_ADMIN",
            "SYSLOG",
            "WAKE_ALARM",
            "BLOCK_SUSPEND",
            "AUDIT_READ",
            "PERFMON",
            "BPF",
            "CHECKPOINT_RESTORE",
        ]
    )
}
_CAPABILITY_NAMES = {bit: name for name, bit in _CAPABILITY_BITS.items()}
# OCI namespace type -> CRIU's ids field.
_NS_IDS = {
    "pid": "pid_ns_id",
    "network": "net_ns_id",
    "ipc": "ipc_ns_id",
    "uts": "uts_ns_id",
    "mount": "mnt_ns_id",
}
# CRIU's fstype numbers (images/mnt.proto) of the pseudo filesystems a container gets;
# the first three only read-only.
_CRIU_READONLY_FS = {2: "sysfs", 12: "cgroup", 23: "cgroup2"}
_CRIU_PSEUDO_FS = {**_CRIU_READONLY_FS, 1: "proc", 5: "tmpfs", 6: "devpts", 14: "mqueue"}
_CRIU_TMPFS = 5
_MS_RDONLY = 1


def unpack_images(ckpt: Checkpoint, images: Path, *, grants: Grants | None = None) -> None:
    """Unpack ``ckpt`` (verifying it) into ``images`` and hold its CRIU images to the
    container's rules (:func:`check_images`): the one way a container restore gets its
    images, so no runtime can hand CRIU unchecked ones.

    Raises:
        UnsafeArtifact: What the images ask for beyond the defaults and ``grants``.
    """
    ckpt.extract(images)
    check_images(images, grants=grants)


def check_images(images: Path, *, grants: Grants | None = None) -> None:
    """Refuse CRIU images that would restore a process with more than the container's due.

    CRIU puts back what its images say, whatever the config: the namespaces of
    each process (one that shares the dumping host's namespace is restored in
    the restoring host's), its credentials (capabilities included) and the
    container's mount table (each filesystem mounted anew). So the images are
    held to the same rules as the config: each process in namespaces of its
    own (unless granted ``"host"``), capabilities within the default set plus
    ``grants.capabilities`` (for processes outside a user namespace of their
    own), mounts of pseudo filesystems only (sysfs and cgroup read-only) or
    external ones (runc maps those from the checked config), and the default
    masked and read-only paths (those this kernel has) covered.

    Raises:
        UnsafeArtifact: What the images ask for, named by image and process.
    """
    g = grants or Grants()
    try:
        _check_images(images, g)
        logger.debug("images %s: within the runtime's defaults and %r", images, g)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, OSError) as exc:
        raise refused(
            "CRIU images", f"cannot be checked ({exc})", "do not use this checkpoint"
        ) from None


def _entries(path: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = load_image(path)["entries"]
    return entries


#: CRIU's task_state of a zombie (compel's TASK_DEAD: exited, not yet reaped).
_TASK_DEAD = 2


def _zombie(images: Path, pid: int) -> bool:
    """True when the images record ``pid`` as a zombie (its core image says so)."""
    core = _entries(images / f"core-{pid}.img")[0]
    return int((core.get("tc") or {}).get("task_state") or 0) == _TASK_DEAD


def _check_images(images: Path, g: Grants) -> None:
    fix = "if you trust the checkpoint, grant it at restore (grants=cedana.Grants(...))"
    host = _entries(images / "inventory.img")[0]["root_ids"]
    allowed = 0
    for name in DEFAULT_CAPABILITIES | g.capabilities:
        allowed |= 1 << _CAPABILITY_BITS.get(name, 63)
    root_mnt_ns = None
    for task in _entries(images / "pstree.img"):
        pid = int(task["pid"])
        if not (images / f"ids-{pid}.img").exists() and _zombie(images, pid):
            continue  # CRIU keeps only a zombie's exit status: it restores running nothing
        ids = _entries(images / f"ids-{pid}.img")[0]
        if root_mnt_ns is None:
            root_mnt_ns = ids.get("mnt_ns_id")
        for kind, field in _NS_IDS.items():
            if g.namespaces.get(kind) != "host" and ids.get(field) == host.get(field):
                raise refused(
                    f"CRIU image ids-{pid}.img",
                    f"puts process {pid} in the host's {kind} namespace",
                    f"{fix}: namespaces={{{kind!r}: 'host'}}",
                )
        if ids.get("user_ns_id") != host.get("user_ns_id"):
            continue  # capabilities of its own user namespace
        for tid in task.get("threads") or [pid]:
            creds = _entries(images / f"core-{int(tid)}.img")[0]["thread_core"]["creds"]
            for key in ("cap_bnd", "cap_prm", "cap_eff", "cap_inh", "cap_amb"):
                words = creds.get(key) or []
                mask = sum(int(w) << (32 * i) for i, w in enumerate(words))
                extra = mask & ~allowed
                if extra:
                    names = [_CAPABILITY_NAMES.get(b, str(b)) for b in range(64) if extra >> b & 1]
                    raise refused(
                        f"CRIU image core-{tid}.img",
                        f"gives process {pid} {', '.join(names)} ({key}), beyond the "
                        "runtime's default capabilities",
                        f"{fix}: capabilities={names!r}",
                    )
    for table in sorted(images.glob("mountpoints-*.img")):
        is_root = table.name == f"mountpoints-{root_mnt_ns}.img"
        _check_mount_table(table, _entries(table), is_root=is_root, grants=g, fix=fix)


def _check_mount_table(
    table: Path, entries: list[dict[str, Any]], *, is_root: bool, grants: Grants, fix: str
) -> None:
    # mountpoint -> it is read-only or masks what is below (a tmpfs, or /dev/null bound)
    covers: dict[str, bool] = {}
    for e in entries:
        where = str(e.get("mountpoint"))
        flags = int(e.get("flags") or 0) | int(e.get("sb_flags") or 0)
        fstype = int(e.get("fstype") or 0)
        if is_root and where == "/":
            continue  # the container's root: the rootfs runc sets up (CRIU's --root)
        covers[where] = bool(flags & _MS_RDONLY) or fstype == _CRIU_TMPFS
        if e.get("ext_key") or e.get("ext_mount"):
            continue  # external: runc answers with the checked config's source
        name = _CRIU_PSEUDO_FS.get(fstype)
        if name is None:
            raise refused(
                f"CRIU image {table.name}",
                f"mounts filesystem type {fstype} ({e.get('fsname') or e.get('source')!r}) on "
                f"{where}; a container gets only {', '.join(sorted(_CRIU_PSEUDO_FS.values()))} "
                "and the config's bind mounts",
                "do not use this checkpoint",
            )
        if fstype in _CRIU_READONLY_FS and not flags & _MS_RDONLY:
            raise refused(
                f"CRIU image {table.name}",
                f"mounts {name} read-write on {where}; runtimes mount it read-only",
                "do not use this checkpoint",
            )
    if not is_root:
        return
    for paths, readonly in ((DEFAULT_MASKED_PATHS, False), (DEFAULT_READONLY_PATHS, True)):
        for path in paths:
            if path in grants.unmasked or not os.path.lexists(path):
                continue
            if path not in covers or (readonly and not covers[path]):
                raise refused(
                    f"CRIU image {table.name}",
                    f"leaves {path} {'writable' if readonly else 'open'}, which the runtime's "
                    "defaults close",
                    f"{fix}: unmasked=[{path!r}]",
                )
