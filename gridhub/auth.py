"""Users, passwords and tokens: who is calling and which grids they may see.

Two kinds of signed token share the token key (`token_key`, derived from the root secret): the log-in's access token (`sub`, `exp`, `pwd`: no audience) and the
stream ticket (`aud: gridhub-stream`, a minute long, carrying the access token's own `exp` as `texp`). Each decoder
accepts only its own kind: a ticket is refused as a Bearer token (PyJWT refuses an audience nobody asked for), and
an access token is refused as a ticket.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("grid_worker", "grid_head", "street_officer", "bureau", "admin")
_hasher = PasswordHasher()
# A real hash verified when the user does not exist, so that a wrong user costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("gridhub-no-such-user")
ALGORITHM = "HS256"


class AuthError(Exception):
    """Log-in or token refused; the message is safe to show."""


@dataclass(frozen=True)
class Principal:
    """The caller: a registry worker with a role and a scope."""

    id: str
    name: str
    role: str
    street_id: str | None = None
    grids: frozenset[str] = field(default_factory=frozenset)  # the grids in scope (empty with all_grids)

    @property
    def all_grids(self) -> bool:
        return self.role in ("bureau", "admin")

    def sees_grid(self, grid_id: str | None) -> bool:
        return self.all_grids or (grid_id is not None and grid_id in self.grids)

    def grid_filter(self, column: str) -> tuple[str, list[Any]]:
        """A SQL condition restricting `column` (a grid id) to this principal's scope, with its parameters."""
        if self.all_grids:
            return "TRUE", []
        return f"{column} = ANY(%s)", [list(self.grids)]


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise ValueError("a password needs at least 8 characters")
    return _hasher.hash(password)


def set_password(conn: psycopg.Connection[Any], worker_id: str, password: str) -> None:
    h = hash_password(password)
    cur = conn.execute(
        "UPDATE workers SET password_hash = %s, password_set_at = now() WHERE id = %s", (h, worker_id)
    )
    if cur.rowcount == 0:
        raise AuthError(f"worker {worker_id!r} is not in the registry: import it with `gridhub registry import`")
    conn.commit()


def check_password(stored_hash: str | None, password: str) -> bool:
    try:
        _hasher.verify(stored_hash or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False
    return stored_hash is not None


def token_key(secret: str) -> bytes:
    """The key tokens are signed with: derived from the hub's root secret (`Settings.signing_key()`) by HKDF with
    its own label, never the secret itself, so that device passwords and tokens do not share a key."""
    from gridhub.settings import TOKEN_KEY_INFO, derive_key

    return derive_key(secret, TOKEN_KEY_INFO)


def issue_token(principal_id: str, key: str, ttl_s: int, password_set_at: float | None) -> str:
    """An access token for a person who has just proved their password; `key` is the root secret, the token is
    signed with `token_key(key)`. An account that never set a password gets none (`pwd` is the password's time,
    and `decode_token` refuses a token without one)."""
    if not password_set_at:
        raise AuthError(f"{principal_id} has no password: no token for an account without one")
    now = int(time.time())
    claims = {"sub": principal_id, "iat": now, "exp": now + ttl_s, "pwd": int(password_set_at)}
    return jwt.encode(claims, token_key(key), algorithm=ALGORITHM)


def decode_token(token: str, key: str) -> dict[str, Any]:
    """An access token's claims; a stream ticket (or any token with an audience) is refused."""
    try:
        claims: dict[str, Any] = jwt.decode(token, token_key(key), algorithms=[ALGORITHM],
                                            options={"require": ["sub", "exp", "pwd"]})
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token expired: log in again") from exc
    except jwt.PyJWTError as exc:
        raise AuthError("invalid token") from exc
    if not isinstance(claims.get("pwd"), int) or claims["pwd"] <= 0:  # minted for an account without a password
        raise AuthError("invalid token")
    return claims


STREAM_AUDIENCE = "gridhub-stream"
TICKET_TTL_S = 60


def issue_stream_ticket(claims: dict[str, Any], key: str, ttl_s: int = TICKET_TTL_S) -> tuple[str, int]:
    """A ticket to open `/api/v1/stream` once, from a verified access token's claims: (ticket, seconds it is good
    for). It keeps the access token's `pwd` (a password change revokes it) and its expiry as `texp` (the stream it
    opens ends when the log-in does); it never outlives the access token."""
    now = int(time.time())
    token_exp = int(claims["exp"])
    exp = min(now + ttl_s, token_exp)
    ticket = jwt.encode({"sub": claims["sub"], "aud": STREAM_AUDIENCE, "iat": now, "exp": exp,
                         "texp": token_exp, "pwd": int(claims.get("pwd", 0)), "jti": secrets.token_urlsafe(12)},
                        token_key(key), algorithm=ALGORITHM)
    return ticket, max(0, exp - now)


def decode_stream_ticket(ticket: str, key: str) -> dict[str, Any]:
    """A stream ticket's claims (an access token is refused here)."""
    try:
        claims: dict[str, Any] = jwt.decode(ticket, token_key(key), algorithms=[ALGORITHM], audience=STREAM_AUDIENCE,
                                            options={"require": ["sub", "exp", "aud", "jti", "texp"]})
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("stream ticket expired: ask for a new one (POST /api/v1/stream/ticket)") from exc
    except jwt.PyJWTError as exc:
        raise AuthError("invalid stream ticket") from exc
    return claims


class TicketLedger:
    """The tickets already used in this process, each remembered until it expires: a ticket opens one stream.
    Per process: with several API processes behind a balancer a ticket could open one stream in each within
    its minute (it is still bound to its person, their password and their log-in's expiry)."""

    def __init__(self) -> None:
        self._used: dict[str, float] = {}

    def use(self, jti: str, exp: float) -> bool:
        """True the first time `jti` is presented, False after."""
        now = time.time()
        if len(self._used) > 1024:
            self._used = {j: e for j, e in self._used.items() if e >= now}
        if jti in self._used:
            return False
        self._used[jti] = exp
        return True


PRINCIPAL_SQL = """
SELECT w.id, w.name, w.role, w.street_id, w.active, w.password_hash,
       (extract(epoch FROM w.password_set_at) * 1000000)::bigint AS pwd,
       CASE
         WHEN w.role IN ('grid_worker', 'grid_head')
           THEN ARRAY(SELECT grid_id FROM worker_grids WHERE worker_id = w.id)
         WHEN w.role = 'street_officer'
           THEN ARRAY(SELECT g.id FROM grids g JOIN communities c ON c.id = g.community_id
                      WHERE c.street_id = w.street_id)
         ELSE ARRAY[]::text[]
       END AS grids
FROM workers w WHERE w.id = %s
"""


def principal_from_row(row: Any) -> Principal:
    """The caller from a `PRINCIPAL_SQL` row read with psycopg's `namedtuple_row` (columns by name)."""
    return Principal(id=row.id, name=row.name, role=row.role, street_id=row.street_id,
                     grids=frozenset(row.grids or ()))
