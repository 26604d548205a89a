"""Local stand-ins of the notification vendors: threaded HTTP servers on 127.0.0.1 (port 0) that implement the
documented request of each vendor and CHECK it the way the vendor does, answer like the vendor, and record every
request they accept.

| stand-in | checks | delivery id recorded from |
|---|---|---|
| `WecomRobot` | `key=` of the webhook URL, the markdown message's JSON shape (≤ 4096 bytes) | (none: the text) |
| `DingtalkRobot` | `access_token`, `timestamp` within an hour, `sign` (HMAC-SHA256, base64, URL-encoded), the markdown shape, every `atMobiles` entry written `@<mobile>` in the text; else errcode 310000 / 300001 | (none: the text) |
| `AliyunSms` | ACS3-HMAC-SHA256 (what the installed SDK sends; RPC HMAC-SHA1 too), `x-acs-content-sha256`, `x-acs-date` freshness, SendSms' parameters | `OutId` |
| `TencentSms` | TC3-HMAC-SHA256, credential scope (date, `sms`), timestamp freshness, SendSms' JSON | `SessionContext` |
| `HttpSmsGateway` | bearer token, JSON `{"phone", "text", "id"}` | `id` |
| `WebhookReceiver` | `X-Gridhub-Signature` over `"{timestamp}.{body}"`, stale timestamps (> 300 s) | `X-Gridhub-Delivery` |
| `PushService` | VAPID JWT (ES256 by `k=`, `aud` = origin, `exp` in the future and ≤ 24 h, `sub`), `TTL`, aes128gcm body decrypted with the subscription's keys (`http_ece`) | the payload's `delivery_id` |

Controls on every stand-in: `fail_next(n, status=500, body=None)`, `hold()` / `release()` (requests are read,
verified and recorded, then left unanswered until `release()`), `refuse()` / `listen()` (stop and start listening
on the same port: connection refused in between), `received` (the accepted requests, `Received`), `rejected`
(`(reason, Received)`), `attempts`, `wait_for(n, timeout)`, `delivery_ids()`, `close()`; each is a context manager.

The verifiers are plain functions (`acs3_signature`, `rpc_signature`, `tc3_signature`, `dingtalk_signature`,
`decrypt_push`) so that the tests can first reproduce the vendors' published worked examples with them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gridhub.alerts.notify.message import Message, Person, PushSubscription


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any = None
    delivery_id: str | None = None
    text: str | None = None  # what a person reads (robot markdown, SMS parameters, push payload)
    extra: dict[str, Any] = field(default_factory=dict)


class Refused(Exception):
    """A request the vendor refuses: the status and body it answers."""

    def __init__(self, reason: str, status: int, body: Any) -> None:
        super().__init__(reason)
        self.reason, self.status, self.body = reason, status, body


def _b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


class StandIn:
    """The common server: subclasses implement `handle(req) -> (status, body)` and raise `Refused`."""

    content_type = "application/json"

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.rejected: list[tuple[str, Received]] = []
        self.attempts = 0
        self._fail: list[tuple[int, Any]] = []
        self._lock = threading.Condition()
        self._held = threading.Event()
        self._held.set()
        self.holding: list[Received] = []
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.listen()

    # controls
    def fail_next(self, n: int = 1, status: int = 500, body: Any = None) -> None:
        with self._lock:
            self._fail.extend([(status, body)] * n)

    def hold(self) -> None:
        self._held.clear()

    def release(self) -> None:
        self._held.set()

    def refuse(self) -> None:
        """Stop listening: connections are refused until `listen()`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def listen(self) -> None:
        if self._server is not None:
            return
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                stand_in._serve(self)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{type(self).__name__}:{self.port}", daemon=True).start()

    def close(self) -> None:
        self.release()
        self.refuse()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.received) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{type(self).__name__}: {len(self.received)} requests accepted, wanted {n}"
                                         f" (rejected: {[r for r, _ in self.rejected]})")
                self._lock.wait(left)
            return list(self.received)

    def delivery_ids(self) -> list[str | None]:
        return [r.delivery_id for r in self.received]

    # the server side
    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        split = urllib.parse.urlsplit(h.path)
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        req = Received(h.command, split.path, query, {k.lower(): v for k, v in h.headers.items()}, body,
                       extra={"raw_query": split.query})
        with self._lock:
            self.attempts += 1
            fail = self._fail.pop(0) if self._fail else None
        if fail is not None:
            status, fbody = fail
            self._answer(h, status, fbody if fbody is not None else {"error": "stand-in failure"})
            return
        try:
            status, answer = self.handle(req)
        except Refused as exc:
            with self._lock:
                self.rejected.append((exc.reason, req))
            self._answer(h, exc.status, exc.body)
            return
        with self._lock:
            self.received.append(req)
            self._lock.notify_all()
        if not self._held.is_set():
            with self._lock:
                self.holding.append(req)
            self._held.wait()
        self._answer(h, status, answer)

    def _answer(self, h: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            h.send_response(status)
            h.send_header("Content-Type", self.content_type)
            h.send_header("Content-Length", str(len(raw)))
            h.end_headers()
            h.wfile.write(raw)
        except OSError:  # the client gave up (a held request)
            pass

    def handle(self, req: Received) -> tuple[int, Any]:
        raise NotImplementedError

    @staticmethod
    def _json(req: Received, refuse: tuple[int, Any]) -> Any:
        try:
            return json.loads(req.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise Refused(f"bad JSON: {exc}", *refuse) from exc


# ---------------------------------------------------------------- WeCom group robot

class WecomRobot(StandIn):
    """企业微信群机器人 `POST /cgi-bin/webhook/send?key=KEY`."""

    def __init__(self, key: str = "wecom-test-key") -> None:
        self.key = key
        super().__init__()

    @property
    def url(self) -> str:
        return f"{self.origin}/cgi-bin/webhook/send?key={self.key}"

    def handle(self, req: Received) -> tuple[int, Any]:
        if req.method != "POST" or req.path != "/cgi-bin/webhook/send":
            raise Refused("path", 404, b"not found")
        if req.query.get("key") != self.key:
            raise Refused("key", 200, {"errcode": 93000, "errmsg": "invalid webhook url"})
        doc = self._json(req, (200, {"errcode": 40001, "errmsg": "invalid json"}))
        if doc.get("msgtype") != "markdown" or not isinstance(doc.get("markdown"), dict):
            raise Refused("shape", 200, {"errcode": 40008, "errmsg": "invalid message type"})
        content = doc["markdown"].get("content")
        if not isinstance(content, str) or not content or len(content.encode("utf-8")) > 4096:
            raise Refused("content", 200, {"errcode": 40058, "errmsg": "markdown.content exceed max length 4096"})
        req.json, req.text = doc, content
        return 200, {"errcode": 0, "errmsg": "ok"}


# ---------------------------------------------------------------- DingTalk custom robot

def dingtalk_signature(secret: str, timestamp: str) -> str:
    """base64(HMAC-SHA256(key=secret, msg="{timestamp}\\n{secret}")), before URL encoding."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


class DingtalkRobot(StandIn):
    """钉钉自定义机器人 `POST /robot/send?access_token=T[&timestamp=&sign=]`, signed (加签) when `secret` is set."""

    def __init__(self, access_token: str = "dt-test-token", secret: str | None = "SEC0123456789abcdef") -> None:
        self.access_token, self.secret = access_token, secret
        super().__init__()

    @property
    def url(self) -> str:
        return f"{self.origin}/robot/send?access_token={self.access_token}"

    def handle(self, req: Received) -> tuple[int, Any]:
        if req.method != "POST" or req.path != "/robot/send":
            raise Refused("path", 404, b"not found")
        if req.query.get("access_token") != self.access_token:
            raise Refused("token", 200, {"errcode": 300001, "errmsg": "token is not exist"})
        if self.secret is not None:
            ts, sign = req.query.get("timestamp", ""), req.query.get("sign", "")
            if not ts.isdigit() or abs(int(ts) - time.time() * 1000) > 3600_000:
                raise Refused("timestamp", 200, {"errcode": 310000, "errmsg": "invalid timestamp"})
            if not hmac.compare_digest(sign, dingtalk_signature(self.secret, ts)):
                raise Refused("sign", 200, {"errcode": 310000, "errmsg": "sign not match, more: [https://ding-doc."
                                                                         "dingtalk.com/doc#/serverapi2/qf2nxq]"})
        doc = self._json(req, (200, {"errcode": 43004, "errmsg": "无效的HTTP HEADER Content-Type"}))
        md = doc.get("markdown")
        if doc.get("msgtype") != "markdown" or not isinstance(md, dict) or not isinstance(md.get("title"), str) \
                or not isinstance(md.get("text"), str) or not md["title"] or not md["text"]:
            raise Refused("shape", 200, {"errcode": 40035, "errmsg": "缺少参数 markdown.title/markdown.text"})
        at = doc.get("at", {})
        mobiles = at.get("atMobiles", [])
        if not isinstance(mobiles, list) or not all(isinstance(m, str) for m in mobiles) \
                or not isinstance(at.get("isAtAll", False), bool):
            raise Refused("at", 200, {"errcode": 40035, "errmsg": "at.atMobiles must be a list of strings"})
        missing = [m for m in mobiles if f"@{m}" not in md["text"]]
        if missing:  # DingTalk shows no mention for a markdown message whose text lacks @<mobile>
            raise Refused(f"@ missing in text: {missing}", 200, {"errcode": 40035, "errmsg": "@ not in text"})
        req.json, req.text = doc, md["text"]
        req.extra["mentions"] = mobiles
        return 200, {"errcode": 0, "errmsg": "ok"}


# ---------------------------------------------------------------- Alibaba Cloud SMS

def _pct(s: str) -> str:
    return urllib.parse.quote(s, safe="~")


def acs3_signature(method: str, path: str, query: dict[str, str], headers: dict[str, str], signed: list[str],
                   payload_sha256: str, secret: str) -> tuple[str, str]:
    """Alibaba Cloud V3 (ACS3-HMAC-SHA256): (hex SHA-256 of the canonical request, hex signature)."""
    cq = "&".join(f"{_pct(k)}={_pct(query[k])}" for k in sorted(query))
    ch = "".join(f"{h}:{headers[h].strip()}\n" for h in signed)
    canonical = f"{method}\n{path or '/'}\n{cq}\n{ch}\n{';'.join(signed)}\n{payload_sha256}"
    hashed = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    sig = hmac.new(secret.encode("utf-8"), f"ACS3-HMAC-SHA256\n{hashed}".encode(), hashlib.sha256).hexdigest()
    return hashed, sig


def rpc_signature(method: str, params: dict[str, str], secret: str) -> str:
    """Alibaba Cloud RPC V2 (HMAC-SHA1 over `METHOD&%2F&<encoded canonical query>`, key `secret&`), base64."""
    cq = "&".join(f"{_pct(k)}={_pct(params[k])}" for k in sorted(params) if k != "Signature")
    to_sign = f"{method}&{_pct('/')}&{_pct(cq)}"
    return base64.b64encode(hmac.new(f"{secret}&".encode(), to_sign.encode("utf-8"), hashlib.sha1).digest()).decode()


class AliyunSms(StandIn):
    """dysmsapi `SendSms` (2017-05-25), as the official SDK calls it: `POST /` with the parameters in the query."""

    def __init__(self, access_key_id: str = "LTAI-test-id", access_key_secret: str = "test-secret-aliyun") -> None:
        self.access_key_id, self.access_key_secret = access_key_id, access_key_secret
        super().__init__()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _error(self, reason: str, code: str, message: str, status: int = 400) -> Refused:
        return Refused(reason, status, {"RequestId": str(uuid.uuid4()).upper(), "HostId": "dysmsapi.aliyuncs.com",
                                        "Code": code, "Message": message})

    def _verify(self, req: Received) -> dict[str, str]:
        params = dict(req.query)
        if req.body and "x-www-form-urlencoded" in req.headers.get("content-type", ""):
            params.update(urllib.parse.parse_qsl(req.body.decode("utf-8"), keep_blank_values=True))
        auth = req.headers.get("authorization", "")
        if auth.startswith("ACS3-HMAC-SHA256 "):
            fields = dict(p.split("=", 1) for p in auth[len("ACS3-HMAC-SHA256 "):].split(",") if "=" in p)
            signed = fields.get("SignedHeaders", "").split(";")
            if fields.get("Credential") != self.access_key_id:
                raise self._error("key id", "InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
            for must in ("host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce",
                         "x-acs-content-sha256"):
                if must not in signed or must not in req.headers:
                    raise self._error(f"unsigned {must}", "IncompleteSignature", f"{must} is not signed.")
            if req.headers["x-acs-content-sha256"] != hashlib.sha256(req.body).hexdigest():
                raise self._error("payload hash", "IncompleteSignature", "x-acs-content-sha256 does not match.")
            try:
                date = datetime.strptime(req.headers["x-acs-date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            except ValueError as exc:
                raise self._error("date", "InvalidTimeStamp.Format", "x-acs-date is not ISO 8601.") from exc
            if abs(date.timestamp() - time.time()) > 900:
                raise self._error("date", "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
            missing = [h for h in signed if h not in req.headers]
            if missing:
                raise self._error("signed header missing", "IncompleteSignature", f"{missing} not sent.")
            _, expect = acs3_signature(req.method, req.path, dict(req.query), req.headers, signed,
                                       req.headers["x-acs-content-sha256"], self.access_key_secret)
            if not hmac.compare_digest(fields.get("Signature", ""), expect):
                raise self._error("signature", "SignatureDoesNotMatch",
                                  "Specified signature is not matched with our calculation.")
            if req.headers["x-acs-action"] != "SendSms" or req.headers["x-acs-version"] != "2017-05-25":
                raise self._error("action", "InvalidAction.NotFound", "Specified api is not found.", 404)
        elif params.get("SignatureMethod") == "HMAC-SHA1":
            if params.get("AccessKeyId") != self.access_key_id:
                raise self._error("key id", "InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
            if not hmac.compare_digest(params.get("Signature", ""),
                                       rpc_signature(req.method, params, self.access_key_secret)):
                raise self._error("signature", "SignatureDoesNotMatch",
                                  "Specified signature is not matched with our calculation.")
            if params.get("Action") != "SendSms":
                raise self._error("action", "InvalidAction.NotFound", "Specified api is not found.", 404)
        else:
            raise self._error("unsigned", "MissingAuthorization", "Authorization is mandatory for this action.")
        return params

    def handle(self, req: Received) -> tuple[int, Any]:
        if req.method != "POST" or req.path != "/":
            raise self._error("path", "InvalidAction.NotFound", "Specified api is not found.", 404)
        p = self._verify(req)
        rid = str(uuid.uuid4()).upper()
        for must in ("PhoneNumbers", "SignName", "TemplateCode"):
            if not p.get(must):
                raise self._error(f"missing {must}", "MissingParameter", f"{must} is mandatory for this action.")
        try:
            params = json.loads(p.get("TemplateParam") or "{}")
        except ValueError:
            return 200, {"Code": "isv.INVALID_JSON_PARAM", "Message": "JSON参数不合法，只接受字符串值", "RequestId": rid}
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            return 200, {"Code": "isv.INVALID_JSON_PARAM", "Message": "JSON参数不合法，只接受字符串值", "RequestId": rid}
        if not all(n.isdigit() and len(n) == 11 for n in p["PhoneNumbers"].removeprefix("+86").split(",")):
            return 200, {"Code": "isv.MOBILE_NUMBER_ILLEGAL", "Message": "非法手机号", "RequestId": rid}
        req.json, req.delivery_id = p, p.get("OutId")
        req.text = json.dumps(params, ensure_ascii=False)
        req.extra["template_param"] = params
        biz = f"{secrets.randbelow(10**15):015d}^0"
        req.extra["biz_id"] = biz
        return 200, {"Code": "OK", "Message": "OK", "BizId": biz, "RequestId": rid}


# ---------------------------------------------------------------- Tencent Cloud SMS

def tc3_signature(secret_key: str, date: str, service: str, timestamp: str, canonical_request: str) -> tuple[str, str]:
    """Tencent Cloud TC3-HMAC-SHA256: (hex SHA-256 of the canonical request, hex signature)."""
    hashed = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    to_sign = f"TC3-HMAC-SHA256\n{timestamp}\n{date}/{service}/tc3_request\n{hashed}"

    def mac(key: bytes, msg: str) -> bytes:
        return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()

    k = mac(mac(mac(("TC3" + secret_key).encode("utf-8"), date), service), "tc3_request")
    return hashed, hmac.new(k, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def tc3_canonical(method: str, query: str, headers: dict[str, str], signed: list[str], body: bytes) -> str:
    ch = "".join(f"{h}:{headers[h].strip().lower()}\n" for h in signed)
    return f"{method}\n/\n{query}\n{ch}\n{';'.join(signed)}\n{hashlib.sha256(body).hexdigest()}"


class TencentSms(StandIn):
    """Tencent Cloud SMS `SendSms` (2021-01-11): `POST /` with JSON and TC3-HMAC-SHA256."""

    def __init__(self, secret_id: str = "AKID-test-id", secret_key: str = "test-secret-tencent",
                 sdk_app_id: str = "1400000001") -> None:
        self.secret_id, self.secret_key, self.sdk_app_id = secret_id, secret_key, sdk_app_id
        super().__init__()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _error(self, reason: str, code: str, message: str) -> Refused:
        return Refused(reason, 200, {"Response": {"Error": {"Code": code, "Message": message},
                                                  "RequestId": str(uuid.uuid4())}})

    def handle(self, req: Received) -> tuple[int, Any]:
        auth = req.headers.get("authorization", "")
        if not auth.startswith("TC3-HMAC-SHA256 "):
            raise self._error("unsigned", "AuthFailure.SignatureFailure", "The provided credentials could not be "
                              "validated. Please check your signature is correct.")
        fields = dict(p.strip().split("=", 1) for p in auth[len("TC3-HMAC-SHA256 "):].split(",") if "=" in p)
        cred = fields.get("Credential", "").split("/")
        ts = req.headers.get("x-tc-timestamp", "")
        if len(cred) != 4 or cred[0] != self.secret_id:
            raise self._error("secret id", "AuthFailure.SecretIdNotFound", "The SecretId is not found.")
        if not ts.isdigit() or abs(int(ts) - time.time()) > 300:
            raise self._error("timestamp", "AuthFailure.SignatureExpire", "Signature expired.")
        date = datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d")
        if cred[1] != date or cred[2] != "sms" or cred[3] != "tc3_request":
            raise self._error("scope", "AuthFailure.SignatureFailure", "credential scope does not match.")
        signed = fields.get("SignedHeaders", "").split(";")
        if "content-type" not in signed or "host" not in signed or any(h not in req.headers for h in signed):
            raise self._error("signed headers", "AuthFailure.SignatureFailure", "content-type and host must be signed.")
        query = req.extra["raw_query"] if req.method == "GET" else ""
        _, expect = tc3_signature(self.secret_key, date, "sms", ts,
                                  tc3_canonical(req.method, query, req.headers, signed, req.body))
        if not hmac.compare_digest(fields.get("Signature", ""), expect):
            raise self._error("signature", "AuthFailure.SignatureFailure", "The provided credentials could not be "
                              "validated. Please check your signature is correct.")
        if req.headers.get("x-tc-action") != "SendSms" or req.headers.get("x-tc-version") != "2021-01-11":
            raise self._error("action", "InvalidAction", "The action is not found.")
        doc = self._json(req, (200, {"Response": {"Error": {"Code": "InvalidParameter", "Message": "bad JSON"}}}))
        phones = doc.get("PhoneNumberSet")
        if not isinstance(phones, list) or not phones or not all(
                isinstance(p, str) and p.startswith("+") and p[1:].isdigit() for p in phones):
            raise self._error("phones", "InvalidParameterValue.IncorrectPhoneNumber", "PhoneNumberSet: E.164 numbers")
        if doc.get("SmsSdkAppId") != self.sdk_app_id:
            raise self._error("app id", "InvalidParameterValue.SdkAppIdNotExist", "SdkAppId not exist.")
        if not doc.get("TemplateId") or not doc.get("SignName"):
            raise self._error("template", "MissingParameter", "TemplateId and SignName are required.")
        tps = doc.get("TemplateParamSet", [])
        if not isinstance(tps, list) or not all(isinstance(x, str) for x in tps):
            raise self._error("params", "InvalidParameterValue.TemplateParameterFormatError", "strings only")
        req.json, req.delivery_id, req.text = doc, doc.get("SessionContext"), " ".join(tps)
        return 200, {"Response": {"SendStatusSet": [
            {"SerialNo": f"2640:{secrets.randbelow(10**12)}", "PhoneNumber": p, "Fee": 1,
             "SessionContext": doc.get("SessionContext", ""), "Code": "Ok", "Message": "send success",
             "IsoCode": "CN"} for p in phones], "RequestId": str(uuid.uuid4())}}


# ---------------------------------------------------------------- a district's HTTP SMS gateway

class HttpSmsGateway(StandIn):
    """`POST /sms` with `Authorization: Bearer <token>` and JSON `{"phone", "text", "id"}`."""

    def __init__(self, token: str = "gw-test-token") -> None:
        self.token = token
        super().__init__()

    @property
    def url(self) -> str:
        return f"{self.origin}/sms"

    def handle(self, req: Received) -> tuple[int, Any]:
        if req.method != "POST" or req.path != "/sms":
            raise Refused("path", 404, {"error": "not found"})
        if req.headers.get("authorization") != f"Bearer {self.token}":
            raise Refused("token", 401, {"error": "unauthorized"})
        doc = self._json(req, (400, {"error": "bad json"}))
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) and doc[k] for k in ("phone", "text",
                                                                                                 "id")):
            raise Refused("shape", 400, {"error": "phone, text and id are required strings"})
        req.json, req.delivery_id, req.text = doc, doc["id"], doc["text"]
        return 200, {"ok": True, "msgid": str(uuid.uuid4())}


# ---------------------------------------------------------------- the CONTRACT §6 webhook

class WebhookReceiver(StandIn):
    """A city platform receiving the signed webhook: rejects a bad signature or a stale timestamp with 401."""

    def __init__(self, secret: str = "hook-test-secret", max_skew_s: int = 300) -> None:
        self.secret, self.max_skew_s = secret, max_skew_s
        super().__init__()

    @property
    def url(self) -> str:
        return f"{self.origin}/gridhub-events"

    def handle(self, req: Received) -> tuple[int, Any]:
        if req.method != "POST" or req.path != "/gridhub-events":
            raise Refused("path", 404, {"error": "not found"})
        ts, sig = req.headers.get("x-gridhub-timestamp", ""), req.headers.get("x-gridhub-signature", "")
        if not ts.isdigit() or abs(int(ts) - time.time()) > self.max_skew_s:
            raise Refused("stale", 401, {"error": "stale timestamp"})
        expect = "sha256=" + hmac.new(self.secret.encode(), ts.encode() + b"." + req.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig, expect):
            raise Refused("signature", 401, {"error": "bad signature"})
        doc = self._json(req, (400, {"error": "bad json"}))
        if set(doc) != {"event", "task", "recipient", "sent_at"}:
            raise Refused("shape", 400, {"error": f"keys {sorted(doc)}"})
        req.json, req.delivery_id = doc, req.headers.get("x-gridhub-delivery")
        return 200, {"ok": True}


# ---------------------------------------------------------------- a Web Push service

def decrypt_push(body: bytes, private_key: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """RFC 8291: the aes128gcm message decrypted with the user agent's private key and auth secret."""
    return bytes(http_ece.decrypt(body, private_key=private_key, auth_secret=auth_secret, version="aes128gcm"))


def verify_vapid(authorization: str, audience: str, now: float | None = None) -> dict[str, Any]:
    """RFC 8292: `vapid t=<JWT>, k=<public key>`; the JWT's ES256 signature by `k`, `aud`, `exp`, `sub`. Answers the
    claims; raises ValueError naming what is wrong."""
    now = time.time() if now is None else now
    if not authorization.lower().startswith("vapid "):
        raise ValueError("not a vapid Authorization")
    parts = dict(p.strip().split("=", 1) for p in authorization[6:].split(",") if "=" in p)
    token, k = parts.get("t", ""), parts.get("k", "")
    try:
        head_b64, claims_b64, sig_b64 = token.split(".")
        header = json.loads(_b64url_decode(head_b64))
        claims = json.loads(_b64url_decode(claims_b64))
        raw_sig = _b64url_decode(sig_b64)
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _b64url_decode(k))
    except ValueError as exc:
        raise ValueError(f"unreadable token or key: {exc}") from exc
    if header.get("alg") != "ES256" or len(raw_sig) != 64:
        raise ValueError("the JWT is not ES256")
    der = encode_dss_signature(int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big"))
    try:
        key.verify(der, f"{head_b64}.{claims_b64}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise ValueError("the JWT's signature does not verify with k") from exc
    if claims.get("aud") != audience:
        raise ValueError(f"aud {claims.get('aud')!r} is not the push service's origin {audience!r}")
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= now or exp > now + 24 * 3600:
        raise ValueError("exp is not within the next 24 hours")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.startswith(("mailto:", "https:")):
        raise ValueError("sub is not a mailto: or https: URL")
    return dict(claims)


class PushService(StandIn):
    """A push service with one user agent's subscriptions: `subscription()` makes one (its keys kept here) and
    answers the browser's `PushSubscription` JSON. `POST /push/<id>` answers 201; `expire(id)` makes it 410."""

    def __init__(self) -> None:
        self.subs: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}
        self.expired: set[str] = set()
        self.vapid_key: str | None = None  # the application server key the subscriptions were made for, if given
        super().__init__()

    def subscription(self) -> dict[str, Any]:
        sid = secrets.token_urlsafe(12)
        key = ec.generate_private_key(ec.SECP256R1())
        auth = secrets.token_bytes(16)
        self.subs[sid] = (key, auth)
        point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return {"endpoint": f"{self.origin}/push/{sid}", "expirationTime": None,
                "keys": {"p256dh": _b64url(point), "auth": _b64url(auth)}}

    def expire(self, endpoint_or_id: str) -> None:
        self.expired.add(endpoint_or_id.rsplit("/", 1)[-1])

    def handle(self, req: Received) -> tuple[int, Any]:
        sid = req.path.removeprefix("/push/")
        if req.method != "POST" or not req.path.startswith("/push/") or sid not in self.subs:
            raise Refused("unknown subscription", 404, {"error": "not found"})
        if sid in self.expired:
            raise Refused("expired", 410, {"error": "subscription expired"})
        try:
            claims = verify_vapid(req.headers.get("authorization", ""), self.origin)
        except ValueError as exc:
            raise Refused(f"vapid: {exc}", 401, {"error": str(exc)}) from exc
        k = req.headers["authorization"].split("k=", 1)[1].split(",")[0].strip()
        if self.vapid_key is not None and k != self.vapid_key:
            raise Refused("vapid: not the subscription's key", 403, {"error": "VAPID key mismatch"})
        if not req.headers.get("ttl", "").isdigit():
            raise Refused("ttl", 400, {"error": "TTL header required"})
        if req.headers.get("content-encoding") != "aes128gcm":
            raise Refused("encoding", 415, {"error": "aes128gcm only"})
        key, auth = self.subs[sid]
        try:
            plain = decrypt_push(req.body, key, auth)
        except Exception as exc:
            raise Refused(f"decrypt: {exc!r}", 400, {"error": "cannot decrypt"}) from exc
        req.extra.update(claims=claims, plaintext=plain, subscription=sid)
        try:
            req.json = json.loads(plain)
            req.delivery_id = req.json.get("delivery_id")
            req.text = f"{req.json.get('title')} {req.json.get('body')}"
        except ValueError:
            req.text = plain.decode("utf-8", "replace")
        return 201, b""


# ---------------------------------------------------------------- a message to send

ZHANG_SAN = Person(id="w-001", name="张三", role="grid_worker", phone="13800000001", wecom_userid="zhangsan",
                   dingtalk_mobile="13800000001")


def sample_message(**overrides: Any) -> Message:
    """A fire alarm at 沙坡尾社区 12号楼 3层 301 厨房, opened for 张三 (w-001)."""
    task = {"id": "t-1001", "type": "fire_alarm", "severity": "critical", "state": "open", "grid_id": "g-xg-01",
            "building_id": "b-12", "device_id": "sa-0001", "assignee": "w-001", "escalation_level": 0,
            "accept_due": "2026-03-01T10:05:00+08:00", "resolve_due": "2026-03-01T10:30:00+08:00",
            "alert_ids": ["a-1"], "count": 1, "history": []}
    drill = bool(overrides.get("drill", False))
    title = ("【演练】" if drill else "") + "火警：沙坡尾社区 12号楼 3层 301 厨房"
    base: dict[str, Any] = dict(
        delivery_id=str(uuid.uuid4()), event="task.opened", severity="critical", drill=drill, task=task,
        place={"community": "沙坡尾社区", "building": "12号楼", "floor": 3, "place": "301 厨房"},
        title=title, lines=["请在 10:05 前接单，10:30 前处置", "设备 sa-0001 烟感报警"],
        text=f"{title}，请在 10:05 前接单", link="https://hub.example.org/worker#task=t-1001",
        recipient=ZHANG_SAN, mentions=[], push_subscriptions=[], sent_at="2026-03-01T10:00:00+08:00")
    base.update(overrides)
    return Message(**base)


def push_subscription(service: PushService, sub_id: str = "ps-1") -> PushSubscription:
    js = service.subscription()
    return PushSubscription(id=sub_id, endpoint=js["endpoint"], p256dh=js["keys"]["p256dh"], auth=js["keys"]["auth"])


__all__ = ["ZHANG_SAN", "AliyunSms", "DingtalkRobot", "HttpSmsGateway", "PushService", "Received", "Refused",
           "StandIn", "TencentSms", "WebhookReceiver", "WecomRobot", "acs3_signature", "decrypt_push",
           "dingtalk_signature", "push_subscription", "replace", "rpc_signature", "sample_message", "tc3_canonical",
           "tc3_signature", "verify_vapid"]
