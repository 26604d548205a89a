"""What the channels share: the answer's detail (trimmed, secrets blanked), the place and type in Chinese, the
markdown lines of the robots, and the HTTP helper that turns a transport failure into a retryable answer."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from gridhub.alerts.notify.message import Answer, Message, Person
from gridhub.alerts.notify.text import TYPE_NAMES

DEFAULT_TIMEOUT_S = 5.0
DETAIL_MAX = 300

# the task types' Chinese names, as the pages show them (api/static/common.js)
TYPE_ZH = TYPE_NAMES  # one list of the types' Chinese names (alerts/notify/text.py)
_SECRET_QUERY = re.compile(r"(?i)\b(key|access_token|sign|secret|token|signature)=[^&\s\"'<>]*")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with the values of secret-bearing query parameters and the given secrets blanked."""
    text = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}=***", text)
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return text


def trim_detail(text: str, secrets: tuple[str, ...] = ()) -> str:
    text = redact(" ".join(str(text).split()), secrets)
    return text if len(text) <= DETAIL_MAX else text[:DETAIL_MAX - 1] + "…"


def type_zh(msg: Message) -> str:
    t = str(msg.task.get("type") or "")
    return TYPE_ZH.get(t, t)


def place_text(place: dict[str, Any]) -> str:
    """沙坡尾社区 12号楼 3层 301 厨房: the names that are known, in that order."""
    parts = []
    for key in ("community", "building"):
        if place.get(key):
            parts.append(str(place[key]))
    floor = place.get("floor")
    if floor is not None and floor != "":
        f = int(floor) if isinstance(floor, int | str) and str(floor).lstrip("-").isdigit() else floor
        parts.append(f"地下{-f}层" if isinstance(f, int) and f < 0 else f"{f}层")
    if place.get("place"):
        parts.append(str(place["place"]))
    return " ".join(parts)


def markdown_lines(msg: Message) -> list[str]:
    """Title in bold, then the type and the place unless the message's own lines already name them, then the
    lines (deadline, escalation, roll-up, as the sender wrote them)."""
    out = [f"**{msg.title}**"]
    written = "\n".join([msg.title, *msg.lines])
    zh, where = type_zh(msg), place_text(msg.place)
    if zh and zh not in written:
        out.append(f"类型：{zh}")
    if where and where not in written:
        out.append(f"地点：{where}")
    out.extend(msg.lines)
    return out


class Base:
    type = ""

    def __init__(self, name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.name = name
        self.timeout_s = timeout_s

    def reachable(self, person: Person | None) -> bool:
        return True

    def _secrets(self) -> tuple[str, ...]:
        return ()

    def _post_json(self, url: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response | Answer:
        """POST; a transport failure answers a retryable `Answer` instead of raising."""
        hdrs = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        try:
            with httpx.Client(timeout=self.timeout_s, follow_redirects=False, trust_env=False) as client:
                return client.post(url, content=body, headers=hdrs)
        except httpx.TimeoutException as exc:
            return Answer(ok=False, retry=True, detail=trim_detail(f"timeout after {self.timeout_s:g} s: {exc!r}",
                                                               self._secrets()))
        except httpx.HTTPError as exc:
            return Answer(ok=False, retry=True, detail=trim_detail(f"{type(exc).__name__}: {exc}", self._secrets()))

    def _http_failure(self, resp: httpx.Response) -> Answer:
        retry = resp.status_code >= 500 or resp.status_code in (408, 425, 429)
        return Answer(ok=False, retry=retry, detail=trim_detail(f"HTTP {resp.status_code}: {resp.text}", self._secrets()))


class Robot(Base):
    retry_codes: frozenset[int] = frozenset()

    def _answer(self, resp: httpx.Response | Answer) -> Answer:
        if isinstance(resp, Answer):
            return resp
        if resp.status_code != 200:
            return self._http_failure(resp)
        try:
            data = resp.json()
            code = int(data["errcode"])
        except (ValueError, KeyError, TypeError):
            return Answer(ok=False, retry=True, detail=trim_detail(f"unreadable answer: {resp.text}", self._secrets()))
        detail = trim_detail(json.dumps(data, ensure_ascii=False), self._secrets())
        if code == 0:
            return Answer(ok=True, retry=False, detail=detail)
        return Answer(ok=False, retry=code in self.retry_codes, detail=detail)
