"""The OCI layer without a registry: references, layouts, layers, archives, hostile input."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from cedana import oci
from cedana.errors import (
    ArtifactCorrupt,
    ArtifactExists,
    InvalidOption,
    ReferenceNotFound,
    RegistryRefused,
    RegistryUnavailable,
    UnsafeArtifact,
    UnsupportedFormat,
)
from cedana.oci import media
from cedana.oci.archive import read_archive


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _image(tmp_path: Path, files: dict[str, bytes] | None = None, **kw) -> oci.Image:
    layout = oci.Layout.create(tmp_path / "layout")
    src = tmp_path / "layer.tar"
    src.write_bytes(_tar(files or {"hello": b"hi"}))
    layer = oci.add_layer(layout, src, **kw)
    return oci.write_image(layout, layers=[layer], tag="v1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci:/x/dir", ("oci", "/x/dir", None, None, None)),
        ("oci:dir:v1", ("oci", "dir", None, None, "v1")),
        (
            "oci-archive:out.tar:localhost/app:ckpt",
            ("oci-archive", "out.tar", None, None, "localhost/app:ckpt"),
        ),
        ("docker://localhost:5000/app", ("docker", None, "localhost:5000", "app", "latest")),
        (
            "docker://reg.example.com/team/app:v1.2",
            ("docker", None, "reg.example.com", "team/app", "v1.2"),
        ),
        ("docker://[::1]:5000/a/b:c", ("docker", None, "[::1]:5000", "a/b", "c")),
    ],
)
def test_references_parse(text: str, expected: tuple[object, ...]) -> None:
    """Each reference form parses into its transport, path or host/repository, and tag;
    the tag defaults to latest for a registry and to none for a layout."""
    ref = oci.parse_reference(text)
    got = (ref.transport, str(ref.path) if ref.path else None, ref.host, ref.repository, ref.tag)
    assert got == expected


def test_reference_digest_and_loopback() -> None:
    """A digest pins the manifest; loopback hosts (plain HTTP by default) are told apart
    from the others (TLS by default)."""
    digest = "sha256:" + "a" * 64
    ref = oci.parse_reference(f"docker://127.0.0.1:5000/app@{digest}")
    assert ref.digest == digest and ref.tag is None and ref.loopback
    assert oci.parse_reference("docker://localhost/app").loopback
    assert oci.parse_reference("docker://[::1]:80/app").loopback
    assert not oci.parse_reference("docker://registry.example.com/app").loopback
    assert not oci.parse_reference("docker://10.1.2.3:5000/app").loopback
    assert str(ref) == f"docker://127.0.0.1:5000/app@{digest}"


@pytest.mark.parametrize(
    "text",
    [
        "app:latest",
        "docker://app",
        "docker:///app",
        "docker://host/App",
        "docker://host/app:bad tag",
        "docker://host/app@sha256:short",
        "oci:",
        "oci-archive:x.tar:bad name",
    ],
)
def test_bad_references_are_refused(text: str) -> None:
    """A string that is no reference is an InvalidOption naming the accepted forms or
    the part that is wrong, not a traceback later."""
    with pytest.raises(InvalidOption):
        oci.parse_reference(text)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_add_layer_compresses_and_records_diff_id(tmp_path: Path, compression) -> None:
    """A layer's blob decompresses to the tar it was made from, its diff_id is that tar's
    sha256, its media type names the compression, and the config lists the diff_id."""
    image = _image(tmp_path, compression=compression)
    tar = (tmp_path / "layer.tar").read_bytes()
    (layer,) = image.layers
    blob = image.layout.blob_path(layer.digest).read_bytes()
    plain = {
        "gzip": gzip.decompress,
        "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
        "none": lambda b: b,
    }[compression](blob)
    assert plain == tar
    assert (
        layer.media_type
        == {"gzip": media.LAYER_GZIP, "zstd": media.LAYER_ZSTD, "none": media.LAYER_TAR}[
            compression
        ]
    )
    assert image.diff_ids == ["sha256:" + hashlib.sha256(tar).hexdigest()]
    assert image.config_json["os"] == "linux"


def test_same_tar_gives_same_gzip_blob(tmp_path: Path) -> None:
    """gzip layers carry no time or name, so the same tar makes the same digest (a
    registry then has it already)."""
    a = _image(tmp_path / "a")
    b = _image(tmp_path / "b")
    assert a.layers == b.layers


def test_layout_on_disk_follows_the_spec(tmp_path: Path) -> None:
    """oci-layout, index.json (with the ref name annotation) and blobs/sha256 are as the
    image-layout spec says, and every blob's file name is its sha256."""
    image = _image(tmp_path)
    root = image.layout.path
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    assert index["schemaVersion"] == 2
    (entry,) = index["manifests"]
    assert entry["digest"] == image.digest
    assert entry["mediaType"] == media.IMAGE_MANIFEST
    assert entry["annotations"][media.ANNOTATION_REF_NAME] == "v1"
    for blob in (root / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    manifest = json.loads(image.layout.blob_path(image.digest).read_bytes())
    assert manifest["config"]["mediaType"] == media.IMAGE_CONFIG


def test_artifact_has_empty_config_and_artifact_type(tmp_path: Path) -> None:
    """An artifact (image-spec 1.1) gets the empty config {} and its artifactType, and
    reads back as such."""
    layout = oci.Layout.create(tmp_path / "l")
    blob = layout.add_bytes(b"payload", media.CEDANA_CHECKPOINT_LAYER_ZSTD)
    image = oci.write_image(layout, layers=[blob], artifact_type=media.CEDANA_ARTIFACT)
    again = layout.image()
    assert again.artifact_type == media.CEDANA_ARTIFACT
    assert again.config.digest == media.EMPTY_JSON_DIGEST
    assert layout.read_blob(again.config) == b"{}"
    assert again.digest == image.digest


def test_tag_replaces_same_name_and_resolve_needs_one(tmp_path: Path) -> None:
    """Writing under a taken name replaces that entry; a layout with two images needs a
    name, and an unknown name is ReferenceNotFound."""
    image = _image(tmp_path, {"a": b"1"})
    layout = image.layout
    src = tmp_path / "other.tar"
    src.write_bytes(_tar({"b": b"2"}))
    other = oci.write_image(layout, layers=[oci.add_layer(layout, src)], tag="v1")
    assert [d.digest for d in layout.manifests()] == [other.digest]
    oci.write_image(layout, layers=[oci.add_layer(layout, src, compression="none")], tag="v2")
    with pytest.raises(ReferenceNotFound, match="2 images"):
        layout.image()
    assert layout.image("v1").digest == other.digest
    with pytest.raises(ReferenceNotFound):
        layout.image("v3")


def test_create_refuses_a_non_empty_dir(tmp_path: Path) -> None:
    """A new layout is never made over something else."""
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    with pytest.raises(ArtifactExists):
        oci.Layout.create(tmp_path / "x")
    assert (tmp_path / "x" / "file").read_text() == "keep me"


def test_tampered_blob_is_refused(tmp_path: Path) -> None:
    """A blob whose content no longer matches its digest fails verification and reading."""
    image = _image(tmp_path)
    path = image.layout.blob_path(image.config.digest)
    path.write_bytes(path.read_bytes().replace(b"linux", b"LINUX"))
    with pytest.raises(ArtifactCorrupt):
        image.layout.verify(image)
    with pytest.raises(ArtifactCorrupt):
        image.layout.read_json(image.config)


def test_receive_stores_nothing_on_mismatch(tmp_path: Path) -> None:
    """A received blob whose bytes are not its digest, or longer than its size, is not
    stored, under its name or a temporary one."""
    layout = oci.Layout.create(tmp_path / "l")
    desc = oci.Descriptor(
        media_type="x", digest="sha256:" + hashlib.sha256(b"good").hexdigest(), size=4
    )
    with pytest.raises(ArtifactCorrupt), layout.receive(desc) as out:
        out.write(b"evil")
    with pytest.raises(ArtifactCorrupt), layout.receive(desc) as out:
        out.write(b"good!")
    assert list((layout.path / "blobs" / "sha256").iterdir()) == []


def test_archive_round_trip_and_atomic_write(tmp_path: Path) -> None:
    """An image written as an oci-archive reads back with the same manifest digest and
    ref name; an existing archive is not overwritten unless asked; no temporary is left."""
    image = _image(tmp_path)
    out = tmp_path / "out.tar"
    oci.push(image, f"oci-archive:{out}:localhost/app:v1")
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[:4] == ["blobs", "blobs/sha256", "oci-layout", "index.json"]
    back = oci.pull(f"oci-archive:{out}:localhost/app:v1", tmp_path / "back")
    assert back.digest == image.digest
    with pytest.raises(ArtifactExists):
        oci.push(image, f"oci-archive:{out}")
    oci.push(image, f"oci-archive:{out}", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "layer.tar", "layout", "out.tar"]


def test_push_to_oci_dir_adds_to_an_existing_layout(tmp_path: Path) -> None:
    """oci:DIR makes a layout or adds the image to one already there, blobs copied and
    checked."""
    image = _image(tmp_path)
    oci.push(image, f"oci:{tmp_path / 'dest'}:one")
    oci.push(image, f"oci:{tmp_path / 'dest'}:two")
    dest = oci.Layout.open(tmp_path / "dest")
    assert dest.image("one").digest == dest.image("two").digest == image.digest
    dest.verify(dest.image("one"))


def _hostile_archive(path: Path, kind: str) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("oci-layout")
        data = b'{"imageLayoutVersion":"1.0.0"}'
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        if kind == "symlink":
            info = tarfile.TarInfo("blobs/sha256/" + "a" * 64)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/shadow"
            tar.addfile(info)
        elif kind == "escape":
            info = tarfile.TarInfo("../../evil")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        elif kind == "device":
            info = tarfile.TarInfo("blobs/sha256/" + "b" * 64)
            info.type = tarfile.CHRTYPE
            tar.addfile(info)
        elif kind == "misnamed":
            info = tarfile.TarInfo("blobs/sha256/" + "c" * 64)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("symlink", UnsafeArtifact),
        ("escape", UnsafeArtifact),
        ("device", UnsafeArtifact),
        ("misnamed", ArtifactCorrupt),
    ],
)
def test_hostile_archives_are_refused(tmp_path: Path, kind: str, error: type) -> None:
    """An archive with a link, a device, a path outside the layout, or a blob whose
    content is not its name is refused, and pull leaves no layout behind."""
    path = tmp_path / "bad.tar"
    _hostile_archive(path, kind)
    with pytest.raises(error):
        oci.pull(f"oci-archive:{path}", tmp_path / "into")
    assert not (tmp_path / "into").exists()
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_sparse_member_is_refused_before_it_is_written(tmp_path: Path, fmt: str) -> None:
    """A sparse member (a few bytes in the tar, 512 MiB once unpacked) is refused as
    UnsafeArtifact from its header: no layout blob holds a hole, and unpacking it would
    fill the disk with zeros before its digest could be checked. Fails while it is
    written out (and then found ArtifactCorrupt)."""
    import shutil
    import subprocess

    assert shutil.which("tar"), "GNU tar (Debian's essential tar) writes the sparse member"
    src = tmp_path / "src" / "blobs" / "sha256"
    src.mkdir(parents=True)
    (tmp_path / "src" / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    with open(src / ("d" * 64), "wb") as f:
        f.truncate(512 << 20)
    archive = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", f"--format={fmt}", "--sparse", "-C", tmp_path / "src", "-cf", archive, "."],
        check=True,
    )
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(UnsafeArtifact, match="sparse"):
        oci.pull(f"oci-archive:{archive}", tmp_path / "into")
    assert not (tmp_path / "into").exists()


def test_blob_longer_than_its_descriptor_is_not_read_to_its_end(tmp_path: Path) -> None:
    """An ``oci:`` layout whose blob files never end (here /dev/zero in their place) is
    refused as ArtifactCorrupt once a blob passes its descriptor's size, by reading and
    by verifying (and an endless ``oci-layout`` file once past its bound), in a child with 256 MiB of address space and 60 s. Fails while a blob
    is read whole first (MemoryError) or hashed to its end (never)."""
    import subprocess
    import sys

    image = _image(tmp_path)
    for desc in [image.descriptor, *image.blobs()]:
        path = image.layout.blob_path(desc.digest)
        path.unlink()
        path.symlink_to("/dev/zero")
    (tmp_path / "endless").mkdir()
    (tmp_path / "endless" / "oci-layout").symlink_to("/dev/zero")
    script = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (256 << 20, 256 << 20))
from cedana import oci
from cedana.errors import ArtifactCorrupt
layout = oci.Layout.open({str(image.layout.path)!r})
desc = layout.manifests()[0]
for read in (layout.read_blob, layout.verify_blob, layout.image):
    try:
        read(desc)
    except ArtifactCorrupt:
        continue
    sys.exit(f"{{read.__name__}} took it")
try:
    oci.Layout.open({str(tmp_path / "endless")!r})
except ArtifactCorrupt:
    pass
else:
    sys.exit("an endless oci-layout file was taken")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_archive_without_index_or_not_a_tar(tmp_path: Path) -> None:
    """A tar that is no layout, or a file that is no tar, is ArtifactCorrupt."""
    (tmp_path / "empty.tar").write_bytes(_tar({"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}))
    with pytest.raises(ArtifactCorrupt, match=r"index\.json"):
        read_archive(tmp_path / "empty.tar", oci.Layout.create(tmp_path / "a"))
    (tmp_path / "junk").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ArtifactCorrupt):
        read_archive(tmp_path / "junk", oci.Layout.create(tmp_path / "b"))


def test_descriptor_checks(tmp_path: Path) -> None:
    """Descriptors from untrusted manifests are checked: a digest must be sha256 of the
    right form (it becomes a file name), a size an integer."""
    good = {"mediaType": "x", "digest": "sha256:" + "0" * 64, "size": 3}
    assert oci.Descriptor.from_json(good).size == 3
    with pytest.raises(ArtifactCorrupt):
        oci.Descriptor.from_json({**good, "digest": "sha256:../../etc/passwd"})
    with pytest.raises(UnsupportedFormat):
        oci.Descriptor.from_json({**good, "digest": "sha512:" + "0" * 128})
    with pytest.raises(ArtifactCorrupt):
        oci.Descriptor.from_json({**good, "size": "3"})
    with pytest.raises(InvalidOption):
        oci.Layout.create(tmp_path / "l").blob_path("sha256:../x")


def test_multi_platform_index_resolves_to_this_host(tmp_path: Path) -> None:
    """An index entry that is itself an index (a multi-platform image) resolves to the
    manifest for this host's os and architecture."""
    image = _image(tmp_path)
    layout = image.layout
    other = {"os": "linux", "architecture": "s390x"}
    index = {
        "schemaVersion": 2,
        "mediaType": media.IMAGE_INDEX,
        "manifests": [
            {**image.descriptor.to_json(), "platform": other},
            {**image.descriptor.to_json(), "platform": oci.host_platform()},
        ],
    }
    desc = layout.add_bytes(json.dumps(index).encode(), media.IMAGE_INDEX)
    layout.tag(desc, "multi")
    assert layout.image("multi").digest == image.digest


# --- the registry client's error map and credentials (no registry needed) ---------------


def _http_error(status: int, body: bytes = b"") -> Exception:
    import requests

    response = requests.Response()
    response.status_code = status
    response._content = body
    return requests.exceptions.HTTPError(response=response)


def _mapped_errors_cases() -> list[tuple[Exception, type[Exception], str]]:
    import dxf.exceptions as dxf_errors
    import requests

    denied = b'{"errors":[{"code":"DENIED","message":"requested access is denied"}]}'
    return [
        (requests.exceptions.ConnectionError("refused"), RegistryUnavailable, "cannot reach"),
        (requests.exceptions.ReadTimeout("slow"), RegistryUnavailable, "timed out"),
        (requests.exceptions.SSLError("CERTIFICATE_VERIFY_FAILED"), RegistryUnavailable, "ca_file"),
        (
            requests.exceptions.SSLError("[SSL: WRONG_VERSION_NUMBER]"),
            RegistryUnavailable,
            "tls=False",
        ),
        (requests.exceptions.ChunkedEncodingError("cut"), RegistryUnavailable, "dropped"),
        (
            _http_error(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'),
            ReferenceNotFound,
            "MANIFEST_UNKNOWN",
        ),
        (_http_error(403, denied), RegistryRefused, "DENIED: requested access is denied"),
        (_http_error(500, b"boom"), RegistryRefused, "answered 500"),
        (dxf_errors.DXFUnauthorizedError(), RegistryRefused, "needs credentials"),
        (dxf_errors.DXFAuthInsecureError(), RegistryRefused, "plain HTTP"),
        (dxf_errors.DXFDigestMismatchError("sha256:a", "sha256:b"), ArtifactCorrupt, "tampered"),
        (dxf_errors.DXFMountFailed(), RegistryRefused, "registry"),
    ]


def test_registry_errors_are_all_mapped() -> None:
    """Every error requests, python-dxf or the registry raise comes out as one of
    cedana's, saying what was done with which registry; nothing third-party gets out."""
    from cedana.errors import CedanaError
    from cedana.oci.distribution import mapped_errors

    ref = oci.parse_reference("docker://registry.example:5000/app:v1")
    for raised, expected, words in _mapped_errors_cases():
        with (
            pytest.raises(expected, match=words) as caught,
            mapped_errors("pushing", ref, oci.RegistryOptions()),
        ):
            raise raised
        assert isinstance(caught.value, CedanaError)
        assert "registry.example:5000" in str(caught.value)
        assert caught.value.__cause__ is raised


def test_wrong_credentials_and_plain_http_hints() -> None:
    """With credentials given, a 401 says they were refused; a 400 to plain HTTP says
    the registry may want TLS."""
    import dxf.exceptions as dxf_errors

    from cedana.oci.distribution import mapped_errors

    ref = oci.parse_reference("docker://localhost:5000/app:v1")
    with (
        pytest.raises(RegistryRefused, match="refused the credentials"),
        mapped_errors("pulling", ref, oci.RegistryOptions(), credentials=True),
    ):
        raise dxf_errors.DXFUnauthorizedError()
    with (
        pytest.raises(RegistryRefused, match="tls=True") as caught,
        mapped_errors("pulling", ref, oci.RegistryOptions()),
    ):
        raise _http_error(400)
    assert caught.value.status == 400


def test_stored_credentials_from_auth_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials come from the first auth file (REGISTRY_AUTH_FILE, podman's, docker's)
    with an inline entry for the host; others are skipped."""
    import base64

    from cedana.oci.distribution import stored_credentials

    auth = tmp_path / "auth.json"
    token = base64.b64encode(b"me:pa:ss").decode()
    auth.write_text(json.dumps({"auths": {"reg.example:5000": {"auth": token}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert stored_credentials("reg.example:5000") == ("me", "pa:ss")
    assert stored_credentials("other.example") is None
    auth.write_text("not json")
    assert stored_credentials("reg.example:5000") is None


def _subclasses(cls: type) -> set[type]:
    out = set()
    sub: type
    for sub in cls.__subclasses__():
        out |= {sub, *_subclasses(sub)}
    return out


def _instance(cls: type) -> BaseException:
    """An instance of ``cls`` whatever its constructor wants (nothing, numbers, text)."""
    for args in ((), (0, 0), ("x", "x"), ("x",), ("x", "x", 0)):
        try:
            exc = cls(*args)
            str(exc)
        except (TypeError, ValueError, AttributeError, IndexError):
            continue
        assert isinstance(exc, BaseException)
        return exc
    raise AssertionError(f"cannot make a {cls}")


def test_every_requests_and_dxf_error_is_mapped() -> None:
    """The map is complete (as httpx checks its own): every exception class of requests
    and python-dxf, raised inside it, comes out as a CedanaError."""
    import dxf.exceptions as dxf_errors
    import requests

    from cedana.errors import CedanaError
    from cedana.oci.distribution import mapped_errors

    ref = oci.parse_reference("docker://localhost:5000/app:v1")
    classes = _subclasses(requests.exceptions.RequestException) | _subclasses(dxf_errors.DXFError)
    classes = {c for c in classes if c.__module__.startswith(("requests", "dxf"))}
    assert len(classes) > 20
    for cls in classes:
        raised = _instance(cls)
        with pytest.raises(CedanaError), mapped_errors("testing", ref, oci.RegistryOptions()):
            raise raised


def test_check_destination_refuses_early(tmp_path: Path) -> None:
    """An existing oci-archive (without overwrite) and a registry digest are refused by
    the check commit and push run before any work, as push itself would refuse them."""
    from cedana.oci.transfer import check_destination

    (tmp_path / "x.tar").write_bytes(b"keep")
    with pytest.raises(ArtifactExists):
        check_destination(f"oci-archive:{tmp_path / 'x.tar'}")
    assert check_destination(f"oci-archive:{tmp_path / 'x.tar'}", overwrite=True).path
    with pytest.raises(InvalidOption, match="not a digest"):
        check_destination("docker://localhost:5000/app@sha256:" + "0" * 64)
    assert (tmp_path / "x.tar").read_bytes() == b"keep"


@pytest.mark.parametrize("title", ["layout", "/", "..", "a\x00b", "x" * 300])
def test_a_layers_title_does_not_choose_where_the_pull_goes(tmp_path: Path, title: str) -> None:
    """A pushed checkpoint's layer title (the registry's word) names no file: a title
    that is the pull's own layout directory, the directory itself, or no file name at
    all still pulls the checkpoint, into a file of the pull's choosing, and the private
    temp dir is gone afterwards. Fails while the title is used as the file's name
    (IsADirectoryError, ValueError)."""
    from cedana import images
    from tests.unit.test_restore_plans import _ROOTFS, _artifact, _container

    art = _artifact(
        tmp_path, runtime="runc", workload={"container": _container(tmp_path), "rootfs": _ROOTFS}
    )
    layout = oci.Layout.create(tmp_path / "pushed")
    blob = layout.add_file(
        art, media.CEDANA_CHECKPOINT_LAYER_ZSTD, annotations={media.ANNOTATION_TITLE: title}
    )
    image = oci.write_image(layout, layers=[blob], artifact_type=media.CEDANA_ARTIFACT)
    oci.push(image, f"oci-archive:{tmp_path / 'pushed.tar'}")
    for ref in (f"oci:{tmp_path / 'pushed'}", f"oci-archive:{tmp_path / 'pushed.tar'}"):
        with images.pulled(ref) as path:
            assert path.is_file() and path.read_bytes() == art.read_bytes()
            where = path.parent
        assert not where.exists()
