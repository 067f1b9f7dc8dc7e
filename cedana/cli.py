"""The ``cedana`` command: parse, call the public API, print.

Tables for people, ``--json`` (one JSON object on stdout) for tools. Errors are
one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import cedana
from cedana.artifact import signing
from cedana.container.runc import container_lines, container_summary
from cedana.errors import CedanaError

__all__ = ["main"]


def _emit(data: dict[str, Any], as_json: bool, text: str) -> None:
    print(json.dumps(data, sort_keys=True) if as_json else text)


def _parse_target(target: str) -> tuple[str, str]:
    kind, sep, ident = target.partition(":")
    if not sep:
        kind, ident = "process", target
    if kind == "process":
        if not ident.isdigit():
            raise CedanaError(f"bad target {target!r}: expected PID or process:PID")
    elif kind == "runc":
        if not ident:
            raise CedanaError(f"bad target {target!r}: expected runc:ID")
    elif kind == "containerd":
        if not ident.rpartition("/")[2]:
            raise CedanaError(f"bad target {target!r}: expected containerd:[NAMESPACE/]ID")
    elif kind in ("podman", "docker", "crio"):
        raise CedanaError(f"{kind} containers are not supported by this cedana yet")
    else:
        raise CedanaError(
            f"bad target {target!r}: expected PID, process:PID, runc:ID, containerd:[NS/]ID, "
            "podman:NAME, docker:NAME or crio:ID"
        )
    return kind, ident


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
    kind, ident = _parse_target(args.target)
    target: cedana.Process | cedana.RuncContainer | cedana.ContainerdContainer
    if kind == "runc":
        target = cedana.RuncContainer(ident, root=args.root or None)
    elif kind == "containerd":
        namespace, _, cid = ident.rpartition("/")
        target = cedana.ContainerdContainer(
            cid,
            namespace=namespace or None,
            address=args.address or None,
            runc_root=args.root or None,
        )
    else:
        target = cedana.Process(int(ident))
    ckpt = target.checkpoint(
        args.output,
        leave_running=args.leave_running,
        tcp_established=args.tcp_established,
        file_locks=args.file_locks,
        compress=args.compress,
        level=args.level,
        overwrite=args.overwrite,
        signing_key=args.signing_key or None,
    )
    summary = ckpt.summary()
    what = f"{kind} container {ident}" if kind != "process" else f"pid {ident}"
    text = f"checkpointed {what} to {ckpt.path} ({summary['size']} bytes)"
    _emit(summary, args.json, text)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    namespace, _, name = (args.name or "").rpartition("/")  # containerd: [NAMESPACE/]NAME
    restored = cedana.restore(
        args.file,
        into=args.into,
        tcp_established=args.tcp_established,
        name=name or None,
        namespace=namespace or None,
        address=args.address or None,
        bundle=args.bundle or None,
        root=args.root or None,
        trust="any" if args.insecure_accept_unsigned else "trusted",
    )
    data: dict[str, Any] = {"pid": restored.pid}
    text = f"restored {args.file}: pid {restored.pid}"
    if isinstance(restored, cedana.RuncContainer):
        data.update(runtime="runc", name=restored.id)
        text = f"restored {args.file}: runc container {restored.id}, pid {restored.pid}"
    elif isinstance(restored, cedana.ContainerdContainer):
        data.update(runtime="containerd", name=restored.id, namespace=restored.namespace)
        text = (
            f"restored {args.file}: containerd container {restored.namespace}/{restored.id}, "
            f"pid {restored.pid}"
        )
        restored.close()
    _emit(data, args.json, text)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    # Inspecting runs and restores nothing, so it shows who signed rather than refusing.
    ckpt = cedana.open(args.file, trust="any")
    inspection = ckpt.inspect()
    s = ckpt.summary()
    data = {"checkpoint": s, "images": inspection.to_dict()}
    head = (
        f"{s['path']}: {s['kind']}{' (' + s['runtime'] + ')' if s['runtime'] else ''}, "
        f"created {s['created']}, kernel {s['host']['kernel']}, CRIU {s['host']['criu']}\n"
        f"signed by {ckpt.signer.describe()}"
    )
    container = container_summary(ckpt.manifest)
    if container is not None:
        data["container"] = container
        head += "\n" + "\n".join(f"{k:10}{v}" for k, v in container_lines(container))
    _emit(data, args.json, head + "\n\n" + inspection.format_text())
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


_INSECURE = "accept a checkpoint that is unsigned or signed by a key this host does not trust"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cedana", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    p.add_argument("--version", action="version", version=f"cedana {cedana.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="report CRIU and kernel support")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)

    c = sub.add_parser("checkpoint", help="checkpoint a workload to a file")
    c.add_argument("target", help="PID | process:PID | runc:ID | containerd:[NAMESPACE/]ID")
    c.add_argument("-o", "--output", required=True, help="artifact path")
    c.add_argument("--leave-running", action="store_true")
    c.add_argument("--tcp-established", action="store_true")
    c.add_argument("--file-locks", action="store_true")
    c.add_argument("--compress", choices=["zstd", "none"], default="zstd")
    c.add_argument("--level", type=int, default=3, help="zstd level (default 3)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    c.add_argument("--root", help="runc state root (containers; containerd: the shim's)")
    c.add_argument("--address", help="runtime API socket (containerd)")
    c.add_argument("--signing-key", help="Ed25519 private key (PEM); default: this host's")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_checkpoint)

    c = sub.add_parser("restore", help="restore a checkpoint")
    c.add_argument("file")
    c.add_argument("--into", help="runtime to restore into")
    c.add_argument("--name", help="new container name (containerd: [NAMESPACE/]NAME)")
    c.add_argument("--bundle", help="runc bundle directory")
    c.add_argument("--root", help="runc state root")
    c.add_argument("--address", help="runtime API socket")
    c.add_argument(
        "--tcp-established",
        action="store_true",
        default=None,
        help="restore established TCP connections (default: as checkpointed)",
    )
    c.add_argument("--insecure-accept-unsigned", action="store_true", help=_INSECURE)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_restore)

    c = sub.add_parser("inspect", help="show what a checkpoint holds (no root needed)")
    c.add_argument("file")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_inspect)

    c = sub.add_parser("key", help="show this host's signing key, or trust another host's")
    c.add_argument("action", choices=["show", "trust"], help="show: print the public key (PEM)")
    c.add_argument("file", nargs="?", help="trust: the other host's public key (- for stdin)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_key)

    c = sub.add_parser("demo", help="spawn a counter, checkpoint it, restore it, show it went on")
    c.add_argument("-o", "--output", help="where to write the checkpoint (default: a temp dir)")
    c.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "key" and (args.file is None) != (args.action == "show"):
        parser.error("`cedana key trust` takes the key FILE; `cedana key show` takes none")
    try:
        status: int = args.func(args)
    except (CedanaError, OSError) as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        where = getattr(exc, "log_path", None)
        print(
            f"cedana: error: {lines[0]}" + (f" (CRIU log: {where})" if where else ""),
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("cedana: interrupted", file=sys.stderr)
        return 130
    return status
