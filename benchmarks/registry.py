"""Pushing and pulling a checkpoint-sized blob through a local registry: cedana's OCI client
(cedana.oci over python-dxf) side by side with skopeo (containers/image, Go).

The blob is ``--mib`` MiB of random bytes (incompressible, as a zstd checkpoint is), the
one layer of an OCI artifact in an ``oci:`` layout. Each round and method pushes it to a
docker-registry (distribution 2.8) of its own, started on a free localhost port with empty
storage (so no push finds the blob there already, or mounts it from another repository),
then pulls it into a new layout: cedana with :func:`cedana.oci.push` /
:func:`cedana.oci.pull` (every pulled blob checked against its digest), skopeo with
``skopeo copy oci:... docker://...`` and back (which checks digests too). The registry
hashes every upload in both cases.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from functools import partial
from pathlib import Path

from benchmarks.common import MiB, arguments, run, scratch, table, timed
from cedana import oci
from cedana.oci import media


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _registry(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("docker-registry")
    if binary is None:
        raise SystemExit("benchmarks.registry: needs docker-registry (run scripts/provision)")
    port = _free_port()
    work.mkdir()
    (work / "storage").mkdir()
    config = work / "registry.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {work / 'storage'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(work / "registry.log", "wb")  # noqa: SIM115  (the registry's, closed by it)
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("benchmarks.registry: docker-registry did not start") from None
            time.sleep(0.1)
    return process, f"127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    p = arguments("registry", __doc__, mib=256)
    args = p.parse_args(argv)
    if shutil.which("skopeo") is None:
        raise SystemExit("benchmarks.registry: needs skopeo (run scripts/provision)")
    cedana_push, skopeo_push = "cedana.oci.push (python-dxf)", "skopeo copy oci: -> docker://"
    cedana_pull, skopeo_pull = "cedana.oci.pull (digests checked)", "skopeo copy docker:// -> oci:"
    pushes: dict[str, list[float]] = {skopeo_push: [], cedana_push: []}
    pulls: dict[str, list[float]] = {skopeo_pull: [], cedana_pull: []}
    with scratch(args.dir) as work:
        layout = oci.Layout.create(work / "src")
        blob = work / "blob"
        with open(blob, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(MiB))
        layer = layout.add_file(blob, media.CEDANA_CHECKPOINT_LAYER_ZSTD)
        blob.unlink()
        image = oci.write_image(
            layout, layers=[layer], artifact_type=media.CEDANA_ARTIFACT, tag="v1"
        )
        for r in range(args.rounds):
            for method in ("cedana", "skopeo"):
                registry, host = _registry(work / f"registry-{method}{r}")
                try:
                    ref = f"docker://{host}/bench/{method}:v1"
                    into = work / f"{method}-pulled{r}"
                    if method == "cedana":
                        pushes[cedana_push].append(timed(partial(oci.push, image, ref)))
                        pulls[cedana_pull].append(timed(partial(oci.pull, ref, into)))
                    else:
                        push = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                                f"oci:{layout.path}:v1", ref]  # fmt: skip
                        pushes[skopeo_push].append(timed(partial(run, push)))
                        pull = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", ref,
                                f"oci:{into}:v1"]  # fmt: skip
                        pulls[skopeo_pull].append(timed(partial(run, pull)))
                finally:
                    registry.terminate()
                    registry.wait()
                shutil.rmtree(into, ignore_errors=True)
                shutil.rmtree(work / f"registry-{method}{r}", ignore_errors=True)
    size = args.mib * MiB
    print(
        f"{args.mib} MiB blob (random) as a one-layer OCI artifact, {args.rounds} rounds, "
        f"docker-registry 2.8 on localhost (plain HTTP), storage on {args.dir}; each round "
        "pushes to a registry of its own and pulls into a new oci: layout"
    )
    print(table("push", [(k, v, size) for k, v in pushes.items()], skopeo_push))
    print(table("pull", [(k, v, size) for k, v in pulls.items()], skopeo_pull))
    return 0


if __name__ == "__main__":
    sys.exit(main())
