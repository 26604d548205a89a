"""What the channels share: the answer's detail (trimmed, secrets blanked), the place and type in Chinese, the
markdown lines of the robots, and the HTTP helper that turns a transport failure into a retryable answer."""

from __future__ import annotations

import json
import re
from typing import Any, Generic, TypeVar

import httpx

from gridhub.alerts.notify.message import Answer, Message, Person
from gridhub.labels import TYPE_NAMES
from gridhub.notifyfile import NotifyFileError

DEFAULT_TIMEOUT_S = 5.0
DETAIL_MAX = 300

# the task types' Chinese names, as the pages show them (api/static/common.js)
TYPE_ZH = TYPE_NAMES  # one list of the types' Chinese names (gridhub/labels.py)
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


Cfg = TypeVar("Cfg")  # the notify file's model of the channel (gridhub.notifyfile)


class Base(Generic[Cfg]):
    """One configured channel. `send` is the same for every vendor: the message refused for this channel
    (`_refuse`), or a `${VAR}` of the notify file that cannot be expanded (a permanent refusal), or else the
    vendor's own `_send`. `_expanded` holds the secrets `_send` expanded, blanked in every detail."""

    type = ""

    def __init__(self, name: str, cfg: Cfg, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.name = name
        self.cfg = cfg
        self.timeout_s = timeout_s
        self._expanded: tuple[str, ...] = ()

    def reachable(self, person: Person | None) -> bool:
        return True

    def send(self, msg: Message) -> Answer:
        refused = self._refuse(msg)
        if refused is not None:
            return refused
        try:
            return self._send(msg)
        except NotifyFileError as exc:
            return Answer(ok=False, retry=False, detail=trim_detail(str(exc)))

    def _refuse(self, msg: Message) -> Answer | None:
        return None

    def _send(self, msg: Message) -> Answer:
        raise NotImplementedError

    def _secrets(self) -> tuple[str, ...]:
        return self._expanded

    def _answer(self, ok: bool, retry: bool, text: str) -> Answer:
        """The vendor's answer: sent (never retried) or not; `text` trimmed, the channel's secrets blanked."""
        return Answer(ok=ok, retry=retry and not ok, detail=trim_detail(text, self._secrets()))

    def _request(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> httpx.Response | Answer:
        """One HTTP request; a transport failure answers a retryable `Answer` instead of raising."""
        try:
            with httpx.Client(timeout=self.timeout_s, follow_redirects=False, trust_env=False) as client:
                return client.request(method, url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return self._answer(False, True, f"timeout after {self.timeout_s:g} s: {exc!r}")
        except httpx.HTTPError as exc:
            return self._answer(False, True, f"{type(exc).__name__}: {exc}")

    def _post_json(self, url: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response | Answer:
        return self._request("POST", url, body, {"Content-Type": "application/json; charset=utf-8", **(headers or {})})

    def _http_answer(self, resp: httpx.Response | Answer) -> Answer:
        """A plain HTTP receiver's answer: any 2xx is sent, the rest as `_http_failure`."""
        if isinstance(resp, Answer):
            return resp
        if 200 <= resp.status_code < 300:
            return self._answer(True, False, f"HTTP {resp.status_code}: {resp.text}")
        return self._http_failure(resp)

    def _http_failure(self, resp: httpx.Response) -> Answer:
        retry = resp.status_code >= 500 or resp.status_code in (408, 425, 429)
        return self._answer(False, retry, f"HTTP {resp.status_code}: {resp.text}")


class Robot(Base[Cfg]):
    """A group robot: the JSON `body` of the message POSTed to its `_url()`, which answers `errcode` (0: sent;
    `retry_codes`: worth another attempt)."""

    retry_codes: frozenset[int] = frozenset()

    def _url(self) -> str:
        raise NotImplementedError

    def body(self, msg: Message) -> dict[str, Any]:
        raise NotImplementedError

    def _send(self, msg: Message) -> Answer:
        url = self._url()
        resp = self._post_json(url, json.dumps(self.body(msg), ensure_ascii=False).encode("utf-8"))
        if isinstance(resp, Answer):
            return resp
        if resp.status_code != 200:
            return self._http_failure(resp)
        try:
            data = resp.json()
            code = int(data["errcode"])
        except (ValueError, KeyError, TypeError):
            return self._answer(False, True, f"unreadable answer: {resp.text}")
        return self._answer(code == 0, code in self.retry_codes, json.dumps(data, ensure_ascii=False))
