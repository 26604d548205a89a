"""Broker account secrets shared by the hub's broker files and the simulators: mosquitto's `$7$` password hash
and password file, and the passwords derived from the hub's secret key."""

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


def derived_password(secret: str, purpose: str, ident: str) -> str:
    """An account's broker password derived from the hub's secret key: HMAC-SHA256 of `mqtt:<purpose>:<id>`,
    URL-safe base64, 32 characters; stable across runs and never stored."""
    mac = hmac.new(secret.encode(), f"mqtt:{purpose}:{ident}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")[:32]


def device_password(secret: str, device_id: str) -> str:
    """A device's broker password as `gridhub devices credentials` writes it."""
    return derived_password(secret, "device", device_id)
