"""Signed checkpoints: keys made on first use, signing and verifying, trust, and the hostile
cases (missing, wrong, stripped, unknown, replayed or misplaced signatures), each refused
before anything is unpacked or handed to CRIU.

Needs no root: artifacts are written with the writer and edited by hand.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import zstandard
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import cedana
from cedana import cli
from cedana.artifact import (
    Artifact,
    HostInfo,
    Manifest,
    Member,
    ProcessEntry,
    open_artifact,
    signing,
    write_artifact,
)
from cedana.artifact.signing import (
    CONFIG_DIR_ENV,
    SIGNATURE_NAME,
    PublicKey,
    SigningKey,
    host_key,
    trust_key,
)
from cedana.container import RuncContainer
from cedana.criu import CriuReport, CriuRequest
from cedana.errors import (
    ArtifactCorrupt,
    ArtifactError,
    SigningKeyError,
    UntrustedArtifact,
)
from cedana.process import CheckpointOptions, Process, checkpoint_tree, plan_dump
from cedana.runtimes import ContainerdContainer
from tests.capabilities import requires_tool
from tests.conftest import wait_for
from tests.fakes import FakeCriu
from tests.helpers import FORMS

REPO = Path(__file__).parents[2]

#: A pid far above what this machine hands out, so a restore's "is it free" check passes.
FREE_PID = 4_000_000

IMAGES = {"core-1.img": b"core", "pages-1.img": os.urandom(5000)}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for name, data in IMAGES.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def manifest() -> Manifest:
    return Manifest(
        created="2026-11-28T23:59:59Z",
        host=HostInfo(kernel="6.18.0", arch="x86_64", criu_version="4.2.1", hostname="box"),
        kind="process",
        options={"leave_running": True},
        tree=[ProcessEntry(pid=FREE_PID, ppid=1, command="sleep 100")],
        workload={"external": []},
    )


def make_key(path: Path) -> SigningKey:
    """A new Ed25519 key saved at ``path`` (0600), as `openssl genpkey` would."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return SigningKey.load(path)


def save_public(key: SigningKey, path: Path) -> Path:
    path.write_bytes(key.public_key.to_pem())
    return path


@pytest.fixture
def other(tmp_path: Path) -> SigningKey:
    """Another host's key, which this host does not trust."""
    return make_key(tmp_path / "other.key")


@pytest.fixture
def own_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config dir of this test's own (no host key, nothing trusted yet)."""
    path = tmp_path / "config" / "cedana"
    monkeypatch.setenv(CONFIG_DIR_ENV, str(path))
    return path


def dest_for(tmp_path: Path, form: str, name: str = "ckpt") -> Path:
    return tmp_path / (name if form == "directory" else f"{name}.{form}")


def write(
    images: Path,
    dest: Path,
    manifest: Manifest,
    form: str,
    signer: SigningKey | None,
) -> Path:
    write_artifact(images, dest, manifest, signer=signer, **FORMS[form])
    return dest


# --- reading and rewriting artifacts by hand -----------------------------------------------


def members(path: Path) -> list[tuple[str, bytes]]:
    """Every member of an artifact, in stored order (a directory's: manifest, sig, the rest)."""
    if path.is_dir():
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        first = [n for n in ("manifest.json", SIGNATURE_NAME) if n in names]
        return [(n, (path / n).read_bytes()) for n in first + [n for n in names if n not in first]]
    raw = path.read_bytes()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        out = []
        for info in tar:
            source = tar.extractfile(info)
            out.append((info.name, source.read() if source else b""))
        return out


def rebuild(path: Path, form: str, entries: list[tuple[str, bytes]]) -> Path:
    """Write ``entries`` as an artifact of ``form`` at ``path``, exactly as given."""
    if form == "directory":
        path.mkdir(mode=0o700)
        for name, data in entries:
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        return path
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    if form == "zstd":
        raw = zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    path.write_bytes(raw)
    return path


def edited(
    tmp_path: Path,
    source: Path,
    form: str,
    change: Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]],
) -> Path:
    return rebuild(dest_for(tmp_path, form, "edited"), form, change(members(source)))


def with_member(name: str, change: Callable[[bytes], bytes]) -> Any:
    def apply(entries: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        return [(n, change(d) if n == name else d) for n, d in entries]

    return apply


def edit_signature(change: Callable[[dict[str, Any]], object]) -> Any:
    def apply(data: bytes) -> bytes:
        document = json.loads(data)
        change(document)
        return json.dumps(document, sort_keys=True, indent=2).encode() + b"\n"

    return with_member(SIGNATURE_NAME, apply)


def flip_signature_bit(document: dict[str, Any]) -> None:
    value = bytearray(base64.b64decode(document["signature"]))
    value[10] ^= 0x01
    document["signature"] = base64.b64encode(bytes(value)).decode()


@attrs.define
class RecordingCriu:
    """A CRIU backend that records what a restore got as far as."""

    calls: list[str] = attrs.field(factory=list)

    def preflight(self) -> None:
        self.calls.append("preflight")

    def restore(self, request: CriuRequest) -> int:
        self.calls.append("restore")
        return FREE_PID

    def dump(self, request: CriuRequest) -> None:
        raise NotImplementedError

    def version(self) -> tuple[tuple[int, ...], str]:
        return (4, 2, 1), "4.2.1 (recording)"

    def report(self) -> CriuReport:
        raise NotImplementedError

    def cpuinfo_check(self, images_dir: Path) -> str | None:
        self.calls.append("cpuinfo_check")
        return None


@pytest.fixture
def extracted(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every directory an artifact is extracted into, from now on."""
    seen: list[Path] = []
    real = Artifact.extract

    def record(self: Artifact, dest: Path, **kwargs: Any) -> None:
        seen.append(dest)
        real(self, dest, **kwargs)

    monkeypatch.setattr(Artifact, "extract", record)
    return seen


def assert_refused(
    path: Path, error: type[Exception], match: str, extracted: list[Path], **trust: Any
) -> None:
    """``path`` is refused by open and by restore, before anything is unpacked or CRIU runs."""
    with pytest.raises(error, match=match):
        cedana.open(path, **trust)
    backend = RecordingCriu()
    with pytest.raises(error, match=match):
        cedana.restore(path, backend=backend, **trust)
    assert backend.calls == []
    assert extracted == []


# --- keys --------------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_host_key_is_made_on_first_use_private(own_config: Path, open_umask: None) -> None:
    """The first use makes the config dir 0700, signing.key 0600 and signing.pub (the same
    key's public half), whatever the umask; later uses read the same key."""
    assert not own_config.exists()
    key = host_key()
    assert own_config.stat().st_mode & 0o777 == 0o700
    assert (own_config / "signing.key").stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(own_config)) == ["signing.key", "signing.pub"]
    assert PublicKey.load(own_config / "signing.pub") == key.public_key
    assert host_key().public_key == key.public_key
    assert len(key.public_key.key_id) == 64


def test_host_key_without_create_is_not_made(own_config: Path) -> None:
    """Asking for the host key without making it is a clear error while there is none."""
    with pytest.raises(SigningKeyError, match="no signing key yet"):
        host_key(create=False)
    assert not own_config.exists()


def test_losing_the_race_uses_the_winners_key(
    own_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When another process makes the key while this one is making its own, this one keeps
    the other's (never replaces it) and leaves no temporary file."""
    winner: list[bytes] = []
    real = signing._generate

    def racing() -> Ed25519PrivateKey:
        monkeypatch.setattr(signing, "_generate", real)
        signing._create_host_key(own_config)  # the other process, first past the post
        winner.append((own_config / "signing.key").read_bytes())
        return real()

    monkeypatch.setattr(signing, "_generate", racing)
    key = host_key()
    assert (own_config / "signing.key").read_bytes() == winner[0]
    assert key.public_key == SigningKey.load(own_config / "signing.key").public_key
    assert sorted(os.listdir(own_config)) == ["signing.key", "signing.pub"]


def test_concurrent_first_use_agrees_on_one_key(own_config: Path, tmp_path: Path) -> None:
    """Six processes making the host key at once (released together once all are ready) all
    end up with the same key."""
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "from cedana.artifact.signing import host_key\n"
        "open(sys.argv[2], 'w').close()\n"
        "deadline = time.monotonic() + 60\n"
        "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
        "    time.sleep(0.001)\n"
        "print(host_key().public_key.key_id)\n"
    )
    ready = [tmp_path / f"ready-{n}" for n in range(6)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(go), str(flag)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for flag in ready
    ]
    try:
        wait_for(lambda: all(f.exists() for f in ready), timeout=60, what="all six ready")
        go.touch()
        ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert all(p.returncode == 0 for p in procs)
    assert ids == {host_key(create=False).public_key.key_id}
    assert sorted(os.listdir(own_config)) == ["signing.key", "signing.pub"]
    assert (own_config / "signing.key").stat().st_mode & 0o777 == 0o600


def test_config_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """CEDANA_CONFIG_DIR wins; else root uses /etc/cedana and a user their XDG config dir."""
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "given"))
    assert signing.config_dir() == tmp_path / "given"
    monkeypatch.delenv(CONFIG_DIR_ENV)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert signing.config_dir() == Path("/etc/cedana")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert signing.config_dir() == tmp_path / "xdg" / "cedana"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert signing.config_dir() == tmp_path / "home" / ".config" / "cedana"


def test_unusable_signing_keys(tmp_path: Path) -> None:
    """A missing key, one others can read, a non-Ed25519 key, an encrypted one or garbage:
    each a SigningKeyError saying what to do."""
    with pytest.raises(SigningKeyError, match="no signing key at"):
        SigningKey.load(tmp_path / "missing.key")
    loose = tmp_path / "loose.key"
    make_key(loose)
    loose.chmod(0o640)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        SigningKey.load(loose)
    rsa_key = tmp_path / "rsa.key"
    rsa_key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    rsa_key.chmod(0o600)
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        SigningKey.load(rsa_key)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    locked.chmod(0o600)
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    for path in (locked, garbage):
        with pytest.raises(SigningKeyError, match="openssl genpkey"):
            SigningKey.load(path)
    with pytest.raises(SigningKeyError, match="not a PEM public key"):
        PublicKey.load(garbage)


def test_unwritable_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the host key cannot be made, the error names the dir and the two ways out."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "file" / "cedana"))
    with pytest.raises(SigningKeyError, match=f"{CONFIG_DIR_ENV}.*signing_key=PATH"):
        host_key()


def test_signature_length_is_fixed(manifest: Manifest, other: SigningKey) -> None:
    """Signatures of different manifests by different keys have one length (the writer
    reserves the room for manifest.sig before it knows the manifest)."""
    lengths = {
        len(key.sign(m.to_json()).to_json())
        for key in (host_key(), other)
        for m in (manifest, attrs.evolve(manifest, kind="container", runtime="runc"))
    }
    assert len(lengths) == 1


# --- signed artifacts ----------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_signed_round_trip(form: str, images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """Signed with the host key, an artifact of every form opens by default, names its signer
    as trusted, and extracts as before; manifest.sig comes right after manifest.json."""
    dest = write(images, dest_for(tmp_path, form), manifest, form, host_key())
    assert [name for name, _ in members(dest)][:2] == ["manifest.json", SIGNATURE_NAME]
    ckpt = cedana.open(dest)
    assert ckpt.trusted
    assert ckpt.signer.key_id == host_key().public_key.key_id
    assert ckpt.signer.trusted_by == "this host's key"
    assert ckpt.summary()["signature"] == {
        "algorithm": "ed25519",
        "key_id": host_key().public_key.key_id,
        "trusted": True,
        "trusted_by": "this host's key",
    }
    ckpt.extract(tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == IMAGES
    assert ckpt.read_member("core-1.img") == b"core"


@requires_tool("tar", "zstd")
def test_standard_tar_lists_manifest_then_signature(
    images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """`tar --zstd -tf` lists a signed artifact: manifest.json first, manifest.sig second."""
    dest = write(images, tmp_path / "c.tar.zst", manifest, "zstd", host_key())
    names = subprocess.run(
        ["tar", "--zstd", "-tf", str(dest)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert names == ["manifest.json", SIGNATURE_NAME, *sorted(IMAGES)]


def test_writer_refuses_images_named_like_the_signature(
    images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """An images dir with its own manifest.sig at the top is refused, not stored."""
    (images / SIGNATURE_NAME).write_bytes(b"{}")
    with pytest.raises(ArtifactError, match="clash"):
        write_artifact(images, tmp_path / "c.tar.zst", manifest, signer=host_key())
    assert not (tmp_path / "c.tar.zst").exists()


# --- the hostile cases -----------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_unsigned_is_refused_with_how_to_accept(
    form: str, images: Path, tmp_path: Path, manifest: Manifest, extracted: list[Path]
) -> None:
    """An unsigned artifact (what cedana wrote before it signed) is refused by default, and
    the message says how to accept it."""
    dest = write(images, dest_for(tmp_path, form), manifest, form, None)
    assert SIGNATURE_NAME not in dict(members(dest))
    assert_refused(dest, UntrustedArtifact, "not signed.*trust='any'", extracted)
    with pytest.raises(UntrustedArtifact, match="--insecure-accept-unsigned"):
        cedana.open(dest)


@pytest.mark.parametrize("form", FORMS)
def test_old_unsigned_artifacts_still_open_with_trust_any(
    form: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """An unsigned artifact opens, verifies and reads with trust='any', showing it unsigned;
    restore with trust='any' gets as far as CRIU."""
    dest = write(images, dest_for(tmp_path, form), manifest, form, None)
    ckpt = cedana.open(dest, trust="any")
    assert not ckpt.trusted
    assert ckpt.signer.key_id is None
    assert ckpt.summary()["signature"] is None
    assert ckpt.read_member("core-1.img") == b"core"
    backend = RecordingCriu()
    restored = cedana.restore(dest, trust="any", backend=backend)
    assert backend.calls == ["preflight", "restore"]
    assert restored.pid == FREE_PID


@pytest.mark.parametrize("form", FORMS)
def test_flipped_signature_bit(
    form: str, images: Path, tmp_path: Path, manifest: Manifest, extracted: list[Path]
) -> None:
    """One bit of the signature flipped: refused, even with trust='any'."""
    signed = write(images, dest_for(tmp_path, form), manifest, form, host_key())
    bad = edited(tmp_path, signed, form, edit_signature(flip_signature_bit))
    assert_refused(bad, UntrustedArtifact, "does not verify", extracted)
    assert_refused(bad, UntrustedArtifact, "does not verify", extracted, trust="any")


@pytest.mark.parametrize("form", FORMS)
def test_stripped_signature(
    form: str, images: Path, tmp_path: Path, manifest: Manifest, extracted: list[Path]
) -> None:
    """A signed artifact with manifest.sig removed is an unsigned one: refused by default."""
    signed = write(images, dest_for(tmp_path, form), manifest, form, host_key())
    bare = edited(tmp_path, signed, form, lambda e: [x for x in e if x[0] != SIGNATURE_NAME])
    assert_refused(bare, UntrustedArtifact, "not signed", extracted)


@pytest.mark.parametrize("form", FORMS)
def test_unknown_signer_until_trusted(
    form: str,
    images: Path,
    tmp_path: Path,
    manifest: Manifest,
    other: SigningKey,
    own_config: Path,
    extracted: list[Path],
) -> None:
    """An artifact signed by a key this host does not know is refused, with what to do; it
    opens once its key is passed in trusted_keys, or trusted for good with trust_key."""
    dest = write(images, dest_for(tmp_path, form), manifest, form, other)
    assert_refused(
        dest, UntrustedArtifact, f"{other.public_key.key_id}.*cedana key trust", extracted
    )
    pub = save_public(other, tmp_path / "other.pub")
    ckpt = cedana.open(dest, trusted_keys=[pub])
    assert ckpt.signer.trusted_by == "trusted_keys"
    assert cedana.open(dest, trusted_keys=[other.public_key]).trusted
    seen = cedana.open(dest, trust="any")
    assert not seen.trusted
    assert seen.signer.key_id == other.public_key.key_id
    assert "NOT trusted" in seen.signer.describe()

    key, where = trust_key(pub)
    assert where == own_config / "trusted" / f"{key.key_id}.pub"
    assert (own_config / "trusted").stat().st_mode & 0o777 == 0o700
    ckpt = cedana.open(dest)
    assert ckpt.signer.trusted_by == str(where)
    backend = RecordingCriu()
    cedana.restore(dest, backend=backend)
    assert backend.calls == ["preflight", "restore"]


@pytest.mark.parametrize("form", FORMS)
def test_signature_replayed_onto_another_manifest(
    form: str, images: Path, tmp_path: Path, manifest: Manifest, extracted: list[Path]
) -> None:
    """A valid signature of one artifact copied onto another (whose manifest differs) does not
    verify: refused, even with trust='any'."""
    first = write(images, dest_for(tmp_path, form, "first"), manifest, form, host_key())
    (images / "core-1.img").write_bytes(b"something else entirely")
    second = write(images, dest_for(tmp_path, form, "second"), manifest, form, host_key())
    stolen = dict(members(first))[SIGNATURE_NAME]
    replayed = edited(tmp_path, second, form, with_member(SIGNATURE_NAME, lambda _: stolen))
    assert_refused(replayed, UntrustedArtifact, "does not verify", extracted)
    assert_refused(replayed, UntrustedArtifact, "copied from another", extracted, trust="any")


@pytest.mark.parametrize("form", FORMS)
def test_signed_head_replayed_onto_other_content(
    form: str, images: Path, tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole signed manifest (and its valid signature) put in front of other members: the
    signature holds, but the manifest's digests do not, so verification refuses it and a
    restore fails before CRIU runs, leaving nothing unpacked."""
    first = write(images, dest_for(tmp_path, form, "first"), manifest, form, host_key())
    head = members(first)[:2]
    forged = [(name, b"X" * len(data)) for name, data in members(first)[2:]]
    replayed = rebuild(dest_for(tmp_path, form, "replayed"), form, head + forged)
    with pytest.raises(ArtifactCorrupt, match="does not match its blake3"):
        cedana.open(replayed)
    work = tmp_path / "work"
    work.mkdir()
    backend = RecordingCriu()
    with pytest.raises(ArtifactCorrupt, match="does not match its blake3"):
        cedana.restore(replayed, backend=backend, work_dir=work)
    assert "restore" not in backend.calls
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("form", FORMS)
def test_manifest_changed_after_signing(
    form: str, images: Path, tmp_path: Path, manifest: Manifest, extracted: list[Path]
) -> None:
    """A manifest edited after it was signed (here: what to run at restore) is refused, even
    with trust='any'."""
    signed = write(images, dest_for(tmp_path, form), manifest, form, host_key())

    def edit(data: bytes) -> bytes:
        document = json.loads(data)
        document["workload"]["external"] = [{"pid": 1, "fd": 3, "key": "pipe:[1]"}]
        return json.dumps(document, sort_keys=True, indent=2).encode() + b"\n"

    bad = edited(tmp_path, signed, form, with_member("manifest.json", edit))
    assert_refused(bad, UntrustedArtifact, "changed after signing", extracted)
    assert_refused(bad, UntrustedArtifact, "changed after signing", extracted, trust="any")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(key_id="0" * 64), "key id that is not its key's"),
        (lambda d: d.update(algorithm="rsa"), "upgrade cedana"),
        (lambda d: d.pop("signature"), "malformed"),
        (lambda d: d.update(public_key="not base64!"), "malformed"),
        (lambda d: d.update(signature=base64.b64encode(b"short").decode()), "malformed"),
    ],
)
def test_malformed_signature_members(
    change: Callable[[dict[str, Any]], object],
    match: str,
    images: Path,
    tmp_path: Path,
    manifest: Manifest,
    extracted: list[Path],
) -> None:
    """A manifest.sig naming another key id, another algorithm, or missing or malformed
    fields is refused, even with trust='any'."""
    signed = write(images, tmp_path / "c.zstd", manifest, "zstd", host_key())
    bad = edited(tmp_path, signed, "zstd", edit_signature(change))
    assert_refused(bad, UntrustedArtifact, match, extracted, trust="any")


def test_signature_that_is_not_json(
    images: Path, tmp_path: Path, manifest: Manifest, extracted: list[Path]
) -> None:
    """A manifest.sig that is not JSON at all is refused, and one too large to be a
    signature is refused as damage."""
    signed = write(images, tmp_path / "c.zstd", manifest, "zstd", host_key())
    bad = edited(tmp_path, signed, "zstd", with_member(SIGNATURE_NAME, lambda _: b"\xff\x00"))
    assert_refused(bad, UntrustedArtifact, "malformed", extracted, trust="any")
    big = rebuild(
        tmp_path / "big.zstd",
        "zstd",
        with_member(SIGNATURE_NAME, lambda _: b" " * 5000)(members(signed)),
    )
    assert_refused(big, ArtifactCorrupt, "manifest.sig claims 5000 bytes", extracted, trust="any")


@pytest.mark.parametrize("form", ["zstd", "tar"])
@pytest.mark.parametrize("where", ["after a member", "twice", "at the end"])
def test_signature_out_of_place(
    form: str, where: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """manifest.sig anywhere but right after manifest.json is refused by verification, and an
    extraction of it leaves nothing behind."""
    signed = write(images, dest_for(tmp_path, form), manifest, form, host_key())
    entries = members(signed)
    head, sig, rest = entries[0], entries[1], entries[2:]
    layout = {
        "after a member": [head, rest[0], sig, *rest[1:]],
        "twice": [head, sig, sig, *rest],
        "at the end": [head, sig, *rest, sig],
    }[where]
    bad = rebuild(dest_for(tmp_path, form, "bad"), form, layout)
    with pytest.raises(ArtifactCorrupt, match="out of place|changed since"):
        cedana.open(bad, trust="any")
    out = tmp_path / "out"
    with pytest.raises(ArtifactCorrupt, match="out of place|changed since"):
        cedana.open(bad, trust="any", verify=False).extract(out)
    assert not out.exists()


@pytest.mark.parametrize("form", FORMS)
def test_manifest_listing_the_signature_is_refused(
    form: str, tmp_path: Path, manifest: Manifest
) -> None:
    """A manifest that lists manifest.sig as a member of its own (so that a signature could
    hide among the members) is refused when opened."""
    listed = attrs.evolve(
        manifest,
        members=[Member(name=SIGNATURE_NAME, size=2, sha256=hashlib.sha256(b"{}").hexdigest())],
    )
    bad = rebuild(
        dest_for(tmp_path, form),
        form,
        [("manifest.json", listed.to_json()), (SIGNATURE_NAME, b"{}")],
    )
    with pytest.raises(ArtifactCorrupt, match="lists its own signature"):
        open_artifact(bad, verify=False)


def test_signature_changed_since_opened(
    images: Path, tmp_path: Path, manifest: Manifest, other: SigningKey
) -> None:
    """An artifact re-signed by another key after it was opened (same manifest) is refused
    when it is read again: the check of who signed it held for the old signature only."""
    dest = write(images, tmp_path / "c.zstd", manifest, "zstd", host_key())
    ckpt = cedana.open(dest)
    write_artifact(images, dest, manifest, signer=other, overwrite=True)
    with pytest.raises(ArtifactCorrupt, match="signature changed since it was opened"):
        ckpt.extract(tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- trust decisions ---------------------------------------------------------------------------


def test_checkpoint_object_keeps_its_trust_decision(
    images: Path, tmp_path: Path, manifest: Manifest, other: SigningKey
) -> None:
    """An opened Checkpoint carries who signed it: one opened with trust='any' is still
    refused by a restore that does not say trust='any' itself; one trusted when opened
    (through trusted_keys) restores."""
    unsigned = write(images, tmp_path / "u.zstd", manifest, "zstd", None)
    ckpt = cedana.open(unsigned, trust="any")
    backend = RecordingCriu()
    with pytest.raises(UntrustedArtifact, match="not signed"):
        cedana.restore(ckpt, backend=backend)
    with pytest.raises(UntrustedArtifact, match="not signed"):
        Process.restore(ckpt, backend=backend)
    assert backend.calls == []
    cedana.restore(ckpt, backend=backend, trust="any")
    assert backend.calls == ["preflight", "restore"]

    foreign = write(images, tmp_path / "f.zstd", manifest, "zstd", other)
    pub = save_public(other, tmp_path / "other.pub")
    trusted = cedana.open(foreign, trusted_keys=[pub])
    backend = RecordingCriu()
    cedana.restore(trusted, backend=backend)
    assert backend.calls == ["preflight", "restore"]
    late = cedana.open(foreign, trust="any")
    assert Process.restore(late, backend=RecordingCriu(), trusted_keys=[pub]).pid == FREE_PID


@pytest.mark.parametrize(
    "restorer", [Process.restore, RuncContainer.restore, ContainerdContainer.restore]
)
def test_every_restorer_refuses_first(
    restorer: Callable[..., object], images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """Each runtime's own restore refuses an unsigned artifact before anything else."""
    unsigned = write(images, tmp_path / "u.zstd", manifest, "zstd", None)
    with pytest.raises(UntrustedArtifact, match="not signed"):
        restorer(unsigned, backend=RecordingCriu())


def test_bad_trust_argument(images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """trust takes 'trusted' or 'any' only."""
    dest = write(images, tmp_path / "c.zstd", manifest, "zstd", host_key())
    with pytest.raises(ValueError, match="trust must be"):
        cedana.open(dest, trust="yes")  # type: ignore[arg-type]


def test_unusable_trusted_key_file(
    images: Path, tmp_path: Path, manifest: Manifest, other: SigningKey, own_config: Path
) -> None:
    """A file in the trust dir that is not a public key is an error naming it."""
    dest = write(images, tmp_path / "c.zstd", manifest, "zstd", other)
    (own_config / "trusted").mkdir(parents=True)
    (own_config / "trusted" / "broken.pub").write_text("nonsense")
    with pytest.raises(SigningKeyError, match="broken.pub"):
        cedana.open(dest)


# --- checkpointing signs, and reads its key before freezing ---------------------------------


def test_checkpoint_signs_with_the_host_key(
    sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """A checkpoint is signed with this host's key by default, and opens as trusted."""
    dest = tmp_path / "a.tar.zst"
    plan = plan_dump(sleeper.pid, CheckpointOptions(leave_running=True))
    ckpt = checkpoint_tree(
        plan, dest, CheckpointOptions(leave_running=True), kind="process", backend=FakeCriu()
    )
    assert ckpt.signer.key_id == host_key().public_key.key_id
    assert ckpt.trusted
    assert cedana.open(dest).trusted


def test_checkpoint_signs_with_a_named_key(
    sleeper: subprocess.Popen[bytes], tmp_path: Path, other: SigningKey
) -> None:
    """signing_key= signs with that key; this host does not trust it until told to."""
    dest = tmp_path / "a.tar.zst"
    opts = CheckpointOptions(leave_running=True, signing_key=other.path)
    ckpt = checkpoint_tree(
        plan_dump(sleeper.pid, opts), dest, opts, kind="process", backend=FakeCriu()
    )
    assert ckpt.signer.key_id == other.public_key.key_id
    assert not ckpt.trusted
    with pytest.raises(UntrustedArtifact, match=other.public_key.key_id):
        cedana.open(dest)


def test_bad_signing_key_fails_before_freezing(
    sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """A signing key that cannot be used fails the checkpoint before CRIU dumps anything."""
    fake = FakeCriu()
    opts = CheckpointOptions(signing_key=tmp_path / "missing.key")
    with pytest.raises(SigningKeyError, match="no signing key at"):
        checkpoint_tree(
            plan_dump(sleeper.pid, opts), tmp_path / "a.tar.zst", opts, kind="process", backend=fake
        )
    assert fake.calls == []
    assert not (tmp_path / "a.tar.zst").exists()


# --- the command line: cedana key ---------------------------------------------------------------


def test_key_show_and_trust(
    own_config: Path,
    tmp_path: Path,
    other: SigningKey,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`cedana key show` prints this host's public key (PEM, ready for a file) and
    `cedana key trust FILE` (or - for stdin) trusts another's."""
    assert cli.main(["key", "show"]) == 0
    printed = capsys.readouterr().out
    assert PublicKey.from_pem(printed.encode(), source="stdout") == host_key().public_key
    assert cli.main(["key", "show", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["key_id"] == host_key().public_key.key_id

    pub = save_public(other, tmp_path / "other.pub")
    assert cli.main(["key", "trust", str(pub)]) == 0
    assert other.public_key.key_id in capsys.readouterr().out
    assert PublicKey.load(own_config / "trusted" / f"{other.public_key.key_id}.pub") == (
        other.public_key
    )
    third = make_key(tmp_path / "third.key")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(third.public_key.to_pem())))
    assert cli.main(["key", "trust", "-", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["key_id"] == third.public_key.key_id

    assert cli.main(["key", "trust", str(tmp_path / "other.key")]) == 1
    assert "not a PEM public key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["key", "trust"])
    with pytest.raises(SystemExit):
        cli.main(["key", "show", str(pub)])


def test_cli_restore_refuses_and_accepts_unsigned(
    images: Path,
    tmp_path: Path,
    manifest: Manifest,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`cedana restore` of an unsigned artifact: one error line saying how to accept it;
    --insecure-accept-unsigned passes trust='any' (the real restore is an integration test)."""
    dest = write(images, tmp_path / "u.tar.zst", manifest, "zstd", None)
    assert cli.main(["restore", str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cedana: error: ") and "--insecure-accept-unsigned" in err
    assert len(err.strip().splitlines()) == 1
    asked: list[str] = []

    def restore(path: str, *, trust: str, **_: object) -> Process:
        asked.append(trust)
        return Process(FREE_PID)

    monkeypatch.setattr(cedana, "restore", restore)
    assert cli.main(["restore", str(dest), "--insecure-accept-unsigned"]) == 0
    assert cli.main(["restore", str(dest)]) == 0
    assert asked == ["any", "trusted"]


def test_unreadable_trust_store_with_trust_any(
    images: Path, tmp_path: Path, manifest: Manifest, own_config: Path
) -> None:
    """trust='any' needs no trust store: a broken one only shows the signer as not trusted
    (a default open still refuses, naming the broken file)."""
    dest = write(images, tmp_path / "c.zstd", manifest, "zstd", host_key())
    (own_config / "trusted").mkdir()
    (own_config / "trusted" / "broken.pub").write_text("nonsense")
    with pytest.raises(SigningKeyError, match="broken.pub"):
        cedana.open(dest)
    ckpt = cedana.open(dest, trust="any")
    assert ckpt.signer.key_id == host_key().public_key.key_id
    assert not ckpt.trusted


@pytest.mark.parametrize("loose", ["config dir", "trust dir", "key file"])
def test_trust_store_writable_by_others_is_refused(
    loose: str,
    images: Path,
    tmp_path: Path,
    manifest: Manifest,
    other: SigningKey,
    own_config: Path,
) -> None:
    """A config dir, trust dir or trusted key file that others can write cannot say whom to
    trust: refused, naming it."""
    dest = write(images, tmp_path / "c.zstd", manifest, "zstd", other)
    _, where = trust_key(other.public_key)
    assert cedana.open(dest).trusted
    path = {"config dir": own_config, "trust dir": where.parent, "key file": where}[loose]
    path.chmod(path.stat().st_mode | 0o002)
    with pytest.raises(SigningKeyError, match=f"{path} can be written by others"):
        cedana.open(dest)


#: Written by cedana before it signed checkpoints (the writer of commit b6b38fe): core-1.img
#: holds b"core", pages-1.img b"pages of memory".
OLD_ARTIFACT = Path(__file__).parents[1] / "fixtures" / "old-unsigned.tar.zst"


def test_artifact_from_before_signatures(
    tmp_path: Path, extracted: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """An artifact an older cedana wrote still opens, verifies and extracts with trust='any';
    by default it is refused (by the API and the command line), saying how to accept it."""
    assert_refused(OLD_ARTIFACT, UntrustedArtifact, "not signed.*trust='any'", extracted)
    ckpt = cedana.open(OLD_ARTIFACT, trust="any")
    assert ckpt.signer.key_id is None
    assert "unsigned" in ckpt.signer.describe()
    assert ckpt.read_member("pages-1.img") == b"pages of memory"
    ckpt.extract(tmp_path / "out")
    assert (tmp_path / "out" / "core-1.img").read_bytes() == b"core"
    assert cli.main(["restore", str(OLD_ARTIFACT)]) == 1
    assert "--insecure-accept-unsigned" in capsys.readouterr().err
