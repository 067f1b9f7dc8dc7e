"""The OCI layer against a real registry: Debian's docker-registry (distribution 2.8),
started by each test on a free localhost port with its own config and storage
(tests/registry.py), plain HTTP, or HTTPS with a self-signed certificate and basic auth."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cedana import oci
from cedana.errors import ArtifactCorrupt, ReferenceNotFound, RegistryRefused, RegistryUnavailable
from cedana.oci import media
from tests.registry import (
    PASSWORD,
    USER,
    Registry,
    oci_registry,
    oci_registry_tls,
    oci_registry_token,
    requires_registry,
)

pytestmark = [pytest.mark.integration, requires_registry]

__all__ = [
    "oci_registry",
    "oci_registry_tls",
    "oci_registry_token",
]  # fixtures, imported for pytest


def _image(tmp_path: Path, layers: int = 2, size: int = 4096) -> oci.Image:
    layout = oci.Layout.create(tmp_path / "src")
    made = []
    for i in range(layers):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(f"file{i}")
            data = bytes([i]) * size + str(tmp_path).encode()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
        made.append(oci.add_layer(layout, buf, compression="gzip" if i % 2 else "zstd"))
    return oci.write_image(layout, layers=made, annotations={"org.example": "yes"}, tag="v1")


def _pushed_blobs(image: oci.Image, ref: str, **kw) -> list[bool]:
    sent: list[bool] = []
    oci.push(image, ref, on_blob=lambda _d, was_sent: sent.append(was_sent), **kw)
    return sent


def test_push_pull_round_trip(tmp_path: Path, oci_registry: Registry) -> None:
    """An image pushed over plain HTTP pulls back with the same manifest digest,
    annotations and layer bytes; pushing it again sends no blob (HEAD finds them all)."""
    image = _image(tmp_path)
    ref = oci_registry.ref("oci-tests/app", "v1")
    assert _pushed_blobs(image, ref) == [True, True, True]
    assert _pushed_blobs(image, ref) == [False, False, False]
    back = oci.pull(ref, tmp_path / "pulled")
    assert back.digest == image.digest
    assert back.annotations == {"org.example": "yes"}
    for a, b in zip(image.layers, back.layers, strict=True):
        assert a == b
        assert back.layout.blob_path(b.digest).read_bytes() == (
            image.layout.blob_path(a.digest).read_bytes()
        )
    by_digest = oci.pull(
        f"docker://{oci_registry.host}/oci-tests/app@{image.digest}", tmp_path / "d"
    )
    assert by_digest.digest == image.digest


def test_artifact_round_trip(tmp_path: Path, oci_registry: Registry) -> None:
    """An OCI artifact (artifactType, empty config) is accepted by distribution 2.8 and
    reads back with its type and its layer's title."""
    layout = oci.Layout.create(tmp_path / "l")
    blob = layout.add_bytes(
        b"x" * 10000,
        media.CEDANA_CHECKPOINT_LAYER_ZSTD,
        annotations={media.ANNOTATION_TITLE: "job.tar.zst"},
    )
    image = oci.write_image(layout, layers=[blob], artifact_type=media.CEDANA_ARTIFACT)
    ref = oci_registry.ref("oci-tests/ckpt", "one")
    oci.push(image, ref)
    back = oci.pull(ref, tmp_path / "back")
    assert back.artifact_type == media.CEDANA_ARTIFACT
    assert back.layers[0].annotations == {media.ANNOTATION_TITLE: "job.tar.zst"}


def test_tampered_blob_is_refused_on_pull(tmp_path: Path, oci_registry: Registry) -> None:
    """A layer changed in the registry's storage (same size, other bytes) is refused on
    pull as ArtifactCorrupt, and the pull leaves no layout behind."""
    image = _image(tmp_path)
    ref = oci_registry.ref("oci-tests/tamper", "v1")
    oci.push(image, ref)
    data = oci_registry.blob_path(image.layers[1].digest)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ArtifactCorrupt, match="tampered"):
        oci.pull(ref, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()


def test_unknown_tag_and_repository(tmp_path: Path, oci_registry: Registry) -> None:
    """A tag or repository the registry lacks is ReferenceNotFound, with nothing left."""
    with pytest.raises(ReferenceNotFound, match="MANIFEST_UNKNOWN|NAME_UNKNOWN"):
        oci.pull(oci_registry.ref("oci-tests/none", "v9"), tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_registry_down(tmp_path: Path, oci_registry: Registry) -> None:
    """A registry that is not running is RegistryUnavailable, for push and pull, and
    neither leaves local output."""
    image = _image(tmp_path)
    oci_registry.stop()
    with pytest.raises(RegistryUnavailable, match="cannot reach registry"):
        oci.push(image, oci_registry.ref("oci-tests/down", "v1"))
    with pytest.raises(RegistryUnavailable):
        oci.pull(oci_registry.ref("oci-tests/down", "v1"), tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_registry_down_mid_push(tmp_path: Path, oci_registry: Registry) -> None:
    """The registry stopping after the first blob makes the push fail clearly; the tag
    was never written (the registry's storage has no tag for the repository), and the
    source layout is untouched."""
    image = _image(tmp_path, layers=3)
    ref = oci_registry.ref("oci-tests/mid", "v1")
    before = sorted(p.name for p in (image.layout.path / "blobs" / "sha256").iterdir())

    def stop_after_first(_desc: oci.Descriptor, _sent: bool) -> None:
        oci_registry.stop()

    with pytest.raises(RegistryUnavailable):
        oci.push(image, ref, on_blob=stop_after_first)
    assert sorted(p.name for p in (image.layout.path / "blobs" / "sha256").iterdir()) == before
    image.layout.verify(image)
    tags = oci_registry.storage / "docker/registry/v2/repositories/oci-tests/mid/_manifests/tags"
    assert not tags.exists()


def test_tls_and_basic_auth(tmp_path: Path, oci_registry_tls: Registry) -> None:
    """Against HTTPS with basic auth: without the CA the TLS check fails; without
    credentials, or with a wrong password, the registry refuses (401); with both the
    push and pull work."""
    image = _image(tmp_path)
    ref = oci_registry_tls.ref("oci-tests/secure", "v1")
    ca = oci_registry_tls.ca_file
    with pytest.raises(RegistryUnavailable, match="TLS"):
        oci.push(
            image, ref, registry=oci.RegistryOptions(tls=True, username=USER, password=PASSWORD)
        )
    with pytest.raises(RegistryRefused, match="needs credentials") as no_creds:
        oci.push(image, ref, registry=oci.RegistryOptions(tls=True, ca_file=ca))
    assert no_creds.value.status == 401
    with pytest.raises(RegistryRefused, match="refused the credentials"):
        oci.push(
            image,
            ref,
            registry=oci.RegistryOptions(tls=True, ca_file=ca, username=USER, password="no"),
        )
    good = oci.RegistryOptions(tls=True, ca_file=ca, username=USER, password=PASSWORD)
    oci.push(image, ref, registry=good)
    assert oci.pull(ref, tmp_path / "p", registry=good).digest == image.digest
    with pytest.raises(RegistryRefused, match="tls=True"):
        oci.pull(ref, tmp_path / "q", registry=oci.RegistryOptions(tls=False))


def test_bearer_token_auth(tmp_path: Path, oci_registry_token: Registry) -> None:
    """Against a registry whose auth is a token service (WWW-Authenticate: Bearer): the
    client fetches a token with its basic credentials and pushes and pulls with it; with
    a wrong password the token service refuses and so does the push."""
    image = _image(tmp_path)
    ref = oci_registry_token.ref("oci-tests/token", "v1")
    ca = oci_registry_token.ca_file
    good = oci.RegistryOptions(tls=True, ca_file=ca, username=USER, password=PASSWORD)
    oci.push(image, ref, registry=good)
    assert oci.pull(ref, tmp_path / "p", registry=good).digest == image.digest
    assert oci_registry_token.token_server is not None
    assert oci_registry_token.token_server.requests >= 2
    bad = oci.RegistryOptions(tls=True, ca_file=ca, username=USER, password="wrong")
    with pytest.raises(RegistryRefused):
        oci.push(image, oci_registry_token.ref("oci-tests/token", "v2"), registry=bad)
