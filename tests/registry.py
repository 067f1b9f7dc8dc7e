"""A real OCI registry for the tests: Debian's ``docker-registry`` (distribution 2.8).

:func:`start_registry` runs one on a free localhost port with a config file and a storage
directory of its own, plain HTTP or, with ``tls_auth=True``, HTTPS with a self-signed
certificate (made with ``cryptography``) and basic auth from an htpasswd file (bcrypt,
the only hash distribution's htpasswd accepts), or with ``token=True`` HTTPS with a
bearer-token service of the test's own (:class:`TokenServer`). The fixtures
``oci_registry``, ``oci_registry_tls`` and ``oci_registry_token`` (import them into a test
module) stop it after the test.
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
    token_server: TokenServer | None = None

    def ref(self, repo: str, tag: str = "latest") -> str:
        return f"docker://{self.host}/{repo}:{tag}"

    def stop(self) -> None:
        if self.token_server is not None:
            self.token_server.stop()
            self.token_server = None
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


class TokenServer:
    """A bearer-token service for the registry (the distribution token protocol): HTTPS
    on a free localhost port, it checks the client's basic credentials (:data:`USER` /
    :data:`PASSWORD`) and returns an ES256 JWT granting the scope asked for, signed with a
    key whose certificate travels in the token's ``x5c`` header and is the registry's
    ``rootcertbundle``."""

    ISSUER = "cedana-test-issuer"
    SERVICE = "cedana-test-registry"

    def __init__(self, cert: Path, key: Path) -> None:
        import http.server
        import ssl
        import threading

        from cryptography.hazmat.primitives import serialization

        self.cert, self.requests = cert, 0
        self._key = serialization.load_pem_private_key(key.read_bytes(), None)
        self._der = _der(cert)
        server = self
        self.port = free_port()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                status, body = server.answer(self.path, self.headers.get("Authorization", ""))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    def answer(self, path: str, authorization: str) -> tuple[int, bytes]:
        import base64
        import json
        import urllib.parse

        given = authorization.removeprefix("Basic ")
        try:
            user, _, password = base64.b64decode(given).decode().partition(":")
        except ValueError:
            user = password = ""
        if (user, password) != (USER, PASSWORD):
            return 401, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
        query = urllib.parse.parse_qs(urllib.parse.urlparse(path).query)
        access: list[dict[str, object]] = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        token = self.token(user, access)
        return 200, json.dumps({"token": token, "access_token": token}).encode()

    def token(self, subject: str, access: list[dict[str, object]]) -> str:
        import base64
        import json
        import secrets

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self._der).decode()]}
        claims = {
            "iss": self.ISSUER,
            "sub": subject,
            "aud": self.SERVICE,
            "exp": now + 300,
            "nbf": now - 60,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        assert isinstance(self._key, ec.EllipticCurvePrivateKey)
        r, s_ = decode_dss_signature(
            self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s_.to_bytes(32, 'big'))}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _der(cert: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    return loaded.public_bytes(serialization.Encoding.DER)


def start_registry(directory: Path, *, tls_auth: bool = False, token: bool = False) -> Registry:
    """Start a registry in ``directory`` (config, storage, log, certificate live there):
    plain HTTP; or HTTPS with basic auth (``tls_auth``) or with a bearer-token service
    (``token``: :class:`TokenServer`, stopped with the registry)."""
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
    token_server = None
    if token:
        cert, key = _self_signed(directory)
        ca_file = cert
        token_server = TokenServer(cert, key)
        lines += [
            "  tls:",
            f"    certificate: {cert}",
            f"    key: {key}",
            "auth:",
            "  token:",
            f"    realm: {token_server.realm}",
            f"    service: {TokenServer.SERVICE}",
            f"    issuer: {TokenServer.ISSUER}",
            f"    rootcertbundle: {cert}",
        ]
    elif tls_auth:
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
        host=f"127.0.0.1:{port}",
        storage=storage,
        process=process,
        log=log,
        ca_file=ca_file,
        token_server=token_server,
    )
    scheme = "https" if tls_auth or token else "http"
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
def running_registry(
    directory: Path, *, tls_auth: bool = False, token: bool = False
) -> Iterator[Registry]:
    registry = start_registry(directory, tls_auth=tls_auth, token=token)
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


@pytest.fixture
def oci_registry_token(tmp_path: Path) -> Iterator[Registry]:
    """An HTTPS registry whose auth is a bearer-token service (:class:`TokenServer`,
    which takes :data:`USER` / :data:`PASSWORD`), both stopped after the test."""
    with running_registry(tmp_path / "registry-token", token=True) as registry:
        yield registry
