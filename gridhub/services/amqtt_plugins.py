"""The amqtt plugins that check log-ins against mosquitto's password file and topics against its ACL file.

amqtt loads them by name from the embedded broker's configuration (`EmbeddedMqttBroker`); this module is
imported only inside that broker's process, so that amqtt stays an optional dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from gridhub.accounts import mosquitto_verify, parse_passwd
from gridhub.services.acl import acl_allows


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
    """Both plugins' configuration: where the account files are."""

    password_file: str = ""
    acl_file: str = ""


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
        self._files.refresh()
        hashed = self._files.users.get(session.username)
        return bool(hashed) and mosquitto_verify(session.password or "", hashed or "")


class MosquittoFileAcl(BaseTopicPlugin):  # type: ignore[misc]
    """Publishing and delivery checked against mosquitto's ACL file."""

    Config = FilesConfig

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._files = _files_of(self.context.config)

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                              action: Any = None) -> bool | None:
        if action == Action.SUBSCRIBE:
            return True  # like mosquitto 2: read access is checked on delivery
        if not topic or session is None:
            return False
        self._files.refresh()
        access = "write" if action == Action.PUBLISH else "read"
        return acl_allows(self._files.acl, session.username, session.client_id or "", topic, access)
