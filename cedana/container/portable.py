"""A container checkpoint described without its runtime, for a restore into another one.

Every runc-based runtime records the same things in a checkpoint: runc's ``config.json``
(the OCI config runc ran the container with), CRIU's images and the rootfs changes in the
overlay format. What differs is what the runtime added around the container: the files it
bind-mounts in (``/etc/hosts``, ``/etc/hostname``, ``/etc/resolv.conf``, podman's
``/run/.containerenv``, a ``/dev/shm`` of its own), the hooks it runs for its networking
(docker's ``libnetwork-setkey``), its cgroup path and its image store. A
:class:`PortableContainer` is the checkpoint with those taken out: the config without
them, and the list of the runtime's mounts (:class:`RuntimeMount`) that CRIU's images hold
as external mounts, for the target runtime to answer with its own equivalents (CRIU
restores each external mount only onto a bind mount of the same destination). Each
runtime's restore of another runtime's checkpoint consumes this one description; nothing
here names a runtime.

It is built from an artifact that is still untrusted: the config keeps everything else it
asks for (namespaces, capabilities, other binds, hooks), for the target's restore to
confine as it confines its own checkpoints. Only what is dropped here is trusted less:
the runtime's mounts are replaced by files cedana makes (:func:`make_files`) or the target
runtime makes, never by the host paths the artifact names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from cedana.artifact.manifest import Manifest, Member, thaw
from cedana.checkpoint import Checkpoint
from cedana.container import confine
from cedana.container.mounts import is_bind
from cedana.errors import UnsafeArtifact
from cedana.rootfs.mounts import is_mountpoint, mount, mountinfo, umount

__all__ = [
    "FILES_ROOT",
    "RUNTIME_FILES",
    "ImageFacts",
    "PortableContainer",
    "RuntimeMount",
    "describe",
    "files_binds",
    "make_files",
    "remove_files",
    "translated",
]

logger = logging.getLogger("cedana.portable")

#: The mounts a runtime makes in every container, by destination, and what each is:
#: a file cedana writes (``hosts``, ``hostname``, ``resolv.conf``, ``empty``), a fresh
#: tmpfs (``tmpfs``: /dev/shm) or an empty directory (``dir``).
RUNTIME_FILES: Mapping[str, str] = {
    "/etc/hosts": "hosts",
    "/etc/hostname": "hostname",
    "/etc/resolv.conf": "resolv.conf",
    "/run/.containerenv": "empty",
    "/var/run/.containerenv": "empty",
    "/dev/termination-log": "empty",
    "/dev/shm": "tmpfs",
    "/run/secrets": "dir",
    "/var/run/secrets": "dir",
}
#: Hooks a runtime adds to every container for its own networking: its business, never
#: the restored container's (docker's ``libnetwork-setkey`` calls back into dockerd).
_RUNTIME_HOOK_ARGS = frozenset({"libnetwork-setkey"})
#: Where restores into a runtime without a directory of its own per container keep the
#: files they make for it (containerd, docker); a restore into runc keeps them in its bundle.
FILES_ROOT = Path("/var/lib/cedana/files")
#: Marks a directory of files :func:`make_files` made: only such a directory is removed.
FILES_MARKER = "cedana-files.json"
#: The label (containerd, docker) naming a restored container's files directory.
FILES_LABEL = "io.cedana.files"
#: The size of the /dev/shm a restore makes (the runtimes' default).
SHM_SIZE = "64m"


@attrs.frozen(kw_only=True)
class RuntimeMount:
    """One mount the source runtime made, which the target must answer with its own.

    Attributes:
        destination: Where it is in the container (``/etc/hosts``).
        kind: What to make for it (see :data:`RUNTIME_FILES`).
        options: The mount's options in the checkpointed config (``ro`` kept).
    """

    destination: str
    kind: str
    options: tuple[str, ...] = ()

    @property
    def slot(self) -> str:
        """Its file name in a files directory (``etc-hosts``)."""
        return self.destination.strip("/").replace("/", "-").lstrip(".") or "root"


@attrs.frozen(kw_only=True)
class ImageFacts:
    """The image a checkpointed container was made from, as every store can recognise it.

    Attributes:
        name: Its reference in the source store (``docker.io/library/busybox:1``).
        chain_id: The OCI chain id of its layers (what the rootfs changes apply on); the
            same in every store that holds the same layers, whatever its config digest.
        ids: The image's id in stores that have one (store name -> id).
        source: The runtime whose store it was in.
        namespace: The source store's namespace (containerd's), if it has one.
        layers: For a runtime without a store (plain runc): the directories the
            container's overlay ran on, uppermost first, checked to be the recorded ones;
            a store gets them as a new image.
    """

    name: str
    chain_id: str | None
    ids: Mapping[str, str] = attrs.field(factory=dict)
    source: str = ""
    namespace: str | None = None
    layers: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class PortableContainer:
    """A container checkpoint as any runc-based runtime can restore it (:func:`describe`).

    Attributes:
        checkpoint: The artifact.
        source: The runtime that made it.
        name: The checkpointed container's name (a restore's default name).
        config: Its OCI config without the source runtime's mounts, hooks and cgroup path,
            its root ``rootfs`` (still untrusted: the target confines it).
        runtime_mounts: The source runtime's mounts the target must give equivalents of.
        image: Its image, when it came from a store (None for plain runc).
        config_member: The artifact's member holding the recorded config.
        unmasked: What the source runtime's defaults leave open under /proc and /sys
            that the others close (the container had it, and its CRIU images still do:
            a restore elsewhere grants it).
    """

    checkpoint: Checkpoint
    source: str
    name: str
    config: Mapping[str, Any]
    runtime_mounts: tuple[RuntimeMount, ...]
    image: ImageFacts | None
    config_member: str
    unmasked: tuple[str, ...] = ()

    @property
    def process(self) -> Mapping[str, Any]:
        """The config's ``process`` (args, env, cwd, user)."""
        process: Mapping[str, Any] = self.config.get("process") or {}
        return process

    @property
    def hostname(self) -> str:
        """The container's hostname (its config's, else its name)."""
        return str(self.config.get("hostname") or self.name)

    def needs(self, destination: str) -> bool:
        """True when the source runtime made a mount at ``destination``."""
        return any(m.destination == destination for m in self.runtime_mounts)

    def config_for(self, mounts: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """A copy of :attr:`config` with ``mounts`` (the target's equivalents) added."""
        config: dict[str, Any] = json.loads(json.dumps(thaw(self.config)))
        config["mounts"] = [*config.get("mounts", []), *(dict(m) for m in mounts)]
        return config

    def config_bytes(self, mounts: Iterable[Mapping[str, Any]] = ()) -> bytes:
        """:meth:`config_for` as the JSON a runtime reads."""
        return json.dumps(self.config_for(mounts)).encode()


def _runtime_hook(hook: Any) -> bool:
    args = hook.get("args") if isinstance(hook, Mapping) else None
    return isinstance(args, list) and bool(_RUNTIME_HOOK_ARGS & {str(a) for a in args})


def neutral_config(raw: bytes) -> tuple[dict[str, Any], tuple[RuntimeMount, ...]]:
    """A runc ``config.json`` without what its runtime added: the runtime's bind mounts
    (returned as :class:`RuntimeMount`), its networking hooks, its cgroup path; the root
    is ``rootfs`` (the bundle's or the target runtime's).

    Raises:
        UnsafeArtifact: ``raw`` is not an OCI config.
    """
    try:
        config: dict[str, Any] = json.loads(raw)
        kept, made = [], []
        for m in config.get("mounts") or []:
            destination = os.path.normpath(str(m.get("destination") or ""))
            kind = RUNTIME_FILES.get(destination)
            if kind is not None and is_bind(m):
                options = tuple(str(o) for o in m.get("options") or () if o == "ro")
                made.append(RuntimeMount(destination=destination, kind=kind, options=options))
            else:
                kept.append(m)
        config["mounts"] = kept
        hooks = config.get("hooks")
        if isinstance(hooks, dict):
            for kind, listed in list(hooks.items()):
                if isinstance(listed, list):
                    hooks[kind] = [h for h in listed if not _runtime_hook(h)]
            if not any(hooks.values()):
                config.pop("hooks")
        config["root"] = {**(config.get("root") or {}), "path": "rootfs"}
        linux = config.get("linux")
        if isinstance(linux, dict):
            linux.pop("cgroupsPath", None)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnsafeArtifact(
            f"the checkpoint's config.json is not an OCI config ({exc}), so nothing was "
            "restored; do not use this checkpoint"
        ) from None
    return config, tuple(made)


def describe(
    ckpt: Checkpoint, *, name: str, image: ImageFacts | None, source: str
) -> PortableContainer:
    """``ckpt`` (a runc-based runtime's container checkpoint) as a :class:`PortableContainer`.

    Args:
        name: The checkpointed container's name, as its runtime names it.
        image: Its image as the source runtime recorded it.
        source: The runtime that made it.

    Raises:
        UnsafeArtifact: The config member is missing or not an OCI config.
    """
    info = ckpt.manifest.workload.get("container") or {}
    members = [m.name for m in ckpt.manifest.members]
    config_member = confine.check_member(
        info.get("config"), members, what="container.config", default="container/config.json"
    )
    config, made = neutral_config(ckpt.read_member(config_member))
    return PortableContainer(
        checkpoint=ckpt,
        source=source,
        name=name,
        config=config,
        runtime_mounts=made,
        image=image,
        config_member=config_member,
    )


# --- the files a restore makes for the runtime's mounts ----------------------------------

#: The directory of a bundle (a restore into runc) holding the files for another
#: runtime's mounts; removed with the bundle.
BUNDLE_FILES = "runtime-files"


def for_bundle(raw: bytes, bundle: Path) -> tuple[bytes, tuple[RuntimeMount, ...]]:
    """Another runtime's ``config.json`` for a runc bundle: :func:`neutral_config`, with
    the runtime's mounts bound from files the bundle will hold (``BUNDLE/runtime-files``,
    made by :func:`make_files` when the bundle is). Returns the config and those mounts."""
    config, made = neutral_config(raw)
    config["mounts"] = [*config["mounts"], *files_binds(made, bundle / BUNDLE_FILES)]
    return json.dumps(config).encode(), made


def files_binds(mounts: Sequence[RuntimeMount], files: Path) -> list[dict[str, Any]]:
    """Bind mounts of the files :func:`make_files` makes in ``files``, one per mount."""
    return [
        {
            "destination": m.destination,
            "type": "bind",
            "source": os.fspath(files / m.slot),
            "options": ["rbind", "rprivate", *m.options],
        }
        for m in mounts
    ]


def new_files_dir(runtime: str, name: str) -> Path:
    """A fresh files directory under :data:`FILES_ROOT` for container ``name``.

    The name may be the artifact's (a restore without ``name=``), so it only labels the
    directory: what is not a letter, digit, ``_``, ``.`` or ``-`` becomes ``-``, and the
    directory is a child of :data:`FILES_ROOT` whatever the name says."""
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:64].strip(".-") or "x"
    return FILES_ROOT / f"{runtime}-{label}-{secrets.token_hex(4)}"


def make_files(files: Path, mounts: Sequence[RuntimeMount], *, hostname: str) -> Path:
    """Make what each of the source runtime's ``mounts`` becomes, in the new directory
    ``files`` (root-only; the files inside are the container's to read): ``/etc/hosts``
    naming localhost and the hostname, ``/etc/hostname``, the host's ``resolv.conf``
    (as runtimes give a container), empty files, empty directories and a fresh tmpfs for
    ``/dev/shm``. Undone (:func:`remove_files`) if anything fails."""
    files.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.mkdir(mode=0o711)
    with contextlib.ExitStack() as undo:
        undo.callback(remove_files, files)
        (files / FILES_MARKER).write_text(json.dumps({"hostname": hostname}))
        for m in mounts:
            path = files / m.slot
            if m.kind in ("dir", "tmpfs"):
                path.mkdir(mode=0o755)
                if m.kind == "tmpfs":
                    mount("shm", path, "tmpfs", f"mode=1777,size={SHM_SIZE}")
                continue
            if m.kind == "hosts":
                text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                text += f"127.0.1.1\t{hostname}\n"
            elif m.kind == "hostname":
                text = f"{hostname}\n"
            elif m.kind == "resolv.conf":
                try:
                    text = Path("/etc/resolv.conf").read_text()
                except OSError:
                    text = ""
            else:
                text = ""
            path.write_text(text)
            path.chmod(0o644)
        undo.pop_all()
    logger.debug("files for %s made in %s", ", ".join(m.destination for m in mounts), files)
    return files


def remove_files(files: Path) -> None:
    """Remove a files directory :func:`make_files` made (its marker says so), unmounting
    what is mounted in it first; anything else is left alone."""
    if not (files / FILES_MARKER).is_file():
        return
    for entry in sorted(mountinfo(), key=lambda e: -len(str(e.mountpoint))):
        if str(entry.mountpoint).startswith(f"{files}/"):
            with contextlib.suppress(OSError):
                while is_mountpoint(entry.mountpoint):
                    umount(entry.mountpoint, detach=True)
    shutil.rmtree(files, ignore_errors=True)


def with_defaults(grants: confine.Grants | None, desc: PortableContainer) -> confine.Grants:
    """``grants`` plus what the source runtime's defaults left open (:attr:`unmasked
    <PortableContainer.unmasked>`)."""
    g = grants or confine.Grants()
    return attrs.evolve(g, unmasked=g.unmasked | set(desc.unmasked))


def remove_labelled(labels: Mapping[str, str]) -> None:
    """Remove the files directory a restored container's ``labels`` name, if it is one
    of :data:`FILES_ROOT`'s (a label is anyone's to set: nothing else is touched)."""
    named = labels.get(FILES_LABEL)
    if not named:
        return
    path = Path(os.path.normpath(named))
    if path.parent == FILES_ROOT:
        remove_files(path)


def drop_root_slavery(images: Path) -> None:
    """Make the container's root mount in CRIU's unpacked ``images`` no slave of a peer
    group outside the container (runc made it a slave of the source host's mount its
    rootfs was on). That group is the source host's; CRIU restores such a slavery by
    copying it from the root runc prepares, which fails (EINVAL) where that root is
    not shared, as under containerd's shim and podman's conmon. The restored root is
    then private."""
    from cedana.criu import rewrite_image

    def change(image: dict[str, Any]) -> bool:
        entries = image.get("entries") or []
        own = {e.get("shared_id") for e in entries if e.get("shared_id")}
        changed = False
        for e in entries:
            master = e.get("master_id")
            if e.get("mountpoint") == "/" and master and master not in own:
                e.pop("master_id")
                changed = True
        return changed

    for table in sorted(images.glob("mountpoints-*.img")):
        if rewrite_image(table, change):
            logger.debug("%s: the root is no slave of the source host's mounts", table.name)


def _root_pid(images: Path) -> int:
    from cedana.criu import load_image

    return int(load_image(images / "pstree.img")["entries"][0]["pid"])


def set_root_mode(images: Path, mode: int) -> None:
    """Record ``mode`` as the container's root directory's in CRIU's unpacked ``images``:
    CRIU refuses to restore a root whose mode differs from the one it dumped, and a
    target store may make a new container's root with another mode (containers/storage
    makes it like the image's top layer)."""
    from cedana.criu import load_image, rewrite_image

    root_id = load_image(images / f"fs-{_root_pid(images)}.img")["entries"][0].get("root_id")

    def change(image: dict[str, Any]) -> bool:
        regs = [e.get("reg") or {} for e in image.get("entries") or []]
        root = next((r for r in regs if r.get("id") == root_id), None)
        if root is None:
            return False
        changed = False
        for reg in regs:  # every process's root and cwd there: "/" of the root mount
            same = reg.get("name") == "/" and reg.get("mnt_id") == root.get("mnt_id")
            if same and "mode" in reg and int(reg["mode"]) & 0o7777 != mode:
                reg["mode"] = (int(reg["mode"]) & ~0o7777) | (mode & 0o7777)
                changed = True
        return changed

    if rewrite_image(images / "files.img", change):
        logger.debug("%s: the root's mode is the target's, %o", images, mode)


def drop_mounts(images: Path, destinations: Iterable[str]) -> None:
    """Take the external mounts at ``destinations`` (files the source runtime bound in,
    which the target does not make) out of the container's mount table in CRIU's
    unpacked ``images``: CRIU then leaves the image's own file there.

    Raises:
        ContainerError: A process holds a file of such a mount open (CRIU could not
            restore it without the mount).
    """
    from cedana.criu import load_image, rewrite_image
    from cedana.errors import ContainerError

    wanted = set(destinations)
    if not wanted:
        return
    mnt_ns = load_image(images / f"ids-{_root_pid(images)}.img")["entries"][0].get("mnt_ns_id")
    table = images / f"mountpoints-{mnt_ns}.img"
    dropped: dict[int, str] = {}

    def change(image: dict[str, Any]) -> bool:
        kept = []
        for entry in image.get("entries") or []:
            where = str(entry.get("mountpoint") or "")
            if where in wanted and (entry.get("ext_key") or entry.get("ext_mount")):
                dropped[int(entry.get("mnt_id") or 0)] = where
                continue
            kept.append(entry)
        image["entries"] = kept
        return bool(dropped)

    if not rewrite_image(table, change):
        return
    for entry in load_image(images / "files.img")["entries"]:
        mnt_id = (entry.get("reg") or {}).get("mnt_id")
        if mnt_id in dropped:
            raise ContainerError(
                f"a process of the container holds {dropped[mnt_id]} open, which its runtime "
                "bound in and the target runtime does not make, so it cannot be restored "
                "there; restore it into runc, or into a runtime that makes it"
            )
    logger.debug("%s: mounts %s left to the image", table.name, ", ".join(dropped.values()))


# --- the target's view of the checkpoint -------------------------------------------------


@attrs.frozen
class _TranslatedArtifact:
    """An artifact seen with another manifest: the target runtime's facts in place of the
    source's, and members cedana derived from the verified ones beside the real ones."""

    artifact: Any
    manifest: Manifest
    derived: Mapping[str, bytes]
    after_extract: Callable[[Path], None] | None = None

    @property
    def path(self) -> Path:
        path: Path = self.artifact.path
        return path

    @property
    def signature(self) -> Any:
        return self.artifact.signature

    def verify(self) -> None:
        self.artifact.verify()

    def extract(self, dest: Path, *, only: Callable[[str], bool] | None = None) -> None:
        self.artifact.extract(dest, only=only)
        if self.after_extract is not None:
            try:
                self.after_extract(dest)
            except (OSError, KeyError, IndexError, TypeError, ValueError) as exc:
                raise confine.refused(
                    "CRIU images",
                    f"cannot be adapted to {self.manifest.runtime} ({exc})",
                    "do not use this checkpoint",
                ) from None

    def read_member(self, name: str) -> bytes:
        if name in self.derived:
            return self.derived[name]
        data: bytes = self.artifact.read_member(name)
        return data


def translated(
    ckpt: Checkpoint,
    *,
    runtime: str,
    workload: Mapping[str, Any],
    derived: Mapping[str, bytes] | None = None,
    after_extract: Callable[[Path], None] | None = None,
) -> Checkpoint:
    """``ckpt`` as the target ``runtime``'s restore reads its own checkpoints: the manifest's
    runtime and ``workload`` replaced (facts cedana derived from the verified artifact),
    ``derived`` members (name -> bytes) readable beside the artifact's. Extraction, the
    signature and verification are the artifact's own; ``after_extract`` adapts CRIU's
    images to the target once they are unpacked (before they are checked)."""
    derived = dict(derived or {})
    members = [
        *ckpt.manifest.members,
        *(
            Member(name=n, size=len(d), sha256=hashlib.sha256(d).hexdigest())
            for n, d in derived.items()
        ),
    ]
    manifest = attrs.evolve(
        ckpt.manifest,
        runtime=runtime,
        workload=workload,
        members=tuple(sorted(members, key=lambda m: m.name)),
    )
    view = _TranslatedArtifact(ckpt._artifact, manifest, derived, after_extract)
    return Checkpoint(artifact=view, trust=ckpt.signer)
