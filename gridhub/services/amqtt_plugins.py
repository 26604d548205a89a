"""The amqtt plugins that check log-ins against mosquitto's password file and topics against its ACL file, and the
check of every CONNECT before amqtt touches a session (`install_connect_guard`).

amqtt loads the plugins by name from the embedded broker's configuration (`EmbeddedMqttBroker`); this module is
imported only inside that broker's process, so that amqtt stays an optional dependency.

The same doors as mosquitto's (gridhub/services/mosquitto.py), for amqtt 0.12.1 (pinned in pyproject.toml):

- **Subscriptions** are checked against the ACL: a filter is allowed when the account may read every topic it
  matches (amqtt 0.12 asks the topic plugin for SUBSCRIBE, and again for each delivery).
- **The hub's client ids** (`gridhub-...`) are refused to every other account (CONNACK "identifier rejected").
  amqtt has one listener and no `use_username_as_clientid`, and it drops (clean session) or takes over (persistent
  session) the session of a CONNECT's client id *before* it asks the auth plugins: a refused CONNECT would still
  knock the hub's consumer off. So the password and the client id are checked as the CONNECT is read, by the one
  hook amqtt offers there: the protocol handler class its broker module names (`install_connect_guard`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import amqtt.broker
from amqtt.contexts import Action
from amqtt.errors import MQTTError
from amqtt.mqtt.connack import BAD_USERNAME_PASSWORD, IDENTIFIER_REJECTED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from gridhub.accounts import mosquitto_verify, parse_passwd
from gridhub.services.acl import acl_allows
from gridhub.services.mosquitto import HUB_CLIENT_ID_PREFIX, HUB_MQTT_USER


class AccountFiles:
    """The password and ACL files, re-read when they change (amqtt has no SIGHUP reload)."""

    def __init__(self, password_file: Path, acl_file: Path) -> None:
        self.password_file = password_file
        self.acl_file = acl_file
        self._stamp: tuple[float, float] | None = None
        self.users: dict[str, str] = {}
        self.acl = ""

    def refresh(self) -> None:
        try:
            stamp = (self.password_file.stat().st_mtime, self.acl_file.stat().st_mtime)
        except OSError:
            stamp = (0.0, 0.0)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.users = parse_passwd(self.password_file.read_text())
                self.acl = self.acl_file.read_text()
            except OSError:
                self.users, self.acl = {}, ""


@dataclass
class FilesConfig:
    """Both plugins' configuration: where the account files are, and the hub's account."""

    password_file: str = ""
    acl_file: str = ""
    hub_user: str = HUB_MQTT_USER


def connect_refusal(files: AccountFiles, hub_user: str, username: str | None, password: str | None,
                    client_id: str | None) -> int | None:
    """The MQTT 3.1.1 CONNACK code that refuses this log-in, None to accept it: a user and password the password
    file does not hold (4), or a client id of the hub's from any other account (2)."""
    files.refresh()
    hashed = files.users.get(username or "")
    if not username or not hashed or not mosquitto_verify(password or "", hashed):
        return int(BAD_USERNAME_PASSWORD)
    if username != hub_user and (client_id or "").startswith(HUB_CLIENT_ID_PREFIX):
        return int(IDENTIFIER_REJECTED)
    return None


def subscription_allowed(acl_text: str, username: str | None, client_id: str, topic_filter: str) -> bool:
    """Whether the ACL lets `username` read every topic `topic_filter` matches. The filter is matched as a topic
    against the ACL's filters, so a `+` or `#` level needs a `+` or `#` rule there; a trailing `#` also needs its
    parent level and deeper levels (a rule `a/+` does not cover `a/#`). A shared subscription
    (`$share/<group>/<filter>`) is judged by its filter, as mosquitto does."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2] if topic_filter.count("/") >= 2 else ""
        if not topic_filter:
            return False
    probes = [topic_filter]
    if topic_filter == "#" or topic_filter.endswith("/#"):
        probes.append(topic_filter + "/#")
        if topic_filter != "#":
            probes.append(topic_filter[:-2])
    return all(acl_allows(acl_text, username, client_id, probe, "read") for probe in probes)


def _files_of(config: Any) -> AccountFiles:
    return AccountFiles(Path(config.password_file), Path(config.acl_file))


class MosquittoFileAuth(BaseAuthPlugin):  # type: ignore[misc]
    """Log-ins checked against mosquitto's password file (`user:$7$...` lines)."""

    Config = FilesConfig

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._files = _files_of(self.context.config)

    async def authenticate(self, *, session: Any) -> bool | None:
        if not session or not session.username:
            return False
        return connect_refusal(self._files, self.context.config.hub_user, session.username, session.password,
                               session.client_id) is None


class MosquittoFileAcl(BaseTopicPlugin):  # type: ignore[misc]
    """Subscribing, publishing and delivery checked against mosquitto's ACL file."""

    Config = FilesConfig

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._files = _files_of(self.context.config)

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                              action: Any = None) -> bool | None:
        if not topic or session is None:
            return False
        self._files.refresh()
        if action == Action.SUBSCRIBE:
            return subscription_allowed(self._files.acl, session.username, session.client_id or "", topic)
        access = "write" if action == Action.PUBLISH else "read"
        return acl_allows(self._files.acl, session.username, session.client_id or "", topic, access)


class _GuardedHandler(BrokerProtocolHandler):  # type: ignore[misc]
    """amqtt's broker protocol handler, refusing a CONNECT (`connect_refusal`) as soon as it is read, before the
    broker drops or takes over the session its client id names."""

    files: AccountFiles | None = None
    hub_user = HUB_MQTT_USER

    @classmethod
    async def init_from_connect(cls, reader: Any, writer: Any, plugins_manager: Any,
                                loop: Any = None) -> tuple[Any, Any]:
        handler, session = await super().init_from_connect(reader, writer, plugins_manager, loop)
        if cls.files is None:
            return handler, session
        code = connect_refusal(cls.files, cls.hub_user, session.username, session.password, session.client_id)
        if code is not None:
            await ConnackPacket.build(0, code).to_stream(writer)
            await writer.close()
            raise MQTTError(f"refused {session.client_id!r} of user {session.username!r} (CONNACK {code}) before "
                            "touching its session")
        return handler, session


def install_connect_guard(password_file: Path, acl_file: Path, hub_user: str = HUB_MQTT_USER) -> None:
    """Make this process's amqtt broker check every CONNECT against the account files before its session logic
    (see the module docstring); call before starting the broker."""
    _GuardedHandler.files = AccountFiles(Path(password_file), Path(acl_file))
    _GuardedHandler.hub_user = hub_user
    amqtt.broker.BrokerProtocolHandler = _GuardedHandler
