"""Broker account secrets shared by the hub's broker files and the simulators: mosquitto's `$7$` password hash
and password file, and the passwords derived from the hub's secret key.

Two derivations (`SCHEMES`), chosen per account by the database (`devices.password_scheme`,
`workers.broker_password_scheme`): `hkdf`, every new account's, keyed by a key derived from the secret for broker
passwords only (`gridhub.settings.derive_key`); `legacy`, keyed by the secret itself, kept for the accounts
deployed before the keys were separated until `gridhub devices rotate` moves them (so an upgrade never locks a
device out)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

MOSQUITTO_ITERATIONS = 101
MOSQUITTO_SALT_BYTES = 12


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """A mosquitto 2 password file hash (`$7$`: PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt)."""
    salt = salt if salt is not None else os.urandom(MOSQUITTO_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mosquitto_verify(password: str, hashed: str) -> bool:
    """Whether `password` matches a `$7$` hash from a mosquitto password file."""
    parts = hashed.strip().split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3])
        expected = base64.b64decode(parts[4])
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(digest, expected)


def parse_passwd(text: str) -> dict[str, str]:
    """User → hash from a mosquitto password file (`user:$7$...` lines; blanks and `#` comments skipped)."""
    users: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            user, hashed = line.split(":", 1)
            users[user] = hashed
    return users


SCHEME_HKDF = "hkdf"
SCHEME_LEGACY = "legacy"
SCHEMES = (SCHEME_HKDF, SCHEME_LEGACY)


def _password(key: bytes, purpose: str, ident: str) -> str:
    mac = hmac.new(key, f"mqtt:{purpose}:{ident}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")[:32]


def derived_password(secret: str, purpose: str, ident: str) -> str:
    """An account's broker password (the `hkdf` scheme, every new account's): HMAC-SHA256 of
    `mqtt:<purpose>:<id>` under the broker-password key derived from the hub's secret, URL-safe base64, 32
    characters; stable across runs and never stored."""
    from gridhub.settings import DEVICE_KEY_INFO, derive_key

    return _password(derive_key(secret, DEVICE_KEY_INFO), purpose, ident)


def legacy_derived_password(secret: str, purpose: str, ident: str) -> str:
    """The `legacy` scheme: the same HMAC keyed by the secret itself, as every account had it before the keys were
    separated; kept only for accounts that have not been rotated yet."""
    return _password(secret.encode(), purpose, ident)


def account_password(secret: str, scheme: str, purpose: str, ident: str) -> str:
    """The broker password of an account on `scheme` (one of SCHEMES)."""
    if scheme == SCHEME_LEGACY:
        return legacy_derived_password(secret, purpose, ident)
    if scheme == SCHEME_HKDF:
        return derived_password(secret, purpose, ident)
    raise ValueError(f"unknown broker password scheme {scheme!r}: one of {', '.join(SCHEMES)}")


def device_password(secret: str, device_id: str) -> str:
    """A new device's broker password as `gridhub devices credentials` writes it (a device not yet rotated has its
    legacy one: read device-credentials.csv rather than deriving)."""
    return derived_password(secret, "device", device_id)
