"""Web Push for the worker page (CONTRACT §6): the hub's VAPID public key, the person's push subscriptions, and
what the hub sent to the person.

Endpoint checks at subscription time: `https`, a host name or a public IP literal; loopback, private, link-local,
reserved, multicast and unspecified IP literals and local names (`localhost`, `*.localhost`, `*.local`,
`*.internal`, `*.lan`, `*.home.arpa`) are refused, unless the notify file's `webpush` channel has
`allow_private_endpoints: true` (tests, closed networks), which also admits plain `http` to such a host. Names are
not resolved here: what a name resolves to can change between now and the send (DNS rebinding), so a check here
would prove nothing; the sender resolves and checks the address it is about to use
(`gridhub.alerts.notify.channels.endpoint_refusal`)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import secrets
import threading
import urllib.parse
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gridhub import notifyfile
from gridhub.api import schemas
from gridhub.api.deps import ConnDep, CurrentUser, SettingsDep
from gridhub.api.listing import ListOrder, PageDep, fetch_page
from gridhub.api.schemas import documented
from gridhub.protocol import rfc3339
from gridhub.settings import Settings

log = logging.getLogger("gridhub.api.push")
router = APIRouter(tags=["push"])

MAX_SUBSCRIPTIONS = 10  # per person; a new one beyond replaces the one least recently good
MAX_ENDPOINT = 2048
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa", ".localdomain")


# ------------------------------------------------------------------ the notify file's webpush channel

_cache_lock = threading.Lock()
_cache: dict[tuple[str, int, int], notifyfile.NotifyFile] = {}


def _notify_file(settings: Settings) -> notifyfile.NotifyFile | None:
    """The notify file, read again when it changes on disk; None when GRIDHUB_NOTIFY_FILE is unset."""
    path = settings.notify_file
    if path is None:
        return None
    try:
        st = Path(path).stat()
    except OSError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"GRIDHUB_NOTIFY_FILE {path}: {exc.strerror}") from exc
    cache_key = (str(path), st.st_mtime_ns, st.st_size)
    with _cache_lock:
        cached = _cache.get(cache_key)
    if cached is not None:
        return cached
    try:
        loaded = notifyfile.load(Path(path))
    except notifyfile.NotifyFileError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"the notify file cannot be used: {exc}") from exc
    with _cache_lock:
        _cache.clear()
        _cache[cache_key] = loaded
    return loaded


def webpush_channel(settings: Settings) -> tuple[str, notifyfile.WebPush] | None:
    """The first `webpush` channel of the notify file (by its order in the file), with its name."""
    nf = _notify_file(settings)
    if nf is None:
        return None
    for name, channel in nf.channels.items():
        if isinstance(channel, notifyfile.WebPush):
            return name, channel
    return None


# ------------------------------------------------------------------ the VAPID public key

class VapidPublicKey(BaseModel):
    public_key: str = Field(description="base64url (unpadded) uncompressed P-256 point: the applicationServerKey")
    channel: str = Field(description="the notify file's webpush channel it belongs to")


@router.get("/push/vapid-public-key", response_model=VapidPublicKey)
async def vapid_public_key(user: CurrentUser, settings: SettingsDep) -> VapidPublicKey:
    """The hub's VAPID public key, for `pushManager.subscribe({applicationServerKey})`; 404 when Web Push is not
    configured (no notify file, or no `webpush` channel in it)."""
    from gridhub.alerts.notify import vapid

    if settings.notify_file is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            "Web Push is not configured: GRIDHUB_NOTIFY_FILE is not set")
    found = await run_in_threadpool(webpush_channel, settings)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"Web Push is not configured: the notify file {settings.notify_file} has no webpush channel")
    name, channel = found
    try:
        key = await run_in_threadpool(vapid.public_key, channel.vapid_private_key_file)
    except vapid.VapidKeyError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"channel {name}: {exc}") from exc
    return VapidPublicKey(public_key=key, channel=name)


# ------------------------------------------------------------------ subscriptions

def _b64url_bytes(value: str, name: str, size: int) -> str:
    text = value.strip()
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=" for c in text):
        raise ValueError(f"{name} must be base64url")
    try:
        raw = base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{name} must be base64url") from exc
    if len(raw) != size:
        raise ValueError(f"{name} must decode to {size} bytes, not {len(raw)}")
    return text.rstrip("=")


class PushKeys(BaseModel):
    model_config = ConfigDict(extra="ignore")
    p256dh: str = Field(max_length=128, description="base64url P-256 public key of the browser, 65 bytes")
    auth: str = Field(max_length=64, description="base64url authentication secret, 16 bytes")

    @field_validator("p256dh")
    @classmethod
    def _p256dh(cls, v: str) -> str:
        v = _b64url_bytes(v, "p256dh", 65)
        if not base64.urlsafe_b64decode(v + "=" * (-len(v) % 4)).startswith(b"\x04"):
            raise ValueError("p256dh must be an uncompressed P-256 point (starting 0x04)")
        return v

    @field_validator("auth")
    @classmethod
    def _auth(cls, v: str) -> str:
        return _b64url_bytes(v, "auth", 16)


class PushSubscriptionIn(BaseModel):
    """The browser's `PushSubscription.toJSON()`."""

    model_config = ConfigDict(extra="ignore")
    endpoint: str = Field(min_length=1, max_length=MAX_ENDPOINT)
    keys: PushKeys
    expirationTime: float | None = Field(default=None, description="ignored: the push service says when it ends")  # noqa: N815


def _local_host(host: str) -> bool:
    """A literal loopback/private/link-local/reserved address or a local name."""
    try:
        addr = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        name = host.rstrip(".").lower()
        return name == "localhost" or name.endswith(LOCAL_SUFFIXES) or "." not in name
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (not addr.is_global) or addr.is_multicast or addr.is_unspecified or addr.is_reserved


def endpoint_problem(endpoint: str, allow_private: bool) -> str | None:
    """Why a push endpoint is refused at subscription time, or None (see the module's docstring)."""
    try:
        url = urllib.parse.urlsplit(endpoint)
        host = url.hostname
        url.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "endpoint: not a URL"
    if url.scheme not in ("https", "http") or not host:
        return "endpoint: must be an https URL of the browser's push service"
    if url.username is not None or url.password is not None:
        return "endpoint: a push service URL carries no user or password"
    local = _local_host(host)
    if local and not allow_private:
        return f"endpoint: {host} is a loopback, private or local address; push services are public"
    if url.scheme != "https" and not (allow_private and local):
        return "endpoint: must be https"
    return None


class SubscriptionId(BaseModel):
    id: str


@router.post("/me/push-subscriptions", status_code=status.HTTP_201_CREATED, response_model=SubscriptionId,
             responses={200: {"model": SubscriptionId, "description": "the same endpoint again: its id"}})
async def subscribe(request: Request, conn: ConnDep, user: CurrentUser, settings: SettingsDep,
                    sub: Annotated[PushSubscriptionIn, Body()]) -> Any:
    """Store the browser's push subscription for me (201 `{"id"}`); the same endpoint again answers 200 with its
    id and takes the new keys. At most 10 per person: a new one replaces the one least recently used."""
    found = await run_in_threadpool(webpush_channel, settings)
    allow_private = bool(found and found[1].allow_private_endpoints)
    problem = endpoint_problem(sub.endpoint, allow_private)
    if problem:
        raise HTTPException(422, problem)
    agent = (request.headers.get("user-agent") or "")[:512] or None
    new_id = f"ps-{secrets.token_hex(10)}"
    async with conn.transaction():
        # one person's subscriptions change one at a time (the cap below counts them)
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('gridhub.push:' || %s))", (user.id,))
        row = await (await conn.execute(
            "INSERT INTO push_subscriptions (id, worker_id, endpoint, p256dh, auth, user_agent)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (worker_id, endpoint) DO UPDATE"
            " SET p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth, user_agent = EXCLUDED.user_agent"
            " RETURNING id, (xmax = 0) AS inserted",
            (new_id, user.id, sub.endpoint, sub.keys.p256dh, sub.keys.auth, agent))).fetchone()
        assert row is not None
        await conn.execute(
            "DELETE FROM push_subscriptions WHERE worker_id = %s AND id NOT IN (SELECT id FROM push_subscriptions"
            " WHERE worker_id = %s ORDER BY GREATEST(created_at, last_ok_at) DESC, id DESC LIMIT %s)",
            (user.id, user.id, MAX_SUBSCRIPTIONS))
    if row["inserted"]:
        return {"id": row["id"]}
    return JSONResponse({"id": row["id"]}, status_code=status.HTTP_200_OK)


@router.delete("/me/push-subscriptions/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response)
async def unsubscribe(subscription_id: str, conn: ConnDep, user: CurrentUser) -> Response:
    """Remove one of my push subscriptions (204); someone else's, or one that does not exist, is a 404."""
    cur = await conn.execute("DELETE FROM push_subscriptions WHERE id = %s AND worker_id = %s",
                             (subscription_id, user.id))
    if cur.rowcount == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"push subscription {subscription_id} does not exist")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ------------------------------------------------------------------ what was sent to me

NOTIFICATION_ORDER = ListOrder(("n.created_at", "n.id"), (datetime, str))
NOTIFICATION_SELECT = ("SELECT n.id, n.task_id, n.event, n.channel, n.channel_type, n.severity, n.drill, n.state,"
                       " n.attempts, n.created_at, n.sent_at, n.answer FROM notify_deliveries n")


@router.get("/me/notifications", response_model=None, responses=documented(schemas.NotificationPage))
async def my_notifications(request: Request, conn: ConnDep, user: CurrentUser, page: PageDep) -> dict[str, Any]:
    """The deliveries addressed to me (`recipient`), newest first; a group robot's message to its group is the
    group's, not listed here."""
    tz = request.app.state.settings.tz

    def item(r: Mapping[str, Any]) -> dict[str, Any]:
        return {"id": r["id"], "task_id": r["task_id"], "event": r["event"], "channel": r["channel"],
                "channel_type": r["channel_type"], "severity": r["severity"], "drill": r["drill"],
                "state": r["state"], "attempts": r["attempts"], "created_at": rfc3339(r["created_at"], tz),
                "sent_at": rfc3339(r["sent_at"], tz), "answer": r["answer"]}

    return await fetch_page(conn, NOTIFICATION_SELECT, ["n.recipient = %s"], [user.id], NOTIFICATION_ORDER, page,
                            item)
