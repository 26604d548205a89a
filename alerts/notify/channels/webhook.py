"""The signed generic webhook of CONTRACT §6."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from gridhub.alerts.notify.channels.common import Base
from gridhub.alerts.notify.message import Answer, Message
from gridhub.notifyfile import Webhook, expand


def webhook_signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">` (CONTRACT §6)."""
    mac = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookChannel(Base[Webhook]):
    """The signed generic webhook of CONTRACT §6 (a city platform: 12345, 城市运行)."""

    type = "webhook"

    @staticmethod
    def body(msg: Message) -> bytes:
        recipient = None if msg.recipient is None else {"id": msg.recipient.id, "role": msg.recipient.role}
        doc = {"event": msg.event, "task": msg.task, "recipient": recipient, "sent_at": msg.sent_at}
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _send(self, msg: Message) -> Answer:
        url, secret = expand(self.cfg.url), expand(self.cfg.secret)
        self._expanded = (secret,)
        body = self.body(msg)
        ts = int(time.time())
        return self._http_answer(self._post_json(url, body, {
            "X-Gridhub-Delivery": msg.delivery_id, "X-Gridhub-Timestamp": str(ts),
            "X-Gridhub-Signature": webhook_signature(secret, ts, body)}))
