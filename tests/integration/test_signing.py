"""Signed checkpoints against real CRIU: a real checkpoint is signed by the host key and
restores by default; one signed by another key is refused until that key is trusted; the
root default key location is made private; the command line shows and accepts signers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import cedana
from cedana import procfs
from cedana.artifact.signing import CONFIG_DIR_ENV, SIGNATURE_NAME, SigningKey, host_key
from tests.capabilities import integration, requires_tool
from tests.conftest import Workloads, reap_zombie_children, wait_for
from tests.helpers import run_cedana

pytestmark = integration

COUNTER = """
    import time
    n = 0
    while True:
        n += 1
        print(n, flush=True)
        time.sleep(0.02)
"""


def count(log: Path) -> int:
    return len(log.read_text().split())


def gone(pid: int) -> None:
    reap_zombie_children()
    wait_for(lambda: procfs.holder_of(pid) is None, 10, f"pid {pid} to go")


@pytest.fixture
def other_key(tmp_path: Path) -> SigningKey:
    """Another host's signing key (a PEM file, 0600)."""
    path = tmp_path / "other.key"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return SigningKey.load(path)


@pytest.fixture
def fresh_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config dir of this test's own, so what it trusts stays in this test."""
    path = tmp_path / "config"
    monkeypatch.setenv(CONFIG_DIR_ENV, str(path))
    return path


@requires_tool("tar", "zstd")
def test_real_checkpoint_is_signed_and_restores(workloads: Workloads, tmp_path: Path) -> None:
    """A real process checkpoint is signed by this host's key (manifest.sig second in the
    tar) and restores by default; the counter goes on."""
    proc, log = workloads.python(COUNTER)
    wait_for(lambda: count(log) > 5, what="counter")
    path = tmp_path / "c.tar.zst"
    ckpt = proc.checkpoint(path)
    assert ckpt.signer.key_id == host_key().public_key.key_id
    assert ckpt.trusted
    names = subprocess.run(
        ["tar", "--zstd", "-tf", str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert names[:2] == ["manifest.json", SIGNATURE_NAME]
    gone(proc.pid)
    seen = count(log)
    restored = cedana.restore(path)
    workloads.track(restored.pid)
    assert restored.pid == proc.pid
    wait_for(lambda: count(log) > seen + 5, what="restored counter")


def test_other_key_is_refused_until_trusted(
    workloads: Workloads, tmp_path: Path, other_key: SigningKey, fresh_config: Path
) -> None:
    """A checkpoint signed by another host's key is refused (nothing restored, the pid stays
    free) until that key is trusted with `cedana key trust`; then it restores."""
    proc, log = workloads.python(COUNTER)
    wait_for(lambda: count(log) > 5, what="counter")
    path = tmp_path / "o.tar.zst"
    proc.checkpoint(path, signing_key=other_key.path)
    gone(proc.pid)
    with pytest.raises(cedana.UntrustedArtifact, match=other_key.public_key.key_id):
        cedana.restore(path)
    assert procfs.holder_of(proc.pid) is None
    out = run_cedana("restore", str(path))
    assert out.returncode == 1
    assert "cedana key trust" in out.stderr
    assert procfs.holder_of(proc.pid) is None

    pub = tmp_path / "other.pub"
    pub.write_bytes(other_key.public_key.to_pem())
    out = run_cedana("key", "trust", str(pub))
    assert out.returncode == 0, out.stderr
    assert (fresh_config / "trusted" / f"{other_key.public_key.key_id}.pub").is_file()
    seen = count(log)
    restored = cedana.restore(path)
    workloads.track(restored.pid)
    assert restored.pid == proc.pid
    wait_for(lambda: count(log) > seen + 5, what="restored counter")


def test_cli_inspect_shows_signer_and_restore_accepts_on_request(
    workloads: Workloads, tmp_path: Path, other_key: SigningKey
) -> None:
    """`cedana inspect` shows the signer's key id and whether it is trusted (and runs for an
    untrusted one: it restores nothing); `restore --insecure-accept-unsigned` restores an
    artifact of an unknown signer."""
    proc, log = workloads.python(COUNTER)
    wait_for(lambda: count(log) > 5, what="counter")
    path = tmp_path / "c.tar.zst"
    out = run_cedana(
        "checkpoint", str(proc.pid), "-o", str(path), "--signing-key", str(other_key.path)
    )
    assert out.returncode == 0, out.stderr
    gone(proc.pid)

    out = run_cedana("inspect", str(path))
    assert out.returncode == 0, out.stderr
    assert f"key {other_key.public_key.key_id} (NOT trusted" in out.stdout
    out = run_cedana("inspect", str(path), "--json")
    signature = json.loads(out.stdout)["checkpoint"]["signature"]
    assert signature["key_id"] == other_key.public_key.key_id
    assert signature["trusted"] is False

    seen = count(log)
    out = run_cedana("restore", str(path), "--insecure-accept-unsigned", "--json")
    assert out.returncode == 0, out.stderr
    pid = json.loads(out.stdout)["pid"]
    workloads.track(pid)
    assert pid == proc.pid
    wait_for(lambda: count(log) > seen + 5, what="restored counter")


@pytest.fixture
def root_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, bool, bool]]:
    """The real default: no CEDANA_CONFIG_DIR, so root's keys go to /etc/cedana. Yields the
    dir and whether it and the key existed before; afterwards removes only what the test
    created."""
    monkeypatch.delenv(CONFIG_DIR_ENV)
    directory = Path("/etc/cedana")
    had_dir = directory.exists()
    had_key = (directory / "signing.key").exists()
    had_pub = (directory / "signing.pub").exists()
    try:
        yield directory, had_dir, had_key
    finally:
        if not had_dir:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            if not had_key:
                (directory / "signing.key").unlink(missing_ok=True)
            if not had_pub:
                (directory / "signing.pub").unlink(missing_ok=True)


def test_root_default_key_location(
    workloads: Workloads, tmp_path: Path, root_default: tuple[Path, bool, bool]
) -> None:
    """As root without CEDANA_CONFIG_DIR, checkpoint signs with /etc/cedana/signing.key,
    made on first use 0600 in a 0700 dir, and the checkpoint restores by default."""
    directory, had_dir, _ = root_default
    before = directory.stat().st_mode & 0o777 if had_dir else None
    proc, log = workloads.python(COUNTER)
    wait_for(lambda: count(log) > 5, what="counter")
    path = tmp_path / "r.tar.zst"
    ckpt = proc.checkpoint(path)
    key = SigningKey.load(directory / "signing.key")
    assert ckpt.signer.key_id == key.public_key.key_id
    assert (directory / "signing.key").stat().st_mode & 0o777 == 0o600
    assert (directory / "signing.key").stat().st_uid == os.geteuid()
    # A dir that was there keeps its mode; one made here is 0700.
    assert directory.stat().st_mode & 0o777 == (0o700 if not had_dir else before)
    assert ckpt.signer.trusted_by == "this host's key"
    gone(proc.pid)
    restored = cedana.restore(path)
    workloads.track(restored.pid)
    assert restored.pid == proc.pid
