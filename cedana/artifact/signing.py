"""Signed checkpoints: who made an artifact, not only whether it is intact.

The manifest's sha256 digests prove integrity, not origin: anyone can build an artifact whose
manifest lists the right digests for whatever they put in it. So cedana signs the exact bytes of
``manifest.json`` with an Ed25519 key, and the manifest covers every member's digest: a valid
signature from a trusted key vouches for every byte of the artifact.

The signature cannot live inside the manifest it signs, so it is a member of its own,
``manifest.sig``, stored right after ``manifest.json`` (in a directory artifact, beside it), a
small JSON object of fixed length::

    {"algorithm": "ed25519", "key_id": "<sha256 of the raw public key, hex>",
     "public_key": "<raw public key, base64>", "signature": "<64 bytes, base64>"}

Keys:

* **The host key** is made on first use in the config dir (:func:`config_dir`): ``/etc/cedana``
  for root, ``$XDG_CONFIG_HOME/cedana`` (``~/.config/cedana``) otherwise, or
  ``$CEDANA_CONFIG_DIR``. ``signing.key`` (PKCS#8 PEM, 0600) and ``signing.pub`` (PEM) are
  created in a 0700 directory, atomically and race-free: each maker writes a complete key to a
  temporary file and links it into place, which fails if another got there first, and then
  everyone uses the key that won.
* **Trusted keys** are this host's own key, the ``*.pub`` files (PEM) in the config dir's
  ``trusted/`` directory (:func:`trust_key` puts one there), and those a caller passes.

Keys are handled by the ``cryptography`` package (pyca), not by code of our own: it is the
maintained, audited Python binding of OpenSSL's Ed25519 and PEM code.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import attrs
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cedana.errors import SigningKeyError, UntrustedArtifact

__all__ = [
    "ALGORITHM",
    "CONFIG_DIR_ENV",
    "SIGNATURE_NAME",
    "PublicKey",
    "Signature",
    "SigningKey",
    "Trust",
    "TrustStatus",
    "check_trust",
    "config_dir",
    "host_key",
    "signing_key",
    "trust_key",
    "untrusted",
    "verify_signature",
]

_log = logging.getLogger("cedana.artifact")

SIGNATURE_NAME = "manifest.sig"
"""The signature member, stored right after ``manifest.json``."""

ALGORITHM = "ed25519"
CONFIG_DIR_ENV = "CEDANA_CONFIG_DIR"
"""An environment variable naming the config dir, over the defaults."""

SYSTEM_CONFIG_DIR = Path("/etc/cedana")
KEY_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"
TRUSTED_DIR = "trusted"

#: How much of ``manifest.sig`` a reader takes; the real one is about 230 bytes.
MAX_SIGNATURE = 4096
_MAX_KEY_FILE = 64 << 10
_RAW_KEY = 32
_RAW_SIGNATURE = 64

Trust = Literal["trusted", "any"]
"""``"trusted"``: refuse an artifact unless a trusted key signed it. ``"any"``: accept an
unsigned one or one signed by an unknown key (a signature that does not verify is refused
all the same)."""

_ACCEPT = (
    "pass trust='any' (--insecure-accept-unsigned) to accept it anyway, if you know where it "
    "came from"
)


def _raw_bytes(size: int) -> Callable[[object, attrs.Attribute[bytes], bytes], None]:
    def check(_instance: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
        if not isinstance(value, bytes) or len(value) != size:
            raise ValueError(f"{attribute.name} must be {size} bytes")

    return check


@attrs.frozen
class PublicKey:
    """An Ed25519 public key.

    Attributes:
        raw: The 32 raw bytes.
    """

    raw: bytes = attrs.field(validator=_raw_bytes(_RAW_KEY))

    @property
    def key_id(self) -> str:
        """The sha256 of the raw key, in hex: what inspect shows and signatures name."""
        return hashlib.sha256(self.raw).hexdigest()

    def to_pem(self) -> bytes:
        """The key as a PEM ``PUBLIC KEY`` (what ``openssl pkey -pubout`` writes)."""
        return Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def from_pem(cls, data: bytes, *, source: str) -> PublicKey:
        """Parse a PEM public key; ``source`` names it in errors.

        Raises:
            SigningKeyError: It is not a PEM Ed25519 public key.
        """
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise SigningKeyError(
                f"{source} is not a PEM public key; export one with `cedana key show` on the "
                "host that signs"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError(
                f"{source} is not an Ed25519 key, the only kind cedana signs with; export the "
                "signing host's key with `cedana key show`"
            )
        return cls(key.public_bytes_raw())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKey:
        """Read a PEM public key file.

        Raises:
            SigningKeyError: It cannot be read, or is not an Ed25519 public key.
        """
        return cls.from_pem(_read_key_file(Path(path), private=False), source=os.fspath(path))


@attrs.frozen
class Signature:
    """The content of ``manifest.sig``: an Ed25519 signature over the manifest's bytes.

    Attributes:
        public_key: The signer's key, as the signature carries it (only a trusted copy of it
            makes the signature mean anything).
        value: The 64 signature bytes.
    """

    public_key: PublicKey
    value: bytes = attrs.field(validator=_raw_bytes(_RAW_SIGNATURE))

    @property
    def key_id(self) -> str:
        """The signer's key id."""
        return self.public_key.key_id

    def to_json(self) -> bytes:
        """The ``manifest.sig`` bytes: sorted keys, fixed length for every key."""
        document = {
            "algorithm": ALGORITHM,
            "key_id": self.key_id,
            "public_key": base64.b64encode(self.public_key.raw).decode("ascii"),
            "signature": base64.b64encode(self.value).decode("ascii"),
        }
        return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode("ascii")

    @classmethod
    def from_json(cls, data: bytes, *, path: Path) -> Signature:
        """Parse ``manifest.sig`` of the artifact at ``path``.

        Raises:
            UntrustedArtifact: It is malformed, of an unknown algorithm, or its key id does
                not match its key.
        """
        try:
            document = json.loads(data)
            if not isinstance(document, dict) or set(document) != {
                "algorithm",
                "key_id",
                "public_key",
                "signature",
            }:
                raise ValueError("not the four fields of a signature")
            algorithm = document["algorithm"]
            if algorithm != ALGORITHM:
                raise UntrustedArtifact(
                    f"checkpoint {path} is signed with {algorithm!r}, which this cedana does not "
                    "verify, so nothing was restored from it; upgrade cedana"
                )
            signature = cls(
                public_key=PublicKey(_base64(document["public_key"])),
                value=_base64(document["signature"]),
            )
        except UntrustedArtifact:
            raise
        except (ValueError, TypeError, RecursionError) as exc:
            raise _refused(path, f"its {SIGNATURE_NAME} is malformed ({exc})") from None
        if document["key_id"] != signature.key_id:
            raise _refused(path, f"its {SIGNATURE_NAME} names a key id that is not its key's")
        return signature

    def verify(self, manifest: bytes, *, path: Path) -> None:
        """Check that this signature is the signer's over exactly ``manifest``.

        Raises:
            UntrustedArtifact: It is not (the manifest was changed after signing, or the
                signature was made for another manifest).
        """
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key.raw).verify(self.value, manifest)
        except InvalidSignature:
            raise _refused(
                path,
                "its signature does not verify against its manifest: the manifest was changed "
                "after signing, or the signature was copied from another checkpoint",
            ) from None


def _base64(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected base64 text, not {value!r}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"{value!r} is not base64") from None


def _refused(path: Path, why: str) -> UntrustedArtifact:
    return UntrustedArtifact(
        f"checkpoint {path} is refused: {why}; nothing was restored from it, do not use this file"
    )


def verify_signature(path: Path, manifest: bytes, signature: bytes | None) -> Signature | None:
    """Parse ``manifest.sig`` (``None`` when the artifact has none) and check it signs exactly
    the ``manifest`` bytes; whether its signer is trusted is :func:`check_trust`'s question.

    Raises:
        UntrustedArtifact: The signature is malformed or does not verify.
    """
    if signature is None:
        return None
    parsed = Signature.from_json(signature, path=path)
    parsed.verify(manifest, path=path)
    return parsed


# --------------------------------------------------------------------------- keys on disk


def config_dir() -> Path:
    """Where cedana keeps its keys: ``$CEDANA_CONFIG_DIR``, else ``/etc/cedana`` for root,
    else ``$XDG_CONFIG_HOME/cedana`` (``~/.config/cedana``)."""
    given = os.environ.get(CONFIG_DIR_ENV)
    if given:
        return Path(given)
    if os.geteuid() == 0:
        return SYSTEM_CONFIG_DIR
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "cedana"


def _read_key_file(path: Path, *, private: bool) -> bytes:
    what = "signing key" if private else "public key"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SigningKeyError(f"no {what} at {path}; check the path") from None
    except OSError as exc:
        raise SigningKeyError(f"cannot read the {what} {path} ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SigningKeyError(f"the {what} {path} is not a regular file")
        if private and st.st_mode & 0o077:
            raise SigningKeyError(
                f"the signing key {path} can be read by others (mode {st.st_mode & 0o777:04o}), "
                "so it no longer proves who signed; chmod 600 it, or better, make a new key"
            )
        if st.st_size > _MAX_KEY_FILE:
            raise SigningKeyError(f"the {what} {path} is too large to be a key")
        data = os.read(fd, _MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    return data


@attrs.define(eq=False)
class SigningKey:
    """An Ed25519 private key that signs manifests.

    Attributes:
        path: The PEM file it was read from.
        public_key: Its public half.
    """

    path: Path
    public_key: PublicKey
    _private: Ed25519PrivateKey = attrs.field(alias="private", repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Read an unencrypted PEM (PKCS#8) Ed25519 private key, as
        ``openssl genpkey -algorithm ed25519`` writes.

        Raises:
            SigningKeyError: It cannot be read, others can read it, or it is not such a key.
        """
        path = Path(path)
        data = _read_key_file(path, private=True)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise SigningKeyError(
                f"{path} is not an unencrypted PEM private key; make one with "
                "`openssl genpkey -algorithm ed25519 -out FILE`"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(
                f"{path} is not an Ed25519 key, the only kind cedana signs with; make one with "
                "`openssl genpkey -algorithm ed25519 -out FILE`"
            )
        public = PublicKey(key.public_key().public_bytes_raw())
        return cls(path=path, public_key=public, private=key)

    def sign(self, manifest: bytes) -> Signature:
        """Sign the exact ``manifest`` bytes (Ed25519 is deterministic: the same bytes give
        the same signature)."""
        return Signature(public_key=self.public_key, value=self._private.sign(manifest))


def _make_private_dir(directory: Path) -> None:
    """Create ``directory`` 0700 unless it exists (its parents with the usual modes)."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        return
    except FileNotFoundError:
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            return
    os.chmod(directory, 0o700)  # the umask may have taken bits; 0700 exactly


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, name: str, data: bytes, mode: int) -> Path:
    """Write ``data`` to a new temporary file in ``directory`` (``mode``), fsynced."""
    tmp = directory / f".{name}.tmp-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _create_host_key(directory: Path) -> None:
    """Make ``directory/signing.key`` unless another process makes it first."""
    _make_private_dir(directory)
    pem = _generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = _write_temp(directory, KEY_NAME, pem, 0o600)
    try:
        os.link(tmp, directory / KEY_NAME)  # never replaces: the first key made wins
        _log.info("created the host signing key %s", directory / KEY_NAME)
    except FileExistsError:
        _log.debug("another process created %s first; using its key", directory / KEY_NAME)
    finally:
        os.unlink(tmp)
    _fsync_dir(directory)


def _publish(directory: Path, name: str, data: bytes) -> Path:
    """Put ``data`` at ``directory/name`` (0644) atomically, unless it is there already."""
    path = directory / name
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return path
    tmp = _write_temp(directory, name, data, 0o644)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return path


def host_key(*, create: bool = True) -> SigningKey:
    """This host's signing key (``signing.key`` in :func:`config_dir`), made on first use
    together with ``signing.pub``.

    Raises:
        SigningKeyError: There is none and ``create`` is false, it cannot be made (the
            config dir is not writable), or the key file is unusable.
    """
    directory = config_dir()
    path = directory / KEY_NAME
    if create and not os.path.lexists(path):
        try:
            _create_host_key(directory)
        except OSError as exc:
            raise SigningKeyError(
                f"cannot create this host's signing key in {directory} "
                f"({exc.strerror or exc}); set {CONFIG_DIR_ENV} to a directory you can write, "
                "or pass signing_key=PATH (--signing-key)"
            ) from None
    elif not os.path.lexists(path):
        raise SigningKeyError(
            f"this host has no signing key yet ({path}); checkpoint once, or run `cedana key show`"
        )
    key = SigningKey.load(path)
    if create:
        try:
            _publish(directory, PUBLIC_NAME, key.public_key.to_pem())
        except OSError as exc:
            _log.warning("could not write %s: %s", directory / PUBLIC_NAME, exc)
    return key


def signing_key(path: str | os.PathLike[str] | None = None) -> SigningKey:
    """The key a checkpoint signs with: the one at ``path``, or this host's (made on first
    use)."""
    return host_key() if path is None else SigningKey.load(path)


def trust_key(key: str | os.PathLike[str] | bytes | PublicKey) -> tuple[PublicKey, Path]:
    """Trust ``key`` (a PEM file, PEM bytes or a :class:`PublicKey`) from now on: it is saved
    as ``trusted/KEY_ID.pub`` in :func:`config_dir`. Returns the key and where it went.

    Raises:
        SigningKeyError: ``key`` is not an Ed25519 public key, or the trust dir is not
            writable.
    """
    if isinstance(key, PublicKey):
        public = key
    elif isinstance(key, bytes):
        public = PublicKey.from_pem(key, source="the key given")
    else:
        public = PublicKey.load(key)
    directory = config_dir()
    try:
        _make_private_dir(directory)
        _make_private_dir(directory / TRUSTED_DIR)
        where = _publish(directory / TRUSTED_DIR, f"{public.key_id}.pub", public.to_pem())
    except OSError as exc:
        raise SigningKeyError(
            f"cannot save the trusted key in {directory / TRUSTED_DIR} ({exc.strerror or exc}); "
            f"set {CONFIG_DIR_ENV} to a directory you can write"
        ) from None
    _log.info("trusting key %s (%s)", public.key_id, where)
    return public, where


# --------------------------------------------------------------------------- trust


@attrs.frozen(kw_only=True)
class TrustStatus:
    """Who signed an artifact, and whether this host trusts them.

    Attributes:
        signature: The verified signature, or None for an unsigned artifact.
        trusted: A trusted key made the signature.
        trusted_by: Why its key is trusted: ``"this host's key"``, the trusted ``.pub`` file,
            or ``"trusted_keys"``; None when it is not.
    """

    signature: Signature | None
    trusted: bool
    trusted_by: str | None = None

    @property
    def key_id(self) -> str | None:
        """The signer's key id, or None when unsigned."""
        return None if self.signature is None else self.signature.key_id

    def to_dict(self) -> dict[str, object] | None:
        """JSON for ``summary()`` and ``inspect --json``; None when unsigned."""
        if self.signature is None:
            return None
        return {
            "algorithm": ALGORITHM,
            "key_id": self.signature.key_id,
            "trusted": self.trusted,
            "trusted_by": self.trusted_by,
        }

    def describe(self) -> str:
        """One line for people."""
        if self.signature is None:
            return "unsigned (NOT trusted)"
        if self.trusted:
            return f"{ALGORITHM} key {self.signature.key_id} (trusted: {self.trusted_by})"
        return f"{ALGORITHM} key {self.signature.key_id} (NOT trusted: an unknown key)"


KeySource = str | os.PathLike[str] | PublicKey


def _check_private(path: Path) -> None:
    """Refuse a trust dir or key file that others may write: whoever can write it decides
    what this host trusts (as ssh's StrictModes refuses)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SigningKeyError(f"cannot read {path} ({exc.strerror})") from None
    if st.st_mode & 0o022:  # a sticky dir still lets others add files: no exception
        raise SigningKeyError(
            f"{path} can be written by others (mode {st.st_mode & 0o777:04o}), so it cannot "
            "say whom to trust; chmod go-w it"
        )


def _trusted_keys(extra: Iterable[KeySource]) -> dict[str, str]:
    """Every trusted key id, with why it is trusted."""
    found: dict[str, str] = {}
    for item in extra:
        public = item if isinstance(item, PublicKey) else PublicKey.load(item)
        found.setdefault(public.key_id, "trusted_keys")
    directory = config_dir()
    _check_private(directory)
    _check_private(directory / TRUSTED_DIR)
    if os.path.lexists(directory / KEY_NAME):
        found.setdefault(host_key(create=False).public_key.key_id, "this host's key")
    try:
        names = sorted(os.listdir(directory / TRUSTED_DIR))
    except FileNotFoundError:
        names = []
    except OSError as exc:
        raise SigningKeyError(
            f"cannot read the trusted keys in {directory / TRUSTED_DIR} ({exc.strerror})"
        ) from None
    for name in names:
        if name.endswith(".pub") and not name.startswith("."):
            path = directory / TRUSTED_DIR / name
            _check_private(path)
            found.setdefault(PublicKey.load(path).key_id, os.fspath(path))
    return found


def check_trust(
    path: Path,
    signature: Signature | None,
    *,
    trust: Trust = "trusted",
    trusted_keys: Iterable[KeySource] | None = None,
) -> TrustStatus:
    """Decide whether the (already verified) ``signature`` of the artifact at ``path`` comes
    from a trusted key: this host's own, one in the trust dir, or one of ``trusted_keys``
    (PEM files or :class:`PublicKey`).

    Raises:
        UntrustedArtifact: It does not, and ``trust`` is ``"trusted"``.
        SigningKeyError: A trusted key file is unusable.
        ValueError: ``trust`` is neither ``"trusted"`` nor ``"any"``.
    """
    if trust not in ("trusted", "any"):
        raise ValueError(f"trust must be 'trusted' or 'any', not {trust!r}")
    if signature is None:
        status = TrustStatus(signature=None, trusted=False)
    else:
        try:
            why = _trusted_keys(trusted_keys or ()).get(signature.key_id)
        except SigningKeyError as exc:
            if trust != "any":
                raise
            # Accepting any signer needs no trust store; one this user cannot read only
            # means the signer is not shown as trusted.
            _log.warning("%s; showing the signer of %s as not trusted", exc, path)
            why = None
        status = TrustStatus(signature=signature, trusted=why is not None, trusted_by=why)
    if trust == "trusted" and not status.trusted:
        raise untrusted(path, status)
    return status


def untrusted(path: Path, status: TrustStatus) -> UntrustedArtifact:
    """The refusal of an artifact that ``status`` does not vouch for."""
    if status.signature is None:
        return UntrustedArtifact(
            f"checkpoint {path} is not signed (made by an older cedana, or its signature was "
            f"removed), so where it came from cannot be checked and nothing was restored from "
            f"it; take the checkpoint again with this cedana, or {_ACCEPT}"
        )
    return UntrustedArtifact(
        f"checkpoint {path} is signed by key {status.signature.key_id}, which this host does "
        "not trust, so nothing was restored from it; if you trust its maker, run `cedana key "
        "show` there and `cedana key trust FILE` here (or pass trusted_keys=[FILE]), or "
        f"{_ACCEPT}"
    )
