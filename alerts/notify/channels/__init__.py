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

from collections.abc import Callable
from typing import Any

from gridhub.alerts.notify.channels.common import DEFAULT_TIMEOUT_S, TYPE_ZH, place_text, redact, type_zh
from gridhub.alerts.notify.channels.robots import DingtalkRobotChannel, WecomRobotChannel, dingtalk_sign
from gridhub.alerts.notify.channels.sms import AliyunSmsChannel, HttpSmsChannel, TencentSmsChannel
from gridhub.alerts.notify.channels.webhook import WebhookChannel, webhook_signature
from gridhub.alerts.notify.channels.webpush import WebPushChannel, endpoint_refusal
from gridhub.alerts.notify.message import Channel
from gridhub.notifyfile import AliyunSms, DingtalkRobot, HttpSms, TencentSms, Webhook, WebPush, WecomRobot

__all__ = ["DEFAULT_TIMEOUT_S", "TYPE_ZH", "AliyunSmsChannel", "DingtalkRobotChannel", "HttpSmsChannel",
           "TencentSmsChannel", "WebPushChannel", "WebhookChannel", "WecomRobotChannel", "build", "dingtalk_sign",
           "endpoint_refusal", "place_text", "redact", "type_zh", "webhook_signature"]


# the notify file's model of each channel type -> its adapter
ADAPTERS: dict[type[Any], Callable[[str, Any, float], Channel]] = {
    WecomRobot: WecomRobotChannel, DingtalkRobot: DingtalkRobotChannel, AliyunSms: AliyunSmsChannel,
    TencentSms: TencentSmsChannel, HttpSms: HttpSmsChannel, WebPush: WebPushChannel, Webhook: WebhookChannel}


def build(name: str, cfg: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> Channel:
    """The channel for one entry of the notify file's `channels:`."""
    for model, adapter in ADAPTERS.items():
        if isinstance(cfg, model):
            return adapter(name, cfg, timeout_s)
    raise TypeError(f"channel {name!r}: no adapter for {type(cfg).__name__}")
