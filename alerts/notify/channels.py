"""The channel adapters (CONTRACT §6): one class per vendor, built from the notify file's models by `build`.

Every `send(msg)` makes one attempt bounded by `timeout_s` and never raises for a provider's failure: it answers
`Answer(ok, detail, retry, gone)`. `retry=True` for what may pass later (5xx, timeout, refused connection, an
unreadable answer, the vendor's rate limits); `retry=False` for a permanent refusal (4xx other than 408/429, a bad
template, a wrong key or signature, a recipient without a phone). `detail` is the provider's answer trimmed to
300 characters, with `key=`, `access_token=`, `sign=` query values and the channel's own secrets blanked.

Libraries: the SMS vendors' own SDKs sign their requests (`alibabacloud_dysmsapi20170525`, ACS3-HMAC-SHA256 with
the installed SDK; `tencentcloud-sdk-python-sms`, TC3-HMAC-SHA256); `pywebpush` encrypts (RFC 8291) and signs
(VAPID, RFC 8292) Web Push; httpx posts the robots', the district gateway's and the webhook's JSON. Written here by
hand: only DingTalk's URL signature and the webhook's HMAC, which no maintained library does for us.

SMS template parameters (the operator's approved template must use these names / positions):

- Alibaba Cloud (`TemplateParam`, JSON): `type` the task type in Chinese (火警), `place` the place, at most 35
  characters (沙坡尾社区12号楼3层301 厨房), `task` the task id. Example template:
  `【${type}】${place}，请立即处置，任务 ${task}`.
- Tencent Cloud (`TemplateParamSet`, by position): `{1}` type, `{2}` place, `{3}` task id. Example template:
  `【{1}】{2}，请立即处置，任务 {3}`.
- The district's HTTP gateway: the channel's `body` template with `{phone}`, `{text}` (the message's one line),
  `{delivery_id}`, `{task_id}`.

A drill is never sent by SMS (the sender skips it; the SMS channels refuse it too).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
import socket
import time
import urllib.parse
from typing import Any

import httpx

from gridhub.alerts.notify.message import Answer, Channel, Message, Person
from gridhub.notifyfile import (
    AliyunSms,
    DingtalkRobot,
    HttpSms,
    NotifyFileError,
    TencentSms,
    Webhook,
    WebPush,
    WecomRobot,
    expand,
)

__all__ = ["DEFAULT_TIMEOUT_S", "TYPE_ZH", "AliyunSmsChannel", "DingtalkRobotChannel", "HttpSmsChannel",
           "TencentSmsChannel", "WebPushChannel", "WebhookChannel", "WecomRobotChannel", "build",
           "dingtalk_sign", "place_text", "redact", "webhook_signature"]

DEFAULT_TIMEOUT_S = 5.0
DETAIL_MAX = 300

# the task types' Chinese names, as the pages show them (api/static/common.js)
TYPE_ZH = {
    "fire_alarm": "火警", "fire_incident": "火灾事件", "sprinkler_critical": "喷淋压力危急", "sprinkler_low": "喷淋压力低",
    "sprinkler_high": "喷淋压力高", "sprinkler_drop": "喷淋压力骤降", "light_fault": "楼道灯故障",
    "device_offline": "设备离线", "device_fault": "设备故障", "low_battery": "电量低", "tamper": "设备被拆",
    "exit_blocked": "安全出口堵塞", "camera_obstructed": "摄像头遮挡", "noisy_device": "频繁报警",
    "patrol": "巡查", "hazard": "隐患", "recheck": "复查",
}
_SECRET_QUERY = re.compile(r"(?i)\b(key|access_token|sign|secret|token|signature)=[^&\s\"'<>]*")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with the values of secret-bearing query parameters and the given secrets blanked."""
    text = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}=***", text)
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return text


def _detail(text: str, secrets: tuple[str, ...] = ()) -> str:
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


def _markdown_lines(msg: Message) -> list[str]:
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


class _Base:
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
            return Answer(ok=False, retry=True, detail=_detail(f"timeout after {self.timeout_s:g} s: {exc!r}",
                                                               self._secrets()))
        except httpx.HTTPError as exc:
            return Answer(ok=False, retry=True, detail=_detail(f"{type(exc).__name__}: {exc}", self._secrets()))

    def _http_failure(self, resp: httpx.Response) -> Answer:
        retry = resp.status_code >= 500 or resp.status_code in (408, 425, 429)
        return Answer(ok=False, retry=retry, detail=_detail(f"HTTP {resp.status_code}: {resp.text}", self._secrets()))


class _Robot(_Base):
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
            return Answer(ok=False, retry=True, detail=_detail(f"unreadable answer: {resp.text}", self._secrets()))
        detail = _detail(json.dumps(data, ensure_ascii=False), self._secrets())
        if code == 0:
            return Answer(ok=True, retry=False, detail=detail)
        return Answer(ok=False, retry=code in self.retry_codes, detail=detail)


class WecomRobotChannel(_Robot):
    """企业微信群机器人: the documented markdown message; `<@userid>` mentions the people it concerns."""

    type = "wecom_robot"
    retry_codes = frozenset({-1, 45009, 45033})  # system busy, API rate limit, too many concurrent calls

    def __init__(self, name: str, cfg: WecomRobot, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(name, timeout_s)
        self.cfg = cfg

    def body(self, msg: Message) -> dict[str, Any]:
        lines = _markdown_lines(msg)
        lines.append(f"[打开任务]({msg.link})")
        people = [p for p in [msg.recipient, *msg.mentions] if p is not None and p.wecom_userid]
        userids = list(dict.fromkeys(p.wecom_userid for p in people if p.wecom_userid))
        if userids:
            lines.append(" ".join(f"<@{u}>" for u in userids))
        content = "\n".join(lines)
        while len(content.encode("utf-8")) > 4096:  # the documented limit
            content = content[:-50]
        return {"msgtype": "markdown", "markdown": {"content": content}}

    def send(self, msg: Message) -> Answer:
        try:
            url = expand(self.cfg.url)
        except NotifyFileError as exc:
            return Answer(ok=False, retry=False, detail=_detail(str(exc)))
        raw = json.dumps(self.body(msg), ensure_ascii=False).encode("utf-8")
        return self._answer(self._post_json(url, raw))


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's custom-robot signature, URL-encoded: base64(HMAC-SHA256(key=secret, "{timestamp}\\n{secret}"))."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(mac).decode("ascii"))


class DingtalkRobotChannel(_Robot):
    """钉钉自定义机器人: markdown with `at.atMobiles` and `@<mobile>` in the text; a signed URL when `secret` is set."""

    type = "dingtalk_robot"
    retry_codes = frozenset({-1, 130101, 410100})  # system busy, sending too fast, too many messages

    def __init__(self, name: str, cfg: DingtalkRobot, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(name, timeout_s)
        self.cfg = cfg
        self._expanded: tuple[str, ...] = ()

    def _secrets(self) -> tuple[str, ...]:
        return self._expanded

    def body(self, msg: Message) -> dict[str, Any]:
        people = [p for p in [msg.recipient, *msg.mentions] if p is not None and p.dingtalk_mobile]
        mobiles = list(dict.fromkeys(p.dingtalk_mobile for p in people if p.dingtalk_mobile))
        lines = _markdown_lines(msg)
        lines.append(f"[打开任务]({msg.link})")
        if mobiles:
            lines.append(" ".join(f"@{m}" for m in mobiles))
        title = msg.title if len(msg.title) <= 64 else msg.title[:63] + "…"
        return {"msgtype": "markdown", "markdown": {"title": title, "text": "\n\n".join(lines)},
                "at": {"atMobiles": mobiles, "isAtAll": False}}

    def signed_url(self, now_ms: int | None = None) -> str:
        url = expand(self.cfg.url)
        if self.cfg.secret is None:
            return url
        secret = expand(self.cfg.secret)
        self._expanded = (secret,)
        ts = int(time.time() * 1000) if now_ms is None else now_ms
        return f"{url}{'&' if '?' in url else '?'}timestamp={ts}&sign={dingtalk_sign(secret, ts)}"

    def send(self, msg: Message) -> Answer:
        try:
            url = self.signed_url()
        except NotifyFileError as exc:
            return Answer(ok=False, retry=False, detail=_detail(str(exc)))
        raw = json.dumps(self.body(msg), ensure_ascii=False).encode("utf-8")
        return self._answer(self._post_json(url, raw))


class _Sms(_Base):
    type = "sms"

    def reachable(self, person: Person | None) -> bool:
        return person is not None and bool(person.phone)

    def _refuse(self, msg: Message) -> Answer | None:
        if msg.drill:
            return Answer(ok=False, retry=False, detail="drill: never sent by SMS")
        if msg.recipient is None or not msg.recipient.phone:
            return Answer(ok=False, retry=False, detail="no phone")
        return None

    @staticmethod
    def params(msg: Message) -> dict[str, str]:
        """The template's parameters: short, as the vendors' templates require."""
        where = place_text(msg.place).replace(" ", "")
        if len(where) > 35:
            where = where[:34] + "…"
        return {"type": type_zh(msg) or "告警", "place": where or "-", "task": str(msg.task.get("id", ""))}


class AliyunSmsChannel(_Sms):
    """Alibaba Cloud SMS (dysmsapi 2017-05-25 SendSms) through the official SDK; `OutId` carries the delivery id."""

    def __init__(self, name: str, cfg: AliyunSms, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(name, timeout_s)
        self.cfg = cfg
        self._expanded: tuple[str, ...] = ()

    def _secrets(self) -> tuple[str, ...]:
        return self._expanded

    def send(self, msg: Message) -> Answer:
        refused = self._refuse(msg)
        if refused is not None:
            return refused
        from alibabacloud_dysmsapi20170525 import models as sms_models
        from alibabacloud_dysmsapi20170525.client import Client
        from alibabacloud_tea_openapi import models as open_api_models
        from darabonba.runtime import RuntimeOptions

        try:
            key_id, key_secret = expand(self.cfg.access_key_id), expand(self.cfg.access_key_secret)
        except NotifyFileError as exc:
            return Answer(ok=False, retry=False, detail=_detail(str(exc)))
        self._expanded = (key_secret,)
        ms = int(self.timeout_s * 1000)
        assert msg.recipient is not None and msg.recipient.phone
        try:
            client = Client(open_api_models.Config(
                access_key_id=key_id, access_key_secret=key_secret, endpoint=self.cfg.endpoint,
                protocol=self.cfg.protocol, read_timeout=ms, connect_timeout=ms))
            request = sms_models.SendSmsRequest(
                phone_numbers=msg.recipient.phone, sign_name=self.cfg.sign_name,
                template_code=self.cfg.template_code,
                template_param=json.dumps(self.params(msg), ensure_ascii=False), out_id=msg.delivery_id)
            resp = client.send_sms_with_options(request, RuntimeOptions(read_timeout=ms, connect_timeout=ms,
                                                                        autoretry=False))
        except Exception as exc:  # the SDK raises its own and the transport's exceptions; none may escape
            return self._exception(exc)
        body = resp.body
        code = getattr(body, "code", None)
        detail = _detail(f"Code={code} Message={getattr(body, 'message', None)} BizId={getattr(body, 'biz_id', None)} "
                         f"RequestId={getattr(body, 'request_id', None)}", self._secrets())
        if code == "OK":
            return Answer(ok=True, retry=False, detail=detail)
        # the vendor's throttles and its own trouble pass; a bad template, sign name or number does not
        retry = code is None or "LIMIT" in str(code).upper() or str(code).startswith(("isp.", "InternalError",
                                                                                      "ServiceUnavailable"))
        return Answer(ok=False, retry=retry, detail=detail)

    def _exception(self, exc: Exception) -> Answer:
        status = getattr(exc, "status_code", None)
        code = getattr(exc, "code", None)
        text = f"{type(exc).__name__}: status={status} code={code} {getattr(exc, 'message', exc)}"
        if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
            return Answer(ok=False, retry=False, detail=_detail(text, self._secrets()))
        return Answer(ok=False, retry=True, detail=_detail(text, self._secrets()))


class TencentSmsChannel(_Sms):
    """Tencent Cloud SMS (2021-01-11 SendSms) through the official SDK; `SessionContext` carries the delivery id."""

    def __init__(self, name: str, cfg: TencentSms, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(name, timeout_s)
        self.cfg = cfg
        self._expanded: tuple[str, ...] = ()

    def _secrets(self) -> tuple[str, ...]:
        return self._expanded

    def send(self, msg: Message) -> Answer:
        refused = self._refuse(msg)
        if refused is not None:
            return refused
        from tencentcloud.common import credential
        from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile
        from tencentcloud.sms.v20210111 import models, sms_client

        try:
            secret_id, secret_key = expand(self.cfg.secret_id), expand(self.cfg.secret_key)
        except NotifyFileError as exc:
            return Answer(ok=False, retry=False, detail=_detail(str(exc)))
        self._expanded = (secret_key,)
        assert msg.recipient is not None and msg.recipient.phone
        phone = msg.recipient.phone if msg.recipient.phone.startswith("+") else "+86" + msg.recipient.phone
        p = self.params(msg)
        try:
            http = HttpProfile(protocol=self.cfg.protocol, endpoint=self.cfg.endpoint,
                               reqTimeout=max(1, round(self.timeout_s)))
            client = sms_client.SmsClient(credential.Credential(secret_id, secret_key), self.cfg.region,
                                          ClientProfile(httpProfile=http))
            req = models.SendSmsRequest()
            req.PhoneNumberSet = [phone]
            req.SmsSdkAppId = self.cfg.sdk_app_id
            req.SignName = self.cfg.sign_name
            req.TemplateId = self.cfg.template_id
            req.TemplateParamSet = [p["type"], p["place"], p["task"]]
            req.SessionContext = msg.delivery_id
            resp = client.SendSms(req)
        except TencentCloudSDKException as exc:
            code = str(exc.get_code() or "")
            retry = code.startswith(("ClientNetworkError", "ServerNetworkError", "InternalError",
                                     "RequestLimitExceeded", "LimitExceeded.PhoneNumberThirtySecondLimit",
                                     "ResourceUnavailable"))
            return Answer(ok=False, retry=retry, detail=_detail(
                f"{code}: {exc.get_message()} RequestId={exc.get_request_id()}", self._secrets()))
        except Exception as exc:
            return Answer(ok=False, retry=True, detail=_detail(f"{type(exc).__name__}: {exc}", self._secrets()))
        statuses = resp.SendStatusSet or []
        first = statuses[0] if statuses else None
        status = getattr(first, "Code", None)
        detail = _detail(f"Code={status} Message={getattr(first, 'Message', None)} SerialNo="
                         f"{getattr(first, 'SerialNo', None)} RequestId={resp.RequestId}", self._secrets())
        if status == "Ok":
            return Answer(ok=True, retry=False, detail=detail)
        retry = status is None or str(status).startswith(("InternalError", "LimitExceeded.PhoneNumberThirtySecondLimit",
                                                       "RequestLimitExceeded"))
        return Answer(ok=False, retry=retry, detail=detail)


class HttpSmsChannel(_Sms):
    """A district's own SMS gateway: `body` (and `url`) templates of `{phone}`, `{text}`, `{delivery_id}`,
    `{task_id}`; values JSON-escaped in a JSON body, URL-encoded in a form body and in the URL; 2xx is sent."""

    _FIELDS = ("phone", "text", "delivery_id", "task_id")

    def __init__(self, name: str, cfg: HttpSms, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(name, timeout_s)
        self.cfg = cfg
        self._expanded: tuple[str, ...] = ()

    def _secrets(self) -> tuple[str, ...]:
        return self._expanded

    @staticmethod
    def fill(template: str, values: dict[str, str], escape: Any) -> str:
        return re.sub(r"\{(phone|text|delivery_id|task_id)\}", lambda m: escape(values[m.group(1)]), template)

    def request(self, msg: Message) -> tuple[str, str, dict[str, str], bytes | None]:
        assert msg.recipient is not None and msg.recipient.phone
        values = {"phone": msg.recipient.phone, "text": msg.text, "delivery_id": msg.delivery_id,
                  "task_id": str(msg.task.get("id", ""))}
        headers = {k: expand(v) for k, v in self.cfg.headers.items()}
        self._expanded = tuple(headers.values())
        url = self.fill(expand(self.cfg.url), values, lambda v: urllib.parse.quote(v, safe=""))
        if self.cfg.method == "GET":
            return "GET", url, headers, None
        ctype = self.cfg.content_type.lower()
        if "json" in ctype:
            body = self.fill(self.cfg.body, values, lambda v: json.dumps(v, ensure_ascii=False)[1:-1])
        elif "x-www-form-urlencoded" in ctype:
            body = self.fill(self.cfg.body, values, lambda v: urllib.parse.quote_plus(v))
        else:
            body = self.fill(self.cfg.body, values, str)
        headers.setdefault("Content-Type", self.cfg.content_type)
        return "POST", url, headers, body.encode("utf-8")

    def send(self, msg: Message) -> Answer:
        refused = self._refuse(msg)
        if refused is not None:
            return refused
        try:
            method, url, headers, body = self.request(msg)
        except NotifyFileError as exc:
            return Answer(ok=False, retry=False, detail=_detail(str(exc)))
        try:
            with httpx.Client(timeout=self.timeout_s, follow_redirects=False, trust_env=False) as client:
                resp = client.request(method, url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return Answer(ok=False, retry=True, detail=_detail(f"timeout after {self.timeout_s:g} s: {exc!r}"))
        except httpx.HTTPError as exc:
            return Answer(ok=False, retry=True, detail=_detail(f"{type(exc).__name__}: {exc}", self._secrets()))
        if 200 <= resp.status_code < 300:
            return Answer(ok=True, retry=False, detail=_detail(f"HTTP {resp.status_code}: {resp.text}",
                                                               self._secrets()))
        return self._http_failure(resp)


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


class WebPushChannel(_Base):
    """Web Push through `pywebpush`: the payload is encrypted for each subscription (RFC 8291) and signed with the
    hub's VAPID key (RFC 8292). Sent when at least one subscription's push service accepted it; 404/410 report the
    subscription gone."""

    type = "webpush"
    _URGENCY = {"critical": "high", "high": "high", "normal": "normal", "low": "low"}

    def __init__(self, name: str, cfg: WebPush, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(name, timeout_s)
        self.cfg = cfg

    @staticmethod
    def payload(msg: Message) -> dict[str, Any]:
        return {"title": msg.title, "body": msg.text, "task_id": msg.task.get("id"), "url": msg.link,
                "severity": msg.severity, "drill": msg.drill, "delivery_id": msg.delivery_id}

    def send(self, msg: Message) -> Answer:
        from py_vapid import Vapid
        from pywebpush import WebPushException, webpush

        from gridhub.alerts.notify import vapid

        if not msg.push_subscriptions:
            return Answer(ok=False, retry=False, detail="no push subscription")
        try:
            signer = Vapid(vapid.load(self.cfg.vapid_private_key_file))
        except vapid.VapidKeyError as exc:
            return Answer(ok=False, retry=False, detail=_detail(str(exc)))
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
        detail = _detail("; ".join(notes))
        if sent:
            return Answer(ok=True, retry=False, detail=detail, gone=tuple(gone))
        return Answer(ok=False, retry=retry, detail=detail, gone=tuple(gone))


def webhook_signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">` (CONTRACT §6)."""
    mac = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookChannel(_Base):
    """The signed generic webhook of CONTRACT §6 (a city platform: 12345, 城市运行)."""

    type = "webhook"

    def __init__(self, name: str, cfg: Webhook, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(name, timeout_s)
        self.cfg = cfg
        self._expanded: tuple[str, ...] = ()

    def _secrets(self) -> tuple[str, ...]:
        return self._expanded

    @staticmethod
    def body(msg: Message) -> bytes:
        recipient = None if msg.recipient is None else {"id": msg.recipient.id, "role": msg.recipient.role}
        doc = {"event": msg.event, "task": msg.task, "recipient": recipient, "sent_at": msg.sent_at}
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def send(self, msg: Message) -> Answer:
        try:
            url, secret = expand(self.cfg.url), expand(self.cfg.secret)
        except NotifyFileError as exc:
            return Answer(ok=False, retry=False, detail=_detail(str(exc)))
        self._expanded = (secret,)
        body = self.body(msg)
        ts = int(time.time())
        resp = self._post_json(url, body, {"X-Gridhub-Delivery": msg.delivery_id, "X-Gridhub-Timestamp": str(ts),
                                           "X-Gridhub-Signature": webhook_signature(secret, ts, body)})
        if isinstance(resp, Answer):
            return resp
        if 200 <= resp.status_code < 300:
            return Answer(ok=True, retry=False, detail=_detail(f"HTTP {resp.status_code}: {resp.text}",
                                                               self._secrets()))
        return self._http_failure(resp)


def build(name: str, cfg: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> Channel:
    """The channel for one entry of the notify file's `channels:`."""
    if isinstance(cfg, WecomRobot):
        return WecomRobotChannel(name, cfg, timeout_s)
    if isinstance(cfg, DingtalkRobot):
        return DingtalkRobotChannel(name, cfg, timeout_s)
    if isinstance(cfg, AliyunSms):
        return AliyunSmsChannel(name, cfg, timeout_s)
    if isinstance(cfg, TencentSms):
        return TencentSmsChannel(name, cfg, timeout_s)
    if isinstance(cfg, HttpSms):
        return HttpSmsChannel(name, cfg, timeout_s)
    if isinstance(cfg, WebPush):
        return WebPushChannel(name, cfg, timeout_s)
    if isinstance(cfg, Webhook):
        return WebhookChannel(name, cfg, timeout_s)
    raise TypeError(f"channel {name!r}: no adapter for {type(cfg).__name__}")
