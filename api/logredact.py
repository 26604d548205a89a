"""Tokens and stream tickets never reach a log: `?access_token=…` and `?ticket=…` values become `***`.

uvicorn's access log prints each request's path with its query string, and the stream is opened with a token or a
ticket in the query (EventSource cannot send headers). `RedactSecrets` rewrites a record's message and arguments
before any handler formats it. `uvicorn_log_config()` is uvicorn's own logging configuration with the filter on
every handler and on uvicorn's loggers (as `gridhub api`, `gridhub up` and `gridhub demo` start the API), and
`install()` puts it on the root logger's handlers and uvicorn's loggers of a process configured otherwise.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

__all__ = ["RedactSecrets", "install", "redact", "uvicorn_log_config"]

_SECRET_PARAM = re.compile(r"(?i)\b(access_token|ticket)=[^&\s\"'<>]*")
LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def redact(text: str) -> str:
    """`text` with the value of every `access_token=` and `ticket=` replaced by `***`."""
    return _SECRET_PARAM.sub(r"\1=***", text)


def _clean(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class RedactSecrets(logging.Filter):
    """Rewrites the record in place (message and every string argument); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _clean(v) for k, v in record.args.items()}
        return True


def _has_filter(holder: logging.Filterer) -> bool:
    return any(isinstance(f, RedactSecrets) for f in holder.filters)


def install() -> None:
    """The filter on the root logger's handlers and on uvicorn's loggers (idempotent)."""
    targets: list[logging.Filterer] = [*logging.getLogger().handlers]
    for name in LOGGERS:
        logger = logging.getLogger(name)
        targets += [logger, *logger.handlers]
    for target in targets:
        if not _has_filter(target):
            target.addFilter(RedactSecrets())


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging configuration with `RedactSecrets` on every handler and logger it names."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_secrets"] = {"()": f"{__name__}.RedactSecrets"}
    for handler in config.get("handlers", {}).values():
        handler["filters"] = [*handler.get("filters", []), "redact_secrets"]
    for logger in config.get("loggers", {}).values():
        logger["filters"] = [*logger.get("filters", []), "redact_secrets"]
    return config


def uvicorn_options(trusted_proxies: str) -> dict[str, Any]:
    """How `gridhub api` runs uvicorn (the tests serve the app the same way): tokens redacted from its logs, and
    X-Forwarded-For/-Proto believed from GRIDHUB_TRUSTED_PROXIES only, the list api/deps.client_address uses
    (uvicorn's default would believe any local peer)."""
    return {"log_config": uvicorn_log_config(), "proxy_headers": bool(trusted_proxies),
            "forwarded_allow_ips": trusted_proxies or ""}
