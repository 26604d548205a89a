"""What a channel is given to send (`Message`), what it answers (`Answer`), and the `Channel` protocol every
vendor adapter implements. The sender (`sender.py`) builds one `Message` per delivery row (or one per storm
roll-up), calls `Channel.send`, and records the `Answer` on the row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Person:
    """A recipient or a person a group message mentions (the registry's worker and `notify:` fields)."""

    id: str
    name: str
    role: str
    phone: str | None = None
    wecom_userid: str | None = None
    dingtalk_mobile: str | None = None


@dataclass(frozen=True)
class PushSubscription:
    id: str
    endpoint: str
    p256dh: str
    auth: str


@dataclass(frozen=True)
class Message:
    """One message on one channel.

    `title` and `lines` are the Chinese text every channel renders in its own format; `text` is the same as one
    short line (SMS, push body). A drill's title already starts with 【演练】. `task` is the REST task shape (the
    webhook body carries it); `place` has `community`, `building`, `floor`, `place` (names, may be None);
    `rolled_up` lists the task ids a storm roll-up carries (empty for a plain message)."""

    delivery_id: str
    event: str  # task.opened | task.escalated | task.reminder | task.changed
    severity: str
    drill: bool
    task: dict[str, Any]
    place: dict[str, Any]
    title: str
    lines: list[str]
    text: str
    link: str
    recipient: Person | None  # None: a group robot's message to its group
    mentions: list[Person] = field(default_factory=list)
    push_subscriptions: list[PushSubscription] = field(default_factory=list)
    rolled_up: list[str] = field(default_factory=list)
    sent_at: str = ""  # RFC 3339, the time of this attempt


@dataclass(frozen=True)
class Answer:
    """The provider's answer. `ok`: delivered to the provider; `retry`: worth another attempt (5xx, timeout,
    refused, throttled) as opposed to a permanent refusal (bad template, 4xx); `detail`: what the provider said,
    trimmed, never a secret; `gone`: push subscription ids the push service says are expired (404/410)."""

    ok: bool
    detail: str
    retry: bool = True
    gone: tuple[str, ...] = ()


class Channel(Protocol):
    """A configured channel. `send` must not raise for a provider's failure: it answers `Answer(ok=False)`.
    `timeout_s` bounds one attempt."""

    name: str
    type: str

    def send(self, msg: Message) -> Answer: ...
