"""The ``cedana`` command: parse, call the public API, print.

Tables for people, ``--json`` (one JSON object on stdout) for tools. Errors are
one line on stderr (with ``--json``, a JSON object on stdout) and a non-zero exit
status. :func:`build_parser` is the whole command line; the reference page in the
docs is generated from it. ``-v`` is the only place that configures logging.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import cedana
from cedana import registry
from cedana.artifact import signing
from cedana.container.runc import container_lines, container_summary
from cedana.errors import CedanaError
from cedana.progress import TerminalBar

__all__ = ["build_parser", "main"]


def _emit(data: dict[str, Any], as_json: bool, text: str) -> None:
    print(json.dumps(data, sort_keys=True) if as_json else text)


def cmd_check(args: argparse.Namespace) -> int:
    report = cedana.check()
    data = report.to_dict()
    features = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in sorted(report.features.items()))
    text = "\n".join(
        [
            f"CRIU      {report.version_text} ({report.binary})",
            f"kernel    {report.kernel}",
            f"check     {'ok' if report.check_ok else 'FAILED: ' + report.check_error}",
            f"features  {features or 'unknown (needs root)'}",
            f"usable    {'yes' if report.usable else 'no'}",
        ]
    )
    _emit(data, args.json, text)
    return 0 if report.usable else 1


def cmd_checkpoint(args: argparse.Namespace) -> int:
    runtime, keywords = registry.parse_target(args.target)
    for flag, keyword in runtime.flags.items():
        keywords[keyword] = getattr(args, flag, None) or None
    target = runtime.cls(**keywords)
    ckpt = target.checkpoint(
        args.output,
        leave_running=args.leave_running,
        tcp_established=args.tcp_established,
        file_locks=args.file_locks,
        rootfs_only=args.rootfs_only or None,
        shift_owners=args.shift_owners or None,
        compress=args.compress,
        level=args.level,
        overwrite=args.overwrite,
        signing_key=args.signing_key or None,
        progress=_progress(args),
    )
    _close(target)
    summary = ckpt.summary()
    ident = args.target.partition(":")[2] or args.target
    what = f"pid {ident}" if runtime.bare else f"{runtime.name} {runtime.noun} {ident}"
    text = f"checkpointed {what} to {ckpt.path} ({summary['size']} bytes)"
    _emit(summary, args.json, text)
    return 0


def _registry_options(args: argparse.Namespace) -> Any:
    """``--tls``, ``--ca-file``, ``--username`` / ``--password-stdin`` as RegistryOptions."""
    from cedana.oci import RegistryOptions

    password = None
    if args.password_stdin:
        if not args.username:
            raise cedana.InvalidOption("--password-stdin needs --username")
        password = sys.stdin.readline().rstrip("\r\n")
    return RegistryOptions(
        tls=args.tls, ca_file=args.ca_file, username=args.username, password=password
    )


def cmd_push(args: argparse.Namespace) -> int:
    digest = cedana.push(
        args.file, args.reference, registry=_registry_options(args), overwrite=args.overwrite
    )
    data = {"reference": args.reference, "digest": digest}
    _emit(data, args.json, f"pushed {args.file} to {args.reference} ({digest})")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    ckpt = cedana.pull(
        args.reference, args.output, registry=_registry_options(args), overwrite=args.overwrite
    )
    data = {"reference": args.reference, **ckpt.summary()}
    text = f"pulled {args.reference} to {ckpt.path} ({data['size']} bytes, {ckpt.kind})"
    _emit(data, args.json, text)
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    digest = cedana.commit(
        args.file,
        args.to,
        base=args.base or None,
        registry=_registry_options(args),
        compression=args.compress,
        overwrite=args.overwrite,
        address=args.address or None,
        trust="any" if args.insecure_accept_unsigned else "trusted",
    )
    data = {"reference": args.to, "digest": digest}
    _emit(data, args.json, f"committed {args.file} as {args.to} ({digest})")
    return 0


@contextlib.contextmanager
def _local_file(args: argparse.Namespace) -> Iterator[str]:
    """``args.file``, or for a reference (docker://, oci:, oci-archive:) the checkpoint
    pulled from it (digests checked) into a temp file, removed after."""
    from cedana.images import is_reference, pulled

    if not is_reference(args.file):
        yield args.file
        return
    with pulled(args.file, registry=_registry_options(args)) as local:
        yield str(local)


def cmd_restore(args: argparse.Namespace) -> int:
    with _local_file(args) as path:
        return _restore(args, path)


def _restore(args: argparse.Namespace, path: str) -> int:
    namespace, _, name = (args.name or "").rpartition("/")  # [NAMESPACE/]NAME
    restored = cedana.restore(
        path,
        into=args.into,
        tcp_established=args.tcp_established,
        name=name or None,
        namespace=namespace or None,
        address=args.address or None,
        source_address=args.source_address or None,
        bundle=args.bundle or None,
        root=args.root or None,
        pid_namespace=args.pid_namespace,
        trust="any" if args.insecure_accept_unsigned else "trusted",
        progress=_progress(args),
    )
    data: dict[str, Any] = {"pid": restored.pid}
    text = f"restored {args.file}: pid {restored.pid}"
    if isinstance(restored, cedana.Process) and restored.namespace is not None:
        data["ns_pid"] = restored.ns_pid
        text += f" (pid {restored.ns_pid} in a new pid namespace)"
    runtime = next((r for r in registry.entries() if type(restored) is r.cls), None)
    facts = dict(runtime.summary(restored)) if runtime is not None else {}
    if runtime is not None and facts:
        data.update(runtime=runtime.name, **facts)
        where = "/".join(str(facts[k]) for k in ("namespace", "name") if k in facts)
        text = f"restored {args.file}: {runtime.name} {runtime.noun} {where}, pid {restored.pid}"
    _close(restored)
    _emit(data, args.json, text)
    return 0


def _progress(args: argparse.Namespace) -> TerminalBar | None:
    """A bar on stderr with --progress, or by default when stderr is a terminal (and no
    --json or -v output shares it)."""
    wanted = args.progress
    if wanted is None:
        wanted = sys.stderr.isatty() and not args.json and not getattr(args, "verbose", False)
    return TerminalBar() if wanted else None


def _close(workload: Any) -> None:
    """Close a workload object that holds a connection (a runtime's API client)."""
    close = getattr(workload, "close", None)
    if close is not None:
        close()


def cmd_inspect(args: argparse.Namespace) -> int:
    with _local_file(args) as path:
        return _inspect(args, path)


def _inspect(args: argparse.Namespace, path: str) -> int:
    # Inspecting runs and restores nothing, so it shows who signed rather than refusing.
    ckpt = cedana.open(path, trust="any")
    if ckpt.kind == "vm":  # a VM's state, not CRIU images: what the manifest says of it
        return _inspect_vm(ckpt, args)
    rootfs_only = ckpt.kind == "rootfs"  # no CRIU images to decode
    inspection = None if rootfs_only else ckpt.inspect()
    s = ckpt.summary()
    if path != args.file:
        s["path"] = args.file  # the reference, not the temp file it was pulled to
    data: dict[str, Any] = {"checkpoint": s, "images": inspection and inspection.to_dict()}
    head = (
        f"{s['path']}: {s['kind']}{' (' + s['runtime'] + ')' if s['runtime'] else ''}, "
        f"created {s['created']}, kernel {s['host']['kernel']}, CRIU {s['host']['criu']}\n"
        f"signed by {ckpt.signer.describe()}"
    )
    container = container_summary(ckpt.manifest)
    if container is not None:
        data["container"] = container
        head += "\n" + "\n".join(f"{k:10}{v}" for k, v in container_lines(container))
    body = "" if inspection is None else "\n\n" + inspection.format_text()
    _emit(data, args.json, head + body)
    return 0


def _inspect_vm(ckpt: cedana.Checkpoint, args: argparse.Namespace) -> int:
    from cedana.runtimes.kata import vm_lines, vm_summary

    s = ckpt.summary()
    vm = vm_summary(ckpt.manifest)
    head = (
        f"{s['path']}: vm ({s['runtime']}), created {s['created']}, host kernel "
        f"{s['host']['kernel']}\nsigned by {ckpt.signer.describe()}"
    )
    text = head + "\n" + "\n".join(f"{k:10}{v}" for k, v in vm_lines(vm))
    _emit({"checkpoint": s, "vm": vm}, args.json, text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if (args.format == "oci-image") != (args.to is not None) or (args.output is None) == (
        args.to is None
    ):
        raise cedana.InvalidOption(
            "--format oci-image writes to --to REF; the other formats write a file (-o OUT)"
        )
    out = cedana.export(
        args.file,
        args.output,
        format=args.format,
        to=args.to,
        archive=args.archive,
        name=args.name or None,
        compress=args.compress,
        trust="any" if args.insecure_accept_unsigned else "trusted",
    )
    if isinstance(out, str):  # an image's digest
        data = {"to": args.to, "format": args.format, "digest": out}
        text = (
            f"exported {args.file} to {args.to} ({out}): a checkpoint image for CRI-O, containerd"
        )
        _emit(data, args.json, text)
        return 0
    size = out.stat().st_size
    data = {"path": str(out), "format": args.format, "size": size}
    reader = {
        "podman": "podman container restore --import",
        "kubernetes": "CRI-O and checkpointctl (the kubelet's checkpoint archive)",
        "containerd": "containerd and checkpointctl (the kubelet's checkpoint archive)",
    }[args.format]
    text = f"exported {args.file} to {out} ({size} bytes) for {reader}"
    _emit(data, args.json, text)
    return 0


def cmd_key(args: argparse.Namespace) -> int:
    if args.action == "trust":
        pem = sys.stdin.buffer.read() if args.file == "-" else None
        key, where = signing.trust_key(pem if pem is not None else args.file)
        data = {"key_id": key.key_id, "path": str(where)}
        _emit(data, args.json, f"trusting key {key.key_id} (saved as {where})")
        return 0
    host = signing.host_key()
    pem = host.public_key.to_pem().decode("ascii")
    data = {"key_id": host.public_key.key_id, "public_key": pem, "path": str(host.path)}
    _emit(data, args.json, pem.rstrip("\n"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cedana.demo import run_demo

    return run_demo(output=args.output)


_DESCRIPTION = """\
Checkpoint a live process tree or container to one file and restore it: the
workload goes on where it was. Also says what CRIU can do on this machine and
shows what a checkpoint holds.
"""

#: The help's epilog; plain text that is also reStructuredText (docs/cli.rst renders it).
_TARGETS = registry.targets_help()

_EPILOG = (
    _TARGETS
    + """
Examples::

  cedana check
  cedana checkpoint 1234 -o job.tar.zst --leave-running
  cedana -v checkpoint runc:web -o web.tar.zst
  cedana inspect job.tar.zst
  cedana restore job.tar.zst --json
  cedana restore web.tar.zst --into containerd --name default/web2
  cedana export web.tar.zst --format podman -o web.podman.tar.zst
  cedana commit web.tar.zst --to oci-archive:web.tar:localhost/web:ckpt
  cedana push web.tar.zst docker://localhost:5000/ckpt/web:v1
  cedana restore docker://localhost:5000/ckpt/web:v1 --name web2
  cedana export web.tar.zst --format kubernetes -o checkpoint-web.tar
  cedana export web.tar.zst --format oci-image --to docker://localhost:5000/web:ckpt

Exit status 0 on success; 1 on an error, said in one line on stderr (with
--json: one JSON object on stdout, {"error": ..., "type": ...}); 130 when
interrupted. "cedana COMMAND --help" shows each command's options.
"""
)

#: Every runtime ``restore --into`` takes: the registry's that some checkpoint restores into.
_RESTORE_TARGETS = tuple(
    r.name for r in registry.entries() if any(r.name in e.restores_into for e in registry.entries())
)


def _common(c: argparse.ArgumentParser) -> None:
    """Options every subcommand takes after its name too (``cedana checkpoint -v ...``)."""
    c.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,  # so that ``cedana -v checkpoint`` is not reset here
        help="show each step on stderr with its time since start",
    )


def _progress_flag(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )


def _json(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout instead of text (errors too)",
    )


_INSECURE = "accept a checkpoint that is unsigned or signed by a key this host does not trust"


def _registry_flags(c: argparse.ArgumentParser) -> None:
    """How to reach a registry (docker://HOST/REPO:TAG references)."""
    g = c.add_argument_group("registry (docker:// references)")
    g.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="speak HTTPS (--tls) or plain HTTP (--no-tls) to the registry (default: plain "
        "HTTP for localhost / 127.*, HTTPS otherwise)",
    )
    g.add_argument(
        "--ca-file", metavar="PEM", help="verify the registry's certificate with this CA bundle"
    )
    g.add_argument(
        "--username",
        help="registry user (default: the credentials podman login / docker login saved)",
    )
    g.add_argument(
        "--password-stdin", action="store_true", help="read the registry password from stdin"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``cedana`` command's parser, one block per subcommand.

    The reference page (docs/cli.rst) is generated from it, so it cannot drift.
    """
    p = argparse.ArgumentParser(
        prog="cedana",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"cedana {cedana.__version__}")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show each step on stderr with its time since start (before or after COMMAND)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="report CRIU and kernel support")
    _json(c)
    _common(c)
    c.set_defaults(func=cmd_check)

    c = sub.add_parser(
        "checkpoint",
        help="checkpoint a workload to a file",
        description="Checkpoint a process tree or a container to one file (mode 0600).",
        epilog=_TARGETS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "target",
        metavar="TARGET",
        help="PID | process:PID | runc:ID | containerd:[NAMESPACE/]ID",
    )
    c.add_argument("-o", "--output", required=True, metavar="FILE", help="artifact path")
    c.add_argument(
        "--leave-running",
        action="store_true",
        help="keep the workload running after the dump (default: it is stopped once the file "
        "is written and verified)",
    )
    c.add_argument(
        "--tcp-established",
        action="store_true",
        help="dump established TCP connections with TCP repair (default: refuse them)",
    )
    c.add_argument("--file-locks", action="store_true", help="dump held file locks too")
    c.add_argument(
        "--rootfs-only",
        action="store_true",
        help="a container's root filesystem changes only, no CRIU: it keeps running (frozen "
        "while they are read) and restores as a new container started fresh",
    )
    c.add_argument(
        "--shift-owners",
        action="store_true",
        help="with --rootfs-only: record owners as the container's user namespace sees them",
    )
    c.add_argument(
        "--compress",
        choices=["zstd", "none"],
        default="zstd",
        help="zstd (a .tar.zst, the default) or none (a plain tar)",
    )
    c.add_argument("--level", type=int, default=1, metavar="N", help="zstd level (default 1)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    c.add_argument(
        "--root",
        metavar="DIR",
        help="runc state root (runc: runc's default; containerd: the shim's)",
    )
    c.add_argument(
        "--address",
        metavar="SOCK",
        help="the runtime's API socket (containerd, docker, crio; default: the runtime's own)",
    )
    c.add_argument(
        "--signing-key", metavar="KEY", help="Ed25519 private key (PEM); default: this host's"
    )
    _progress_flag(c)
    _json(c)
    _common(c)
    c.set_defaults(func=cmd_checkpoint)

    c = sub.add_parser("restore", help="restore a checkpoint; the workload runs again")
    c.add_argument(
        "file",
        metavar="FILE",
        help="the artifact (file or directory), an archive of podman's, CRI-O's or "
        "containerd's, or where it was pushed: a checkpoint or checkpoint image at "
        "docker://HOST/REPO:TAG, oci:DIR[:NAME] or oci-archive:PATH[:NAME]",
    )
    c.add_argument(
        "--into",
        metavar="RUNTIME",
        help=f"restore into {', '.join(_RESTORE_TARGETS[:-1])} or {_RESTORE_TARGETS[-1]} "
        "(default: where it was checkpointed from; a containerd checkpoint also restores "
        "into runc)",
    )
    c.add_argument(
        "--name", help="new container name (containerd: [NAMESPACE/]NAME; default: the old one)"
    )
    c.add_argument("--bundle", metavar="DIR", help="runc bundle directory to make")
    c.add_argument(
        "--root", metavar="DIR", help="runc state root (default: the checkpointed container's)"
    )
    c.add_argument(
        "--address",
        metavar="SOCK",
        help="the runtime's API socket (containerd, docker; default: the runtime's own)",
    )
    c.add_argument(
        "--source-address",
        metavar="SOCK",
        help="into another runtime: the checkpointed runtime's API socket, to bring the image "
        "from (containerd, docker; default: the runtime's own)",
    )
    c.add_argument(
        "--tcp-established",
        action="store_true",
        default=None,
        help="restore established TCP connections (default: as checkpointed)",
    )
    c.add_argument(
        "--pid-namespace",
        choices=("current", "new", "auto"),
        help="where a process tree gets its original pids back: here (current), in a new "
        "pid namespace held by cedana's init (new), or in one only when a pid is taken "
        "(auto); default: new for a checkpoint taken in its own pid namespace, else current",
    )
    c.add_argument(
        "--new-pidns",
        dest="pid_namespace",
        action="store_const",
        const="new",
        help="same as --pid-namespace new",
    )
    c.add_argument("--insecure-accept-unsigned", action="store_true", help=_INSECURE)
    _registry_flags(c)
    _progress_flag(c)
    _json(c)
    _common(c)
    c.set_defaults(func=cmd_restore)

    c = sub.add_parser(
        "inspect",
        help="show what a checkpoint holds (no root needed for the artifact's owner)",
        description="Show the process tree, memory, open files and sockets of a checkpoint. "
        "PPID is each process's parent when it was checkpointed; the root's parent is outside "
        "the tree, so CRIU's images record 0 for it, and cedana shows the real one from the "
        "manifest (a container's init shows 0, its parent being outside its pid namespace).",
    )
    c.add_argument(
        "file",
        metavar="FILE",
        help="the artifact (file or directory), an archive of podman's, CRI-O's or "
        "containerd's, or a checkpoint or checkpoint image at docker://HOST/REPO:TAG, "
        "oci:DIR[:NAME] or oci-archive:PATH[:NAME] (pulled to a temp file, removed after)",
    )
    _registry_flags(c)
    _json(c)
    _common(c)
    c.set_defaults(func=cmd_inspect)

    c = sub.add_parser(
        "export",
        help="write a checkpoint in another tool's format (podman's, Kubernetes' archives)",
        description="Write a container checkpoint in another engine's format. podman: the "
        "archive that podman container restore --import takes (what podman container "
        "checkpoint --export writes), checked and confined as for a restore into podman, "
        "its image in this host's podman store. kubernetes: the uncompressed archive a "
        "CRI-O node writes for the kubelet's checkpoint API (checkpoint/, config.dump, "
        "spec.dump, rootfs-diff.tar + deleted.files, bind.mounts, stats-dump). containerd: "
        "containerd's flavour of it (status.dump, the rootfs changes as an OCI layer). "
        "checkpointctl show / inspect read all three. oci-image: Kubernetes' checkpoint "
        "image, the archive at / of one layer on scratch, annotated "
        "io.kubernetes.cri-o.annotations.checkpoint.name and org.criu.checkpoint.*, "
        "written to an OCI layout, an oci-archive or a registry.",
    )
    c.add_argument("file", metavar="FILE", help="the cedana checkpoint (or podman archive)")
    c.add_argument(
        "--format",
        required=True,
        choices=["podman", "kubernetes", "containerd", "oci-image"],
        help="podman: podman's import archive; kubernetes: CRI-O's checkpoint archive; "
        "containerd: containerd's; oci-image: Kubernetes' checkpoint image (--to)",
    )
    c.add_argument("-o", "--output", metavar="OUT", help="the archive to write")
    c.add_argument(
        "--to",
        metavar="REF",
        help="oci-image: where the image goes (oci-archive:PATH[:NAME], oci:DIR[:NAME], "
        "docker://HOST/REPO:TAG)",
    )
    c.add_argument(
        "--archive",
        choices=["kubernetes", "containerd", "podman"],
        default="kubernetes",
        help="oci-image: the archive in its layer (default kubernetes: CRI-O's; podman: "
        "podman's, for podman container restore IMAGE)",
    )
    c.add_argument(
        "--name", help="the container name podman restores it as (default: the checkpointed one)"
    )
    c.add_argument(
        "--compress",
        choices=["zstd", "none"],
        default="zstd",
        help="podman only: zstd (the default, as podman's --compress) or none (a plain tar)",
    )
    c.add_argument("--insecure-accept-unsigned", action="store_true", help=_INSECURE)
    _json(c)
    _common(c)
    c.set_defaults(func=cmd_export)

    c = sub.add_parser(
        "push",
        help="push a checkpoint, unchanged, to a registry as an OCI artifact",
        description="Push a checkpoint file (verified first) as an OCI artifact: its one layer "
        "is the file, its artifactType application/vnd.cedana.checkpoint.v1. Blobs the "
        "registry has are not sent again; the tag is written last.",
    )
    c.add_argument("file", metavar="FILE", help="the checkpoint (a .tar.zst or .tar file)")
    c.add_argument(
        "reference",
        metavar="REF",
        help="docker://HOST[:PORT]/REPO[:TAG], oci:DIR[:NAME] or oci-archive:PATH[:NAME]",
    )
    c.add_argument("--overwrite", action="store_true", help="replace an existing oci-archive")
    _registry_flags(c)
    _json(c)
    _common(c)
    c.set_defaults(func=cmd_push)

    c = sub.add_parser(
        "pull",
        help="pull a pushed checkpoint to a file (digest and members checked)",
        description="Pull a checkpoint pushed with cedana push. The layer's digest is checked "
        "as it arrives and the checkpoint verified before it is put at FILE (mode 0600); who "
        "signed it is checked when it is restored.",
    )
    c.add_argument("reference", metavar="REF", help="where it was pushed (docker://, oci:, ...)")
    c.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write")
    c.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    _registry_flags(c)
    _json(c)
    _common(c)
    c.set_defaults(func=cmd_pull)

    c = sub.add_parser(
        "commit",
        help="commit a container checkpoint's filesystem changes as an OCI image",
        description="Build an OCI image: the container's original image layers plus one "
        "layer with its root filesystem changes (OCI whiteouts), and write it to an OCI "
        "archive, an OCI layout directory or a registry. The original layers come from the "
        "runtime's store (podman, containerd, docker) or, for runc, the container's lower "
        "directories; --base names them instead, checked to be the image the changes were "
        "made on.",
    )
    c.add_argument("file", metavar="FILE", help="a container (or rootfs-only) checkpoint")
    c.add_argument(
        "--to",
        required=True,
        metavar="REF",
        help="oci-archive:PATH[:NAME], oci:DIR[:NAME] or docker://HOST[:PORT]/REPO[:TAG]",
    )
    c.add_argument("--base", metavar="REF", help="the original image (default: the runtime's)")
    c.add_argument(
        "--compress",
        choices=["gzip", "zstd"],
        default="gzip",
        help="the new layer's compression (default gzip, which every runtime reads)",
    )
    c.add_argument("--overwrite", action="store_true", help="replace an existing oci-archive")
    c.add_argument(
        "--address",
        metavar="SOCK",
        help="the API socket of the runtime the base image is read from (containerd, docker; "
        "default: the runtime's own; never the one the checkpoint records)",
    )
    c.add_argument("--insecure-accept-unsigned", action="store_true", help=_INSECURE)
    _registry_flags(c)
    _json(c)
    _common(c)
    c.set_defaults(func=cmd_commit)

    c = sub.add_parser("key", help="show this host's signing key, or trust another host's")
    c.add_argument("action", choices=["show", "trust"], help="show: print the public key (PEM)")
    c.add_argument(
        "file", nargs="?", metavar="FILE", help="trust: the other host's public key (- for stdin)"
    )
    _json(c)
    _common(c)
    c.set_defaults(func=cmd_key)

    c = sub.add_parser("demo", help="spawn a counter, checkpoint it, restore it, show it went on")
    c.add_argument(
        "-o", "--output", metavar="FILE", help="where to write the checkpoint (default: a temp dir)"
    )
    _common(c)
    c.set_defaults(func=cmd_demo)
    return p


class _StepFormatter(logging.Formatter):
    """``  0.123s cedana.process: message``: seconds since the command started."""

    def __init__(self, started: float) -> None:
        super().__init__()
        self._started = started

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.created - self._started:7.3f}s {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


@contextlib.contextmanager
def _verbose(started: float) -> Iterator[None]:
    """Show the library's DEBUG events on stderr while the command runs.

    The library never configures logging; only the command line does, and only with ``-v``.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_StepFormatter(started))
    log = logging.getLogger("cedana")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _fail(exc: BaseException, message: str, as_json: bool, line: str) -> None:
    """One line: with ``--json`` a JSON object on stdout, else ``line`` on stderr."""
    if as_json:
        print(json.dumps({"error": message, "type": type(exc).__name__}, sort_keys=True))
    else:
        print(line, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    started = time.time()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "key" and (args.file is None) != (args.action == "show"):
        parser.error("`cedana key trust` takes the key FILE; `cedana key show` takes none")
    as_json = bool(getattr(args, "json", False))
    try:
        with _verbose(started) if args.verbose else contextlib.nullcontext():
            status: int = args.func(args)
    except (CedanaError, OSError) as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        where = getattr(exc, "log_path", None)
        message = lines[0] + (f" (CRIU log: {where})" if where else "")
        _fail(exc, message, as_json, f"cedana: error: {message}")
        return 1
    except KeyboardInterrupt as exc:
        _fail(exc, "interrupted", as_json, "cedana: interrupted")
        return 130
    return status
