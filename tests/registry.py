"""A real OCI registry for the tests: Debian's ``docker-registry`` (distribution 2.8).

:func:`start_registry` runs one on a free localhost port with a config file and a storage
directory of its own, plain HTTP or, with ``tls_auth=True``, HTTPS with a self-signed
certificate (made with ``cryptography``) and basic auth from an htpasswd file (bcrypt,
the only hash distribution's htpasswd accepts). The fixtures ``oci_registry`` and
``oci_registry_tls`` (import them into a test module) stop it after the test.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.capabilities import _need

BINARY = "docker-registry"

requires_registry = _need(
    shutil.which(BINARY) is not None, "needs docker-registry; run scripts/provision"
)

USER = "cedana"
PASSWORD = "s3cret-for-tests"


@attrs.define
class Registry:
    """A running registry: ``host`` is ``127.0.0.1:PORT`` for ``docker://`` references."""

    host: str
    storage: Path
    process: subprocess.Popen[bytes]
    log: Path
    ca_file: Path | None = None

    def ref(self, repo: str, tag: str = "latest") -> str:
        return f"docker://{self.host}/{repo}:{tag}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def blob_path(self, digest: str) -> Path:
        """Where the registry's filesystem driver keeps a blob (to tamper with it)."""
        hex_ = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "registry.crt", directory / "registry.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def start_registry(directory: Path, *, tls_auth: bool = False) -> Registry:
    """Start a registry in ``directory`` (config, storage, log, certificate live there)."""
    import bcrypt

    directory.mkdir(parents=True, exist_ok=True)
    storage = directory / "storage"
    storage.mkdir(exist_ok=True)
    port = free_port()
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    ca_file = None
    if tls_auth:
        cert, key = _self_signed(directory)
        ca_file = cert
        htpasswd = directory / "htpasswd"
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
        htpasswd.write_text(f"{USER}:{hashed}\n")
        lines += [
            "  tls:",
            f"    certificate: {cert}",
            f"    key: {key}",
            "auth:",
            "  htpasswd:",
            "    realm: cedana-tests",
            f"    path: {htpasswd}",
        ]
    config = directory / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    log = directory / "registry.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [BINARY, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    registry = Registry(
        host=f"127.0.0.1:{port}", storage=storage, process=process, log=log, ca_file=ca_file
    )
    scheme = "https" if tls_auth else "http"
    deadline = time.monotonic() + 20
    import ssl

    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/v2/", timeout=2, context=context)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # up, and asking for credentials
                break
            raise
        except OSError as exc:
            if time.monotonic() > deadline:
                registry.stop()
                raise RuntimeError(
                    f"docker-registry did not start: {log.read_text()[-2000:]}"
                ) from exc
            time.sleep(0.1)
    return registry


@contextlib.contextmanager
def running_registry(directory: Path, *, tls_auth: bool = False) -> Iterator[Registry]:
    registry = start_registry(directory, tls_auth=tls_auth)
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def oci_registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-HTTP registry on a free localhost port, stopped after the test."""
    with running_registry(tmp_path / "registry") as registry:
        yield registry


@pytest.fixture
def oci_registry_tls(tmp_path: Path) -> Iterator[Registry]:
    """An HTTPS registry (self-signed certificate: ``ca_file``) with basic auth
    (:data:`USER` / :data:`PASSWORD`), stopped after the test."""
    with running_registry(tmp_path / "registry-tls", tls_auth=True) as registry:
        yield registry
