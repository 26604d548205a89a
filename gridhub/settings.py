"""The hub's configuration: one pydantic-settings class over the GRIDHUB_* variables (CONTRACT §5)."""

from __future__ import annotations

import secrets
import socket
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDHUB_", extra="ignore")

    database_url: str | None = Field(default=None, description="PostgreSQL URL; unset: local services")
    mqtt_url: str | None = Field(default=None, description="mqtt://user:pass@host:port; unset: local services")
    data_dir: Path = Path("./var")
    instance_id: str = Field(default_factory=socket.gethostname)
    secret_key: str | None = None
    rules_file: Path | None = None
    topic_prefix: str = "gridhub/v1"
    timezone: str = "Asia/Shanghai"
    readings_days: int = Field(default=400, gt=0)
    quarantine_days: int = Field(default=30, gt=0)
    token_ttl_s: int = Field(default=12 * 3600, gt=0)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"unknown time zone {v!r}: use an IANA name such as Asia/Shanghai") from exc
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _strip_prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not v or "#" in v or "+" in v:
            raise ValueError("topic prefix must be a non-empty topic without wildcards")
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def signing_key(self) -> str:
        """The token signing key: GRIDHUB_SECRET_KEY, else generated once into the data directory."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(key)
        tmp.chmod(0o600)
        try:
            tmp.rename(path) if not path.exists() else tmp.unlink()
        except OSError:
            pass
        return path.read_text().strip()

    def client_id(self, part: str) -> str:
        """A stable MQTT client id for one part of this instance (persistent sessions)."""
        return f"gridhub-{part}-{self.instance_id}"[:128]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
