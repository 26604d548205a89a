"""The hub's configuration: one pydantic-settings tree over the GRIDHUB_* variables (CONTRACT §5), and the only
reader of the environment: `Settings` with its nested `IngestSettings` (GRIDHUB_INGEST_*) and `ServicesSettings`
(the local services' directory and ports)."""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TOPIC_PREFIX = "gridhub/v1"
DEFAULT_TIMEZONE = "Asia/Shanghai"
DEFAULT_PG_PORT = 55432
DEFAULT_MQTT_PORT = 51883


class IngestSettings(BaseSettings):
    """The ingest consumer's batching against the broker's in-flight window (mosquitto `max_inflight_messages`):
    GRIDHUB_INGEST_WINDOW, _BATCH, _LINGER_MS, _READ_GATHER_MS and _MQTT5. The broker must grant the window (the
    hub's mosquitto configurations say 4000): batches of 2000 cost PostgreSQL and ingest about a third less a
    message than batches of 500 (bench/ingest.py --window 1000 against 4000)."""

    model_config = SettingsConfigDict(env_prefix="GRIDHUB_INGEST_", extra="ignore", env_ignore_empty=True)

    window: int = Field(default=4000, description="unacknowledged messages the broker sends (its in-flight window)")
    batch: int | None = Field(default=None, description="messages a batch at most; unset: half the window")
    linger_ms: float = Field(default=50.0, description="longest wait for a batch to fill, in milliseconds")
    read_gather_ms: float = Field(default=2.0, description="pause after a socket read that found little, in ms")
    mqtt5: bool = Field(default=True, description="ask the broker over MQTT 5 whether it has shared subscriptions; "
                                                  "off: plain subscriptions, for a broker without MQTT 5")
    shared: bool = Field(default=False, description="share the stream with other ingest instances ($share/ingest); "
                                                    "off: a plain subscription, which mosquitto keeps across its "
                                                    "restart (it drops shared ones: ingest/README.md)")

    @field_validator("window", "batch")
    @classmethod
    def _positive_count(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and v <= 0:
            raise ValueError(f"GRIDHUB_INGEST_{(info.field_name or '').upper()} must be a positive number of "
                             f"messages, not {v}")
        return v

    @field_validator("linger_ms", "read_gather_ms")
    @classmethod
    def _not_negative_ms(cls, v: float, info: ValidationInfo) -> float:
        if not v >= 0 or v == float("inf"):
            raise ValueError(f"GRIDHUB_INGEST_{(info.field_name or '').upper()} must be a number of milliseconds "
                             f"(0 or more), not {v}")
        return v

    @model_validator(mode="after")
    def _batch_within_window(self) -> IngestSettings:
        if self.batch is not None and self.batch > self.window:
            raise ValueError(f"GRIDHUB_INGEST_BATCH ({self.batch}) cannot exceed GRIDHUB_INGEST_WINDOW "
                             f"({self.window}): the broker sends at most a window of unacknowledged messages, so such "
                             "a batch never fills; lower the batch or raise the window (and the broker's "
                             "max_inflight_messages)")
        return self

    @property
    def batch_max(self) -> int:
        """Messages a batch at most: GRIDHUB_INGEST_BATCH, else half the window (the next half arrives while one
        batch is committed)."""
        return self.batch if self.batch is not None else max(1, self.window // 2)

    @property
    def linger_s(self) -> float:
        return self.linger_ms / 1000

    @property
    def read_gather_s(self) -> float:
        return self.read_gather_ms / 1000


class ServicesSettings(BaseSettings):
    """The database and broker gridhub runs for itself (gridhub/services): GRIDHUB_SERVICES_DIR, GRIDHUB_PG_PORT,
    GRIDHUB_MQTT_PORT."""

    model_config = SettingsConfigDict(env_prefix="GRIDHUB_", extra="ignore", env_ignore_empty=True)

    services_dir: Path | None = Field(default=None, description="their state; unset: a system directory under "
                                                                "root, else <data_dir>/services")
    pg_port: int = Field(default=DEFAULT_PG_PORT, description="the local PostgreSQL's port on 127.0.0.1")
    mqtt_port: int = Field(default=DEFAULT_MQTT_PORT, description="the local broker's port on 127.0.0.1")

    @field_validator("services_dir", mode="before")
    @classmethod
    def _blank_dir_is_unset(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            return v or None
        return v

    @field_validator("pg_port", "mqtt_port", mode="before")
    @classmethod
    def _port(cls, v: Any, info: ValidationInfo) -> int:
        name = f"GRIDHUB_{(info.field_name or '').upper()}"
        if isinstance(v, str) and not v.strip():
            return DEFAULT_PG_PORT if info.field_name == "pg_port" else DEFAULT_MQTT_PORT
        try:
            port = int(v.strip() if isinstance(v, str) else v)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={v!r} is not a port number") from None
        if not 0 < port < 65536:
            raise ValueError(f"{name}={v!r} is not a port number (1 to 65535)")
        return port


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDHUB_", extra="ignore")

    database_url: str | None = Field(default=None, description="PostgreSQL URL; unset: local services")
    mqtt_url: str | None = Field(default=None, description="mqtt://user:pass@host:port; unset: local services")
    data_dir: Path = Path("./var")
    instance_id: str = Field(default_factory=socket.gethostname)
    secret_key: str | None = None
    rules_file: Path | None = None
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    timezone: str = DEFAULT_TIMEZONE
    readings_days: int = Field(default=400, gt=0)
    quarantine_days: int = Field(default=30, gt=0)
    token_ttl_s: int = Field(default=12 * 3600, gt=0)
    health_port: int | None = Field(default=None, gt=0, lt=65536, description="the port of this part's own"
                                    " /healthz and /metrics (what it waits for); unset: none. `gridhub up` gives"
                                    " ingest, alerts, detect and notify this port + 0..3 (unset: --port + 1..4)")
    health_host: str = Field(default="127.0.0.1", description="the address the parts' health endpoints listen on")
    trusted_proxies: str = Field(default="", description="comma-separated addresses or networks of the reverse"
                                 " proxies whose X-Forwarded-For is believed (log-in throttling, the audit trail);"
                                 " unset: the peer's own address")
    login_limit_storage: str = Field(default="memory://", description="where log-in throttling counts failures: a"
                                     " `limits` storage URI such as redis://host:6379; memory:// counts per API"
                                     " process")
    max_body_bytes: int = Field(default=1024 * 1024, gt=0, description="the largest request body of the API but"
                                " photo uploads, in bytes; larger is a 413 before it is read (api/limits.py)")
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="the largest photo upload request"
                                  " (a photo is at most 8 MiB, plus note and multipart framing), in bytes")
    notify_file: Path | None = Field(default=None, description="notification channels and routes (CONTRACT §6);"
                                     " unset: nothing is sent outside the hub")
    camera_files_dir: Path | None = Field(default=None, description="the folder a camera `source` may name files"
                                          " under (file:///… or a plain path); unset: no camera reads a file")
    map_tiles: str | None = Field(default=None, description="the board map's tile URL template, http(s) with {x},"
                                  " {y}, {z} (optional {s}: subdomains a, b, c; {s:1234}: the ones listed); unset:"
                                  " a plain vector view of the buildings, nothing loaded from elsewhere")
    map_coords: Literal["wgs84", "gcj02"] = Field(default="wgs84", description="the tile service's datum: gcj02 for"
                                                  " the Chinese services that use it (AutoNavi, Tencent); buildings"
                                                  " are stored as WGS-84 and shifted on the map")
    # CONTRACT §8: mosquitto (one machine; one partition) or a NATS JetStream cluster's MQTT gateway (partitions)
    broker: Literal["mosquitto", "nats"] = Field(default="mosquitto", description="GRIDHUB_BROKER: mosquitto, or"
                                                 " nats (a NATS JetStream cluster's MQTT gateway: MQTT 3.1.1, the"
                                                 " device stream cut into GRIDHUB_PARTITIONS partitions)")
    # partitions held by lease (gridhub/leases.py, CONTRACT §8): every instance of a part must use the same number
    partitions: int = Field(default=1, ge=1, le=1024, description="partitions of the device stream each part's"
                            " instances share by lease (GRIDHUB_PARTITIONS); 1 on mosquitto; unset on NATS: the"
                            " measured default")
    lease_s: float = Field(default=15.0, gt=0, le=600, description="how long a partition's lease lasts unless"
                           " renewed, in seconds (GRIDHUB_LEASE_S): how soon a standby takes over a dead holder's")
    # the broker check before ingest, alerts and `gridhub up` start (gridhub/brokercheck.py)
    broker_check: Literal["on", "warn", "off"] = Field(default="on", description="GRIDHUB_BROKER_CHECK: probe"
                                                       " the broker at start and refuse to start (exit 2) when it"
                                                       " drops queued QoS 1 messages; warn: log it loudly and start;"
                                                       " off: no probe")
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    services: ServicesSettings = Field(default_factory=ServicesSettings)

    @model_validator(mode="after")
    def _partitions_for_the_broker(self) -> Settings:
        """GRIDHUB_PARTITIONS unset: 1 on mosquitto (one wildcard subscription takes every device), and on NATS the
        measured default (gridhub/services/nats.py DEFAULT_PARTITIONS)."""
        if "partitions" not in self.model_fields_set and self.broker == "nats":
            from gridhub.services.nats import DEFAULT_PARTITIONS

            self.partitions = DEFAULT_PARTITIONS
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"unknown time zone {v!r}: use an IANA name such as {DEFAULT_TIMEZONE}") from exc
        return v

    @field_validator("map_tiles", mode="before")
    @classmethod
    def _tile_template(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip() or None
        if v is None:
            return None
        if not re.fullmatch(r"https?://[^/\s'\";,]+/[^\s'\";,]*", str(v)) or not all(
                k in str(v) for k in ("{x}", "{y}", "{z}")):
            raise ValueError(f"GRIDHUB_MAP_TILES={v!r} is not a tile URL template: http(s)://host/... with {{x}}, {{y}} "
                             "and {z}, without spaces, quotes, commas or semicolons")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _strip_prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not v or "#" in v or "+" in v:
            raise ValueError("topic prefix must be a non-empty topic without wildcards")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: str) -> str:
        import ipaddress

        for part in (p.strip() for p in v.split(",")):
            if part:
                try:
                    ipaddress.ip_network(part, strict=False)
                except ValueError as exc:
                    raise ValueError(f"GRIDHUB_TRUSTED_PROXIES: {part!r} is not an address or network"
                                     " (e.g. 10.0.0.5 or 10.0.0.0/24)") from exc
        return v

    @property
    def proxy_networks(self) -> list[Any]:
        import ipaddress

        return [ipaddress.ip_network(p.strip(), strict=False) for p in self.trusted_proxies.split(",") if p.strip()]

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def signing_key(self) -> str:
        """The hub's root secret: GRIDHUB_SECRET_KEY, else generated once into the data directory. Nothing uses it
        directly any more: the token key and the device password key are derived from it (`derive_key`)."""
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
        with contextlib.suppress(OSError):  # another process wrote it first: theirs is the key
            tmp.rename(path) if not path.exists() else tmp.unlink()
        return path.read_text().strip()

    def data_dir_has_state(self) -> bool:
        """Whether this install has run before: its data directory exists and holds anything (a generated key, the
        broker's files, the local services)."""
        try:
            return self.data_dir.is_dir() and any(self.data_dir.iterdir())
        except OSError:
            return False

    def client_id(self, part: str) -> str:
        """A stable MQTT client id for one part of this instance (persistent sessions)."""
        return f"gridhub-{part}-{self.instance_id}"[:128]


MIN_SECRET_BYTES = 32
TOKEN_KEY_INFO = "gridhub/v1 token signing"
DEVICE_KEY_INFO = "gridhub/v1 broker passwords"


def derive_key(secret: str, info: str) -> bytes:
    """A 32-byte key for one purpose (`info`, e.g. TOKEN_KEY_INFO) derived from the root secret by HKDF-SHA256, so
    that a key leaked from one use (a token key in a log, a device password) says nothing of the others."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info.encode()).derive(secret.encode())


class SecretKeyTooShort(ValueError):
    """GRIDHUB_SECRET_KEY is shorter than MIN_SECRET_BYTES on a new install."""


def check_secret_key(settings: Settings, *, existing: bool = False) -> str | None:
    """Refuse a GRIDHUB_SECRET_KEY shorter than 32 bytes on a new install (SecretKeyTooShort); on an existing one
    (`existing`: its database already has devices, or its data directory has state) return a warning instead, so
    that an upgrade never stops a running hub. None: nothing to say (a long key, or the generated one)."""
    if not settings.secret_key:
        return None
    size = len(settings.secret_key.encode())
    if size >= MIN_SECRET_BYTES:
        return None
    advice = ("generate one with `python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`, or unset it and"
              " the hub generates one in its data directory")
    if existing or settings.data_dir_has_state():
        return (f"GRIDHUB_SECRET_KEY is {size} bytes, shorter than {MIN_SECRET_BYTES}: tokens and device passwords"
                f" derive from it; change it ({advice}), then run `gridhub devices rotate` and re-provision the"
                " devices it lists")
    raise SecretKeyTooShort(f"GRIDHUB_SECRET_KEY is {size} bytes: a new install needs at least {MIN_SECRET_BYTES};"
                            f" {advice}")


def explain(exc: ValidationError) -> str:
    """A settings error as one line for the user: the validators' own messages (they name the variable and the
    fix), else pydantic's with the field."""
    parts = []
    for err in exc.errors():
        error = err.get("ctx", {}).get("error")
        parts.append(str(error) if isinstance(error, ValueError) else
                     f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}")
    return "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
