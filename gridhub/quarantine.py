"""The quarantine (CONTRACT §1): how a refused message's payload is kept, and the one-row writer.

Ingest and the detectors both quarantine what they refuse. The payload is kept whole up to 64 KiB, as
UTF-8 text when it is text (a cut that splits a multi-byte character is trimmed back to the character),
else as base64 (also when it holds NUL, which PostgreSQL text cannot). Ingest writes its entries in
batches by COPY (ingest/store.py) with ``quarantine_payload``; a part that refuses one message at a
time (the detectors) calls ``quarantine`` inside its own connection.
"""

from __future__ import annotations

import base64
from typing import Any

import psycopg

from gridhub.metrics import bump
from gridhub.protocol import MAX_PAYLOAD, Reason

__all__ = ["quarantine", "quarantine_payload"]

INSERT = (
    "INSERT INTO quarantine (topic, device_id, reason, detail, payload, payload_encoding, payload_truncated)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


def quarantine_payload(payload: bytes) -> tuple[str, str, bool]:
    """(text, encoding, truncated): the payload cut to 64 KiB, as UTF-8 text when it is, else base64."""
    truncated = len(payload) > MAX_PAYLOAD
    cut = payload[:MAX_PAYLOAD] if truncated else payload
    text: str | None = None
    for trim in range(4 if truncated else 1):  # a cut may split a multi-byte character
        try:
            text = (cut[: len(cut) - trim] if trim else cut).decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    if text is None or "\x00" in text:  # PostgreSQL text cannot hold NUL
        return base64.b64encode(cut).decode("ascii"), "base64", truncated
    return text, "utf8", truncated


def quarantine(
    conn: psycopg.Connection[Any],
    topic: str,
    device_id: str | None,
    reason: Reason,
    detail: str,
    payload: bytes,
) -> None:
    """Store one quarantine entry and count it under ``gridhub_quarantined_total``, in one transaction."""
    text, encoding, truncated = quarantine_payload(payload)
    with conn.transaction():
        conn.execute(INSERT, (topic, device_id, reason.value, detail, text, encoding, truncated))
        bump(conn, {("gridhub_quarantined_total", f'reason="{reason.value}"'): 1})
