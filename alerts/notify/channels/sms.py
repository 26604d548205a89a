"""SMS: Alibaba Cloud and Tencent Cloud through their SDKs, and a district's own HTTP gateway (template parameters:
see the package's docstring)."""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any, TypeVar

from gridhub.alerts.notify.channels.common import Base, place_text, type_zh
from gridhub.alerts.notify.message import Answer, Message, Person
from gridhub.notifyfile import AliyunSms, HttpSms, TencentSms, expand

Cfg = TypeVar("Cfg")  # AliyunSms, TencentSms or HttpSms


class SmsBase(Base[Cfg]):
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


class AliyunSmsChannel(SmsBase[AliyunSms]):
    """Alibaba Cloud SMS (dysmsapi 2017-05-25 SendSms) through the official SDK; `OutId` carries the delivery id."""

    def _send(self, msg: Message) -> Answer:
        from alibabacloud_dysmsapi20170525 import models as sms_models
        from alibabacloud_dysmsapi20170525.client import Client
        from alibabacloud_tea_openapi import models as open_api_models
        from darabonba.runtime import RuntimeOptions

        key_id, key_secret = expand(self.cfg.access_key_id), expand(self.cfg.access_key_secret)
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
        # the vendor's throttles and its own trouble pass; a bad template, sign name or number does not
        retry = code is None or "LIMIT" in str(code).upper() or str(code).startswith(("isp.", "InternalError",
                                                                                      "ServiceUnavailable"))
        return self._answer(code == "OK", retry, f"Code={code} Message={getattr(body, 'message', None)} "
                            f"BizId={getattr(body, 'biz_id', None)} RequestId={getattr(body, 'request_id', None)}")

    def _exception(self, exc: Exception) -> Answer:
        status = getattr(exc, "status_code", None)
        code = getattr(exc, "code", None)
        text = f"{type(exc).__name__}: status={status} code={code} {getattr(exc, 'message', exc)}"
        refused = isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)
        return self._answer(False, not refused, text)


class TencentSmsChannel(SmsBase[TencentSms]):
    """Tencent Cloud SMS (2021-01-11 SendSms) through the official SDK; `SessionContext` carries the delivery id."""

    def _send(self, msg: Message) -> Answer:
        from tencentcloud.common import credential
        from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile
        from tencentcloud.sms.v20210111 import models, sms_client

        secret_id, secret_key = expand(self.cfg.secret_id), expand(self.cfg.secret_key)
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
            return self._answer(False, retry, f"{code}: {exc.get_message()} RequestId={exc.get_request_id()}")
        except Exception as exc:
            return self._answer(False, True, f"{type(exc).__name__}: {exc}")
        statuses = resp.SendStatusSet or []
        first = statuses[0] if statuses else None
        status = getattr(first, "Code", None)
        retry = status is None or str(status).startswith(("InternalError", "LimitExceeded.PhoneNumberThirtySecondLimit",
                                                       "RequestLimitExceeded"))
        return self._answer(status == "Ok", retry, f"Code={status} Message={getattr(first, 'Message', None)} "
                            f"SerialNo={getattr(first, 'SerialNo', None)} RequestId={resp.RequestId}")


class HttpSmsChannel(SmsBase[HttpSms]):
    """A district's own SMS gateway: `body` (and `url`) templates of `{phone}`, `{text}`, `{delivery_id}`,
    `{task_id}`; values JSON-escaped in a JSON body, URL-encoded in a form body and in the URL; 2xx is sent."""

    _FIELDS = ("phone", "text", "delivery_id", "task_id")

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

    def _send(self, msg: Message) -> Answer:
        method, url, headers, body = self.request(msg)
        return self._http_answer(self._request(method, url, body, headers))
