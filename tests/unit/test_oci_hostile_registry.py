"""A hostile registry, served on loopback by the test: what cedana's registry client takes
from one. A manifest is read only up to its bound, however much the registry sends; a
401 from a host the registry redirected to gets no credentials."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from cedana import oci
from cedana.errors import ArtifactCorrupt, RegistryRefused
from cedana.oci.distribution import RegistryClient
from cedana.oci.layout import MAX_JSON

HUGE = 256 << 20


class _Hostile(BaseHTTPRequestHandler):
    sent = 0
    upload_to = ""

    def log_message(self, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        # A blob "there" of no size it will say (no Content-Length header).
        self.send_response(200)
        self.end_headers()

    def do_POST(self) -> None:
        # An upload session whose URL is on another host.
        self.send_response(202)
        self.send_header("Location", type(self).upload_to)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path == "/v2/":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            return
        # A "manifest" that never ends: the client must stop reading it at its bound.
        self.send_response(200)
        self.send_header("Content-Type", oci.media.IMAGE_MANIFEST)
        self.send_header("Content-Length", str(HUGE))
        self.end_headers()
        chunk = b" " * (1 << 20)
        try:
            for _ in range(HUGE // len(chunk)):
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except OSError:
            pass


@pytest.fixture
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hostile.sent = 0
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_manifest_past_its_bound_is_not_read_whole(hostile: str) -> None:
    """A registry answering a manifest GET with 256 MiB is refused as ArtifactCorrupt
    once the bound (MAX_JSON) is passed, and the client stops reading there (the server
    could not send much more than the bound). Fails while the whole body is read into
    memory first."""
    with (
        RegistryClient(oci.parse_reference(f"docker://{hostile}/app:v1")) as client,
        pytest.raises(ArtifactCorrupt, match="larger than"),
    ):
        client.get_manifest("v1")
    assert _Hostile.sent < MAX_JSON + (64 << 20)


class _Response:
    def __init__(self, url: str) -> None:
        self.url = url
        self.status_code = 401
        self.headers = {"www-authenticate": 'Bearer realm="https://elsewhere.example/token"'}


class _Dxf:
    def __init__(self) -> None:
        self.asked: list[tuple[Any, ...]] = []

    def authenticate(self, *args: Any, **kwargs: Any) -> None:
        self.asked.append((args, kwargs))


def test_credentials_go_only_to_the_registry_that_asked() -> None:
    """A 401 from the registry itself starts the token dance with the credentials; a 401
    from a host the registry redirected to (a blob's download URL elsewhere) is refused
    and nothing is sent there. Fails while every 401 gets the credentials."""
    options = oci.RegistryOptions(tls=True, username="u", password="p")
    ref = oci.parse_reference("docker://registry.example:5000/app:v1")
    with RegistryClient(ref, options) as client:
        auth: Any = client._dxf._auth
        fake = _Dxf()
        auth(fake, _Response("https://registry.example:5000/v2/app/manifests/v1"))
        assert len(fake.asked) == 1 and fake.asked[0][0][:2] == ("u", "p")
        with pytest.raises(RegistryRefused, match="elsewhere.example"):
            auth(fake, _Response("https://elsewhere.example/blobs/x?sig=1"))
        assert len(fake.asked) == 1


def test_a_blob_head_without_a_size_is_no_blob(hostile: str) -> None:
    """A registry answering a blob's HEAD with no Content-Length does not have that blob
    as far as a push is concerned (it is sent again), rather than a raw KeyError from
    the client. Fails while the missing header escapes unmapped."""
    desc = oci.Descriptor(media_type=oci.media.LAYER_TAR, digest="sha256:" + "a" * 64, size=3)
    with RegistryClient(oci.parse_reference(f"docker://{hostile}/app:v1")) as client:
        assert client.has_blob(desc) is False


class _Elsewhere(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_PUT(self) -> None:
        type(self).seen.append(dict(self.headers))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_an_upload_url_on_another_host_gets_no_credentials(hostile: str, tmp_path: Any) -> None:
    """A registry whose upload session (POST /blobs/uploads/) names a URL on another host
    is refused before anything is sent there: the PUT would carry the registry's
    Authorization header (python-dxf adds it to every request). Fails while the blob and
    the token go to that host."""
    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), _Elsewhere)
    thread = threading.Thread(target=elsewhere.serve_forever, daemon=True)
    thread.start()
    _Elsewhere.seen = []
    _Hostile.upload_to = f"http://127.0.0.1:{elsewhere.server_address[1]}/steal?x=1"
    blob = tmp_path / "blob"
    blob.write_bytes(b"abc")
    import hashlib

    desc = oci.Descriptor(
        media_type=oci.media.LAYER_TAR,
        digest="sha256:" + hashlib.sha256(b"abc").hexdigest(),
        size=3,
    )
    try:
        with RegistryClient(oci.parse_reference(f"docker://{hostile}/app:v1")) as client:
            client._dxf._headers = {"Authorization": "Bearer the-registrys-token"}
            with pytest.raises(RegistryRefused, match="another host"):
                client.push_blob(blob, desc)
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()
        thread.join()
    assert _Elsewhere.seen == []
