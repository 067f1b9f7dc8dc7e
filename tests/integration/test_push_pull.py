"""cedana push / pull / restore docker://: a real checkpoint (real CRIU) through a real
registry (docker-registry, tests/registry.py), as an OCI artifact."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

import cedana
from cedana import oci, procfs
from cedana.errors import ArtifactCorrupt, ArtifactExists, RegistryUnavailable, UnsupportedFormat
from cedana.oci import media
from cedana.oci.distribution import RegistryClient
from cedana.staging import owner_tag
from tests.capabilities import integration
from tests.conftest import Workloads, reap_zombie_children, wait_for
from tests.helpers import run_cedana
from tests.registry import (
    PASSWORD,
    USER,
    Registry,
    oci_registry,
    oci_registry_tls,
    requires_registry,
)

pytestmark = [*integration, requires_registry]

__all__ = ["oci_registry", "oci_registry_tls"]  # fixtures, imported for pytest

COUNTER = """
    import time
    n = 0
    while True:
        n += 1
        print("count", n, flush=True)
        time.sleep(0.02)
"""


def _numbers(log: Path) -> list[int]:
    return [int(n) for n in re.findall(r"count (\d+)", log.read_text())]


def _checkpoint(workloads: Workloads, tmp_path: Path) -> tuple[Path, Path, int]:
    proc, log = workloads.python(COUNTER)
    wait_for(lambda: len(_numbers(log)) >= 5, what="the counter to count")
    path = tmp_path / "job.tar.zst"
    proc.checkpoint(path)
    reap_zombie_children()
    wait_for(lambda: procfs.holder_of(proc.pid) is None, 10, "the pid to be free")
    return path, log, proc.pid


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_push_pull_restore(workloads: Workloads, tmp_path: Path, oci_registry: Registry) -> None:
    """A process checkpoint pushed as an OCI artifact (artifactType cedana's, one
    tar+zstd layer titled with the file's name, annotated with its kind) pulls back
    byte for byte (mode 0600), and `cedana restore docker://...` restores it: the counter
    goes on from where it stopped."""
    path, log, _pid = _checkpoint(workloads, tmp_path)
    ref = oci_registry.ref("ckpt-tests/job", "v1")
    digest = cedana.push(path, ref)
    with RegistryClient(oci.parse_reference(ref)) as client:
        raw, desc = client.get_manifest("v1")
    manifest = json.loads(raw)
    assert desc.digest == digest
    assert manifest["artifactType"] == media.CEDANA_ARTIFACT
    assert manifest["config"]["mediaType"] == media.EMPTY_CONFIG
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == media.CEDANA_CHECKPOINT_LAYER_ZSTD
    assert layer["digest"] == "sha256:" + _sha(path)
    assert layer["annotations"][media.ANNOTATION_TITLE] == "job.tar.zst"
    assert manifest["annotations"]["io.cedana.checkpoint.kind"] == "process"

    pulled = tmp_path / "pulled.tar.zst"
    ckpt = cedana.pull(ref, pulled)
    assert ckpt.path == pulled and _sha(pulled) == _sha(path)
    assert pulled.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ArtifactExists):
        cedana.pull(ref, pulled)

    before = _numbers(log)
    done = run_cedana("restore", ref, "--json")
    assert done.returncode == 0, done.stderr
    restored = json.loads(done.stdout)["pid"]
    workloads.track(restored)
    wait_for(lambda: len(_numbers(log)) > len(before) + 5, what="the counter to go on")
    after = _numbers(log)
    assert after[len(before)] == before[-1] + 1


def test_cli_push_pull(workloads: Workloads, tmp_path: Path, oci_registry: Registry) -> None:
    """`cedana push` and `cedana pull -o` round-trip the file and print the digest;
    `cedana inspect REF` shows the pushed checkpoint under its reference; a pull of an
    unknown tag fails with one line and leaves no file."""
    path, _log, _pid = _checkpoint(workloads, tmp_path)
    ref = oci_registry.ref("ckpt-tests/cli", "v2")
    done = run_cedana("push", str(path), ref, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["digest"].startswith("sha256:")
    out = tmp_path / "out.tar.zst"
    done = run_cedana("pull", ref, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert _sha(out) == _sha(path)
    done = run_cedana("inspect", ref, "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["checkpoint"]["path"] == ref and shown["checkpoint"]["kind"] == "process"
    assert shown["images"]["processes"], "the pulled checkpoint's process tree is decoded"
    done = run_cedana("pull", oci_registry.ref("ckpt-tests/cli", "nope"), "-o", str(tmp_path / "x"))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "not in registry" in done.stderr
    assert not (tmp_path / "x").exists()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".cedana-"))


def test_tampered_layer_refused_on_pull(
    workloads: Workloads, tmp_path: Path, oci_registry: Registry
) -> None:
    """A checkpoint layer changed in the registry's storage is refused on pull (its
    digest does not match), by pull and by restore from the reference; no file is left
    at the output and no scratch directory beside it."""
    path, _log, _pid = _checkpoint(workloads, tmp_path)
    ref = oci_registry.ref("ckpt-tests/tamper", "v1")
    cedana.push(path, ref)
    blob = oci_registry.blob_path("sha256:" + _sha(path))
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    blob.write_bytes(bytes(raw))
    out = tmp_path / "out" / "job.tar.zst"
    out.parent.mkdir()
    with pytest.raises(ArtifactCorrupt, match="tampered"):
        cedana.pull(ref, out)
    assert list(out.parent.iterdir()) == []
    with pytest.raises(ArtifactCorrupt):
        cedana.restore(ref)


def test_registry_down_mid_push(
    workloads: Workloads, tmp_path: Path, oci_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry stopping after the first blob of a push (the real registry process,
    stopped from a hook after the client's first blob upload returns) fails the push with
    RegistryUnavailable; the checkpoint is untouched, no scratch is left beside a local
    destination or in the temp dir, and the registry never got the tag."""
    path, _log, _pid = _checkpoint(workloads, tmp_path)
    sha = _sha(path)
    original = RegistryClient.push_blob

    def then_stop(self: RegistryClient, *args: object, **kw: object) -> bool:
        sent = original(self, *args, **kw)  # type: ignore[arg-type]
        oci_registry.stop()
        return sent

    monkeypatch.setattr(RegistryClient, "push_blob", then_stop)
    with pytest.raises(RegistryUnavailable, match="cannot reach registry"):
        cedana.push(path, oci_registry.ref("ckpt-tests/mid", "v1"))
    assert _sha(path) == sha
    assert _leftovers(tmp_path) == []
    assert not list(Path(tempfile.gettempdir()).glob(f".cedana-push-{owner_tag()}-*"))
    tags = oci_registry.storage / "docker/registry/v2/repositories/ckpt-tests/mid/_manifests/tags"
    assert not tags.exists()


def test_push_to_oci_archive_and_restore(workloads: Workloads, tmp_path: Path) -> None:
    """A checkpoint pushed to an oci-archive restores straight from it, and a push of a
    directory-form checkpoint, or a pull of an image that is no checkpoint, is refused."""
    path, log, _pid = _checkpoint(workloads, tmp_path)
    archive = tmp_path / "ckpt.tar"
    cedana.push(path, f"oci-archive:{archive}:ckpt")
    assert _leftovers(tmp_path) == []
    before = _numbers(log)
    restored = cedana.restore(f"oci-archive:{archive}:ckpt")
    workloads.track(restored.pid)
    wait_for(lambda: len(_numbers(log)) > len(before) + 3, what="the counter to go on")

    layout = oci.Layout.create(tmp_path / "img")
    src = tmp_path / "empty.tar"
    with tarfile.open(src, "w"):
        pass
    image = oci.write_image(layout, layers=[oci.add_layer(layout, src)])
    oci.push(image, f"oci-archive:{tmp_path / 'image.tar'}")
    with pytest.raises(
        UnsupportedFormat, match="neither a cedana checkpoint nor a checkpoint image"
    ):
        cedana.pull(f"oci-archive:{tmp_path / 'image.tar'}", tmp_path / "x.tar.zst")
    assert not (tmp_path / "x.tar.zst").exists()


def test_cli_over_tls_with_basic_auth(
    workloads: Workloads, tmp_path: Path, oci_registry_tls: Registry
) -> None:
    """`cedana push` / `pull` with --tls --ca-file --username --password-stdin reach an
    HTTPS registry with basic auth; with the user name but no password the registry
    refuses, said in one line on stderr."""
    path, _log, _pid = _checkpoint(workloads, tmp_path)
    ref = oci_registry_tls.ref("ckpt-tests/secure", "v1")
    flags = ["--tls", "--ca-file", str(oci_registry_tls.ca_file), "--username", USER]

    def cedana_cli(*args: str, password: str | None = PASSWORD) -> subprocess.CompletedProcess[str]:
        extra = ["--password-stdin"] if password is not None else []
        return subprocess.run(
            [sys.executable, "-m", "cedana", *args, *flags, *extra],
            input=(password or "") + "\n",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    done = cedana_cli("push", str(path), ref, password=None)
    assert done.returncode == 1 and "refused the credentials" in done.stderr, done.stderr
    done = cedana_cli("push", str(path), ref)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "back.tar.zst"
    done = cedana_cli("pull", ref, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert _sha(out) == _sha(path)
