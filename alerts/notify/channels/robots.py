"""The group robots: 企业微信群机器人 (WeCom) and 钉钉自定义机器人 (DingTalk, signed)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from typing import Any

from gridhub.alerts.notify.channels.common import Robot, markdown_lines
from gridhub.alerts.notify.message import Message
from gridhub.notifyfile import DingtalkRobot, WecomRobot, expand


class WecomRobotChannel(Robot[WecomRobot]):
    """企业微信群机器人: the documented markdown message; `<@userid>` mentions the people it concerns."""

    type = "wecom_robot"
    retry_codes = frozenset({-1, 45009, 45033})  # system busy, API rate limit, too many concurrent calls

    def body(self, msg: Message) -> dict[str, Any]:
        lines = markdown_lines(msg)
        lines.append(f"[打开任务]({msg.link})")
        people = [p for p in [msg.recipient, *msg.mentions] if p is not None and p.wecom_userid]
        userids = list(dict.fromkeys(p.wecom_userid for p in people if p.wecom_userid))
        if userids:
            lines.append(" ".join(f"<@{u}>" for u in userids))
        content = "\n".join(lines)
        while len(content.encode("utf-8")) > 4096:  # the documented limit
            content = content[:-50]
        return {"msgtype": "markdown", "markdown": {"content": content}}

    def _url(self) -> str:
        return expand(self.cfg.url)


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's custom-robot signature, URL-encoded: base64(HMAC-SHA256(key=secret, "{timestamp}\\n{secret}"))."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(mac).decode("ascii"))


class DingtalkRobotChannel(Robot[DingtalkRobot]):
    """钉钉自定义机器人: markdown with `at.atMobiles` and `@<mobile>` in the text; a signed URL when `secret` is set."""

    type = "dingtalk_robot"
    retry_codes = frozenset({-1, 130101, 410100})  # system busy, sending too fast, too many messages

    def body(self, msg: Message) -> dict[str, Any]:
        people = [p for p in [msg.recipient, *msg.mentions] if p is not None and p.dingtalk_mobile]
        mobiles = list(dict.fromkeys(p.dingtalk_mobile for p in people if p.dingtalk_mobile))
        lines = markdown_lines(msg)
        lines.append(f"[打开任务]({msg.link})")
        if mobiles:
            lines.append(" ".join(f"@{m}" for m in mobiles))
        title = msg.title if len(msg.title) <= 64 else msg.title[:63] + "…"
        return {"msgtype": "markdown", "markdown": {"title": title, "text": "\n\n".join(lines)},
                "at": {"atMobiles": mobiles, "isAtAll": False}}

    def _url(self) -> str:
        return self.signed_url()

    def signed_url(self, now_ms: int | None = None) -> str:
        url = expand(self.cfg.url)
        if self.cfg.secret is None:
            return url
        secret = expand(self.cfg.secret)
        self._expanded = (secret,)
        ts = int(time.time() * 1000) if now_ms is None else now_ms
        return f"{url}{'&' if '?' in url else '?'}timestamp={ts}&sign={dingtalk_sign(secret, ts)}"
