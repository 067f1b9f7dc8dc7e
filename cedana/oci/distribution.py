"""A client of the OCI distribution API (``docker://HOST/REPO:TAG``), over python-dxf.

python-dxf does the HTTP: the ``/v2/`` routes, the bearer-token dance a ``401`` with
``WWW-Authenticate: Bearer`` starts (and HTTP basic auth where the registry asks for it),
TLS with a CA file of the caller's, streamed blob upload (``POST`` then one ``PUT`` fed from
the file) and download, ``HEAD`` checks. This module adds what cedana needs on top:

- every pulled blob is written through a checked writer: a byte past its descriptor's size
  or a digest that differs stops the pull, and nothing is stored (python-dxf checks the
  digest too, after the last byte);
- a manifest pulled by digest must hash to it, one pulled by tag to the registry's
  ``Docker-Content-Digest``; it is read only up to its bound (``MAX_JSON``);
- the registry's credentials go to the registry only: an upload URL on another host is
  refused before anything is sent (python-dxf adds the Authorization header to every
  request), and a 401 from a host the registry redirected to starts no token dance;
- blobs the registry already has are not sent again (``HEAD`` first);
- credentials come from the caller, else from the auth files docker and podman keep
  (``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
  ``~/.docker/config.json``);
- requests', python-dxf's and the registry's errors are mapped in one place
  (:func:`mapped_errors`) to :class:`~cedana.RegistryUnavailable`,
  :class:`~cedana.RegistryRefused`, :class:`~cedana.ReferenceNotFound` and
  :class:`~cedana.ArtifactCorrupt`; nothing third-party reaches the caller raw.

python-dxf is an optional dependency (``pip install cedana[oci]``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import attrs

from cedana.errors import (
    ArtifactCorrupt,
    InvalidOption,
    ReferenceNotFound,
    RegistryRefused,
    RegistryUnavailable,
    SetupError,
)
from cedana.oci import media
from cedana.oci.layout import MAX_JSON, Descriptor
from cedana.oci.reference import Reference, parse_reference

if TYPE_CHECKING:
    import dxf as dxf_mod

__all__ = ["RegistryClient", "RegistryOptions", "mapped_errors"]

logger = logging.getLogger("cedana.oci")

_CHUNK = 1 << 20


@attrs.frozen(kw_only=True)
class RegistryOptions:
    """How to reach a registry.

    Attributes:
        tls: Speak HTTPS (True) or plain HTTP (False); None: plain HTTP for a loopback
            host (``localhost``, ``127.*``, ``[::1]``), HTTPS otherwise.
        ca_file: A PEM bundle to verify the registry's certificate with (a private CA or a
            self-signed certificate); None: the system's CAs.
        username: For the registry's basic auth or token service; with ``password``.
            None: the auth files of docker and podman are looked at for the host.
        password: The password (or token) for ``username``.
        timeout: Seconds a connection or read may stall before the transfer fails.
    """

    tls: bool | None = None
    ca_file: str | os.PathLike[str] | None = None
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    timeout: float = 60.0


def _auth_files() -> list[Path]:
    files = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    files.append(Path.home() / ".docker" / "config.json")
    return files


def stored_credentials(host: str) -> tuple[str, str] | None:
    """``(user, password)`` for ``host`` from docker's or podman's auth file, if one has it
    inline (``"auths": {"HOST": {"auth": base64("user:password")}}``)."""
    for path in _auth_files():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        auths = data.get("auths") if isinstance(data, dict) else None
        entry = auths.get(host) if isinstance(auths, dict) else None
        token = entry.get("auth") if isinstance(entry, dict) else None
        if isinstance(token, str):
            try:
                user, sep, password = base64.b64decode(token).decode().partition(":")
            except ValueError:
                continue
            if sep:
                logger.debug("credentials for %s from %s", host, path)
                return user, password
    return None


def _error_text(response: Any) -> str:
    """The registry's own error message (the distribution API's ``errors`` list)."""
    try:
        errors = response.json().get("errors", [])
        texts = [
            f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
            for e in errors
            if isinstance(e, dict)
        ]
        if texts:
            return "; ".join(texts)
    except (ValueError, AttributeError):
        pass
    body = (getattr(response, "text", "") or "").strip().splitlines()
    return body[0][:200] if body else getattr(response, "reason", "") or ""


@contextlib.contextmanager
def mapped_errors(
    what: str, ref: Reference, options: RegistryOptions, *, credentials: bool = False
) -> Iterator[None]:
    """Map requests', python-dxf's and the registry's errors to cedana's, naming ``what``
    was being done and with which registry (the one place they are mapped)."""
    import dxf.exceptions as dxf_errors
    import requests

    host = ref.host
    try:
        yield
    except requests.exceptions.SSLError as exc:
        hint = (
            "the registry may speak plain HTTP: pass tls=False (--no-tls)"
            if "WRONG_VERSION_NUMBER" in str(exc) or "wrong version number" in str(exc)
            else "pass ca_file= (--ca-file) with the CA that signed its certificate"
        )
        raise RegistryUnavailable(f"{what}: TLS with registry {host} failed; {hint}") from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise RegistryUnavailable(
            f"{what}: cannot reach registry {host} (connection refused, dropped or timed out); "
            "check that it is running and the host and port are right"
        ) from exc
    except requests.exceptions.ChunkedEncodingError as exc:
        raise RegistryUnavailable(f"{what}: registry {host} dropped the connection") from exc
    except dxf_errors.DXFAuthInsecureError as exc:
        raise RegistryRefused(
            f"{what}: registry {host} asks for credentials over plain HTTP, which cedana does "
            "not send; use TLS (tls=True, --tls)",
            status=401,
        ) from exc
    except dxf_errors.DXFUnauthorizedError as exc:
        if credentials:
            raise RegistryRefused(
                f"{what}: registry {host} refused the credentials (401); check the user name "
                "and password",
                status=401,
            ) from exc
        raise RegistryRefused(
            f"{what}: registry {host} needs credentials (401); pass username= and password= "
            "(--username, and the password on stdin with --password-stdin) or log in with "
            "podman login / docker login",
            status=401,
        ) from exc
    except dxf_errors.DXFDigestMismatchError as exc:
        raise ArtifactCorrupt(
            f"{what}: a blob from registry {host} does not match its digest ({exc}); "
            "it was tampered with or damaged, and nothing was kept"
        ) from exc
    except requests.exceptions.HTTPError as exc:
        response = exc.response
        status = response.status_code if response is not None else 0
        text = _error_text(response) if response is not None else str(exc)
        if status == 404:
            raise ReferenceNotFound(f"{what}: {ref} is not in registry {host} ({text})") from exc
        if status in (401, 403):
            raise RegistryRefused(
                f"{what}: registry {host} refused access ({status}: {text}); check the "
                "credentials and that they may push/pull this repository",
                status=status,
            ) from exc
        tls = options.tls if options.tls is not None else not ref.loopback
        if status == 400 and not tls:
            raise RegistryRefused(
                f"{what}: registry {host} answered 400 to plain HTTP ({text}); if it speaks "
                "HTTPS, pass tls=True (--tls)",
                status=400,
            ) from exc
        raise RegistryRefused(
            f"{what}: registry {host} answered {status} ({text})", status=status
        ) from exc
    except requests.exceptions.RequestException as exc:  # the rest: redirects, bad URLs...
        raise RegistryUnavailable(f"{what}: the request to registry {host} failed: {exc}") from exc
    except dxf_errors.DXFError as exc:
        raise RegistryRefused(f"{what}: registry {host}: {exc}") from exc


def _import_dxf() -> Any:
    try:
        import dxf
    except ImportError:
        raise SetupError(
            "talking to a registry needs python-dxf: pip install 'cedana[oci]'"
        ) from None
    return dxf


@attrs.define(eq=False)
class RegistryClient:
    """One repository of one registry: blobs and manifests, pushed and pulled.

    A context manager: the HTTP session (one connection pool) closes on exit.
    """

    reference: Reference
    options: RegistryOptions = attrs.field(factory=RegistryOptions)
    _dxf: dxf_mod.DXF = attrs.field(init=False)
    _stack: contextlib.ExitStack = attrs.field(init=False, factory=contextlib.ExitStack)
    _credentials: tuple[str, str] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        ref = self.reference = parse_reference(self.reference)
        if not ref.is_registry or ref.host is None or ref.repository is None:
            raise InvalidOption(f"{ref} is no registry reference (docker://HOST/REPO:TAG)")
        dxf = _import_dxf()
        tls = self.options.tls if self.options.tls is not None else not ref.loopback
        verify: bool | str = str(self.options.ca_file) if self.options.ca_file else True
        creds = self._credentials = (
            (self.options.username, self.options.password or "")
            if self.options.username is not None
            else stored_credentials(ref.host)
        )

        def auth(client: Any, response: Any) -> None:
            # A 401 from a host the registry redirected to (a blob's download URL) is
            # that host's: the registry's credentials are not for it.
            asked = urlsplit(str(getattr(response, "url", "") or "")).netloc
            if asked and asked.lower() != str(ref.host).lower():
                raise RegistryRefused(
                    f"registry {ref.host} redirected to {asked}, which asks for credentials; "
                    "the registry's are not sent to another host",
                    status=401,
                )
            user, password = creds if creds else (None, None)
            client.authenticate(user, password, response=response, actions=["pull", "push"])

        self._dxf = dxf.DXF(
            ref.host,
            ref.repository,
            auth=auth,
            insecure=not tls,
            tlsverify=verify,
            timeout=self.options.timeout,
        )
        self._stack.enter_context(self._dxf)

    @property
    def _raw_dxf(self) -> Any:
        """python-dxf's client below its public calls (its request layer, which adds the
        registry's auth), for what the public calls cannot do with a bound."""
        return self._dxf

    def close(self) -> None:
        """Close the connection pool (idempotent)."""
        self._stack.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mapped(self, what: str) -> contextlib.AbstractContextManager[None]:
        return mapped_errors(
            what, self.reference, self.options, credentials=self._credentials is not None
        )

    def ping(self) -> None:
        """Check the registry answers the distribution API (``GET /v2/``)."""
        with self._mapped("checking the registry"):
            self._dxf.api_version_check()

    def has_blob(self, desc: Descriptor) -> bool:
        """Whether the repository has the blob (``HEAD``), of the descriptor's size."""
        import requests

        with self._mapped(f"checking blob {desc.digest}"):
            try:
                return int(self._dxf.blob_size(desc.digest)) == desc.size
            except requests.exceptions.HTTPError as exc:
                if exc.response is not None and exc.response.status_code == 404:
                    return False
                raise
            except (KeyError, ValueError, TypeError):  # no size said: sent again
                return False

    def push_blob(self, path: str | os.PathLike[str], desc: Descriptor) -> bool:
        """Upload the file at ``path`` as the blob ``desc`` unless the registry has it;
        return whether it was sent. The registry checks the digest before it keeps it."""
        if self.has_blob(desc):
            logger.debug("registry has blob %s", desc.digest)
            return False
        started = time.monotonic()
        with self._mapped(f"pushing blob {desc.digest}"), open(path, "rb") as f:
            self._raw_dxf._base_request("put", self._upload_url(desc), data=f)
        logger.debug(
            "pushed blob %s (%d bytes) in %.3fs", desc.digest, desc.size, time.monotonic() - started
        )
        return True

    def _upload_url(self, desc: Descriptor) -> str:
        """A new upload session's URL (``POST /blobs/uploads/``), for one ``PUT`` of the
        blob; as python-dxf's push_blob makes it, but refused on another host than the
        registry's: python-dxf sends the registry's Authorization with every request."""
        response = self._raw_dxf._request("post", "blobs/uploads/")
        location = str(response.headers.get("Location") or "")
        if not location:
            raise RegistryRefused(
                f"registry {self.reference.host} opened an upload without a Location"
            )
        parts = urlsplit(urljoin(str(response.url), location))
        if parts.netloc.lower() != str(self.reference.host).lower():
            raise RegistryRefused(
                f"registry {self.reference.host} named an upload URL on another host "
                f"({parts.netloc}); its credentials are not sent there, nothing was pushed"
            )
        query = [*parse_qsl(parts.query, keep_blank_values=True), ("digest", desc.digest)]
        scheme = "http" if self._raw_dxf._insecure else "https"
        return urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), ""))

    def pull_blob(self, desc: Descriptor, out: IO[bytes]) -> None:
        """Stream the blob into ``out``, refused past the descriptor's size. python-dxf
        compares the digest after the last byte; ``out`` should be a writer that checks
        it too before keeping anything (:meth:`cedana.oci.Layout.receive`)."""
        started = time.monotonic()
        size = 0
        with self._mapped(f"pulling blob {desc.digest}"):
            chunks: Iterable[bytes] = self._dxf.pull_blob(desc.digest, chunk_size=_CHUNK)  # type: ignore[assignment]
            for chunk in chunks:
                size += len(chunk)
                if size > desc.size:
                    raise ArtifactCorrupt(
                        f"blob {desc.digest} from {self.reference.host} is longer than its "
                        f"descriptor's {desc.size} bytes: tampered with or damaged; nothing "
                        "was kept"
                    )
                out.write(chunk)
        if size != desc.size:
            raise ArtifactCorrupt(
                f"blob {desc.digest} from {self.reference.host} ended after {size} of "
                f"{desc.size} bytes: tampered with or damaged; nothing was kept"
            )
        logger.debug(
            "pulled blob %s (%d bytes) in %.3fs", desc.digest, size, time.monotonic() - started
        )

    def push_manifest(self, data: bytes, tag: str) -> str:
        """Put a manifest (its bytes, ASCII JSON with a ``mediaType``) under ``tag``;
        return its digest."""
        text = data.decode("ascii")  # requests sends a str body as latin-1: keep it exact
        with self._mapped(f"pushing manifest to {self.reference.with_tag(tag)}"):
            self._dxf.set_manifest(tag, text)
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def get_manifest(self, which: str) -> tuple[bytes, Descriptor]:
        """The manifest (or index) at ``which`` (a tag or a digest): its bytes and a
        descriptor for them, checked against the digest asked for or, by tag, against
        the registry's ``Docker-Content-Digest``."""
        import dxf

        # python-dxf's get_manifest reads the whole body: streamed here, so a registry
        # sending more than a manifest's bound is stopped there, not held in memory.
        with self._mapped(f"pulling manifest {which}"):
            response = self._raw_dxf._request(
                "get",
                "manifests/" + which,
                headers=dxf._accept_header,
                stream=True,
            )
            try:
                parts: list[bytes] = []
                size = 0
                for chunk in response.iter_content(_CHUNK):
                    size += len(chunk)
                    if size > MAX_JSON:
                        raise ArtifactCorrupt(
                            f"the manifest at {which} is larger than {MAX_JSON} bytes"
                        )
                    parts.append(chunk)
            finally:
                response.close()
        data = b"".join(parts)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        expected = (
            which if which.startswith("sha256:") else response.headers.get("Docker-Content-Digest")
        )
        if expected and expected != digest:
            raise ArtifactCorrupt(
                f"the manifest at {self.reference.host}/{self.reference.repository}@{which} "
                f"hashes to {digest}, not {expected}: tampered with or damaged"
            )
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise ArtifactCorrupt(f"the manifest at {which} is not JSON") from None
        kind = (parsed.get("mediaType") if isinstance(parsed, dict) else None) or (
            response.headers.get("Content-Type", "").split(";")[0]
        )
        if kind not in media.MANIFEST_TYPES:
            raise ArtifactCorrupt(f"the manifest at {which} is of type {kind!r}, not an image")
        return data, Descriptor(media_type=kind, digest=digest, size=len(data))


#: Called after each blob of a push with the blob's descriptor and whether it was sent.
BlobCallback = Callable[[Descriptor, bool], None]
