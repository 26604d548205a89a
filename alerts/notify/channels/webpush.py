"""Web Push (RFC 8030) through pywebpush: RFC 8291 encryption, RFC 8292 VAPID, endpoints checked first."""

from __future__ import annotations

import ipaddress
import json
import socket
import urllib.parse
from typing import Any

from gridhub.alerts.notify.channels.common import Base, trim_detail
from gridhub.alerts.notify.message import Answer, Message
from gridhub.notifyfile import WebPush


def endpoint_refusal(endpoint: str, allow_private: bool) -> str | None:
    """Why a push endpoint may not be used, or None: `https` to a public address, unless `allow_private` (tests,
    closed networks), which also admits plain `http` to a loopback or private address."""
    try:
        url = urllib.parse.urlsplit(endpoint)
        host, port = url.hostname, url.port
    except ValueError:
        return "not a URL"
    if url.scheme not in ("https", "http") or not host:
        return "not an http(s) URL"
    try:
        infos = socket.getaddrinfo(host, port or (443 if url.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    addrs = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    private = [a for a in addrs if not a.is_global or a.is_multicast]
    if private and not allow_private:
        return f"{host} is a private or loopback address ({', '.join(sorted(map(str, private)))})"
    if url.scheme != "https" and not (allow_private and private and len(private) == len(addrs)):
        return "push endpoints must be https"
    return None


class WebPushChannel(Base[WebPush]):
    """Web Push through `pywebpush`: the payload is encrypted for each subscription (RFC 8291) and signed with the
    hub's VAPID key (RFC 8292). Sent when at least one subscription's push service accepted it; 404/410 report the
    subscription gone."""

    type = "webpush"
    _URGENCY = {"critical": "high", "high": "high", "normal": "normal", "low": "low"}

    @staticmethod
    def payload(msg: Message) -> dict[str, Any]:
        return {"title": msg.title, "body": msg.text, "task_id": msg.task.get("id"), "url": msg.link,
                "severity": msg.severity, "drill": msg.drill, "delivery_id": msg.delivery_id}

    def _send(self, msg: Message) -> Answer:
        from py_vapid import Vapid
        from pywebpush import WebPushException, webpush

        from gridhub.alerts.notify import vapid

        if not msg.push_subscriptions:
            return Answer(ok=False, retry=False, detail="no push subscription")
        try:
            signer = Vapid(vapid.load(self.cfg.vapid_private_key_file))
        except vapid.VapidKeyError as exc:
            return Answer(ok=False, retry=False, detail=trim_detail(str(exc)))
        data = json.dumps(self.payload(msg), ensure_ascii=False, separators=(",", ":"))
        sent, gone, notes, retry = 0, [], [], False
        for sub in msg.push_subscriptions:
            why = endpoint_refusal(sub.endpoint, self.cfg.allow_private_endpoints)
            if why is not None:
                notes.append(f"{sub.id}: refused: {why}")
                continue
            try:
                webpush({"endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": sub.auth}}, data=data,
                        vapid_private_key=signer, vapid_claims={"sub": self.cfg.subject}, ttl=self.cfg.ttl_s,
                        headers={"Urgency": self._URGENCY.get(msg.severity, "normal")}, timeout=self.timeout_s)
                sent += 1
                notes.append(f"{sub.id}: sent")
            except WebPushException as exc:
                status = getattr(exc.response, "status_code", None)
                text = getattr(exc.response, "text", "") if exc.response is not None else str(exc)
                if status in (404, 410):
                    gone.append(sub.id)
                elif status is None or status >= 500 or status in (408, 429):
                    retry = True
                notes.append(f"{sub.id}: HTTP {status}: {text}")
            except Exception as exc:  # requests' connection errors and timeouts, a bad subscription key
                retry = retry or not isinstance(exc, ValueError | TypeError)
                notes.append(f"{sub.id}: {type(exc).__name__}: {exc}")
        detail = trim_detail("; ".join(notes))
        if sent:
            return Answer(ok=True, retry=False, detail=detail, gone=tuple(gone))
        return Answer(ok=False, retry=retry, detail=detail, gone=tuple(gone))
