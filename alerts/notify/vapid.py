"""VAPID keys (RFC 8292) for Web Push: the hub's P-256 key pair, kept as a PEM file that only the hub may read.

`gridhub notify vapid-keys` calls `generate_keys`; `GET /api/v1/push/vapid-public-key` answers `public_key`, the
base64url (unpadded) uncompressed point that a browser's `pushManager.subscribe({applicationServerKey})` takes.
The `webpush` channel signs with `load`.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["VapidKeyError", "generate_keys", "load", "public_key"]


class VapidKeyError(ValueError):
    """The VAPID key file is missing, unreadable or not a P-256 private key; the message names the file."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _public_b64url(key: ec.EllipticCurvePrivateKey) -> str:
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return _b64url(point)


def generate_keys(path: Path | str) -> str:
    """Write a new P-256 private key to `path` (PEM, PKCS#8, mode 0600) and answer its public key (base64url).

    An existing file is never overwritten: the browsers' subscriptions are bound to the key, and a new one would
    silently end every push subscription."""
    path = Path(path)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise VapidKeyError(f"{path} exists: not overwritten (every push subscription is bound to that key; "
                            "remove it first to start over)") from exc
    except OSError as exc:
        raise VapidKeyError(f"{path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    path.chmod(0o600)  # whatever the umask
    return _public_b64url(key)


def load(path: Path | str) -> ec.EllipticCurvePrivateKey:
    """The private key in `path` (PEM; a DER file is accepted too)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VapidKeyError(f"VAPID key file {path}: {exc.strerror} (create it with `gridhub notify vapid-keys`)") \
            from exc
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise VapidKeyError(f"VAPID key file {path}: not a readable private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise VapidKeyError(f"VAPID key file {path}: not a P-256 (prime256v1) EC key")
    return key


def public_key(path: Path | str) -> str:
    """The public key of the private key in `path`: base64url, unpadded, the 65-byte uncompressed point."""
    return _public_b64url(load(path))
