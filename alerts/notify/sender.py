"""`gridhub notify run`: sends the delivery rows that `plan.py` wrote, retries them with backoff, and records every
provider's answer on the row, in the task's history (`notified`) and in `/metrics`.

Invariant: a row is claimed (`state = 'sending'`, `attempts + 1`, a lease) and COMMITTED before its request
leaves, and its outcome is committed after the answer. A sender killed in between leaves the row `sending`
with a lease that runs out; the next sender takes exactly those rows again and sends them with the same delivery
id (the receivers' `X-Gridhub-Delivery`, Aliyun's `OutId`, Tencent's `SessionContext`), so a crash can double
only the message whose outcome it made unknown, and loses none. Several senders share the table with
`FOR UPDATE SKIP LOCKED`.

Storms: below critical, a person (a group, for a group robot) gets at most `storm_per_minute` messages on a
channel in any 60 s (counted from the rows sent, so the limit holds across restarts and senders). What is due
beyond that waits for the window and then goes as ONE roll-up ("12号楼 23 台设备离线"); several rows due at once
for one person and channel beyond the remaining budget are rolled up at once. Critical rows never wait and are
never rolled up.

A database outage stops nothing: the loop waits with backoff and starts again on new connections
(`gridhub.waiting.run_through_outages`), logging once when it starts waiting and once when it is back; the part's
health endpoint says it is waiting for the database meanwhile. A row whose outcome could not be recorded stays
`sending` until its lease runs out, then goes again with the same delivery id (as after a crash).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gridhub import metrics
from gridhub.alerts.changes import UnitOfWork
from gridhub.alerts.notify.message import Answer, Channel, Message, PushSubscription
from gridhub.alerts.notify.plan import DELIVERIES_CHANNEL
from gridhub.alerts.notify.text import person, place_of_task, rollup_lines, title_and_lines
from gridhub.alerts.shapes import task_shape
from gridhub.alerts.tasks import SYSTEM, add_history
from gridhub.db import connect
from gridhub.notifyfile import NotifyFile
from gridhub.protocol import rfc3339
from gridhub.waiting import DATABASE, WAITS, run_through_outages

__all__ = ["Sender", "build_channels", "backoff_s"]

log = logging.getLogger("gridhub.notify")
Clock = Callable[[], datetime]


def backoff_s(attempts: int) -> float:
    """Seconds before attempt `attempts + 1`: 2, 4, 8 … capped at 5 minutes, with ±20 % jitter."""
    base = min(300.0, 2.0 ** max(1, attempts))
    return base * random.uniform(0.8, 1.2)


def build_channels(nf: NotifyFile) -> dict[str, Channel]:
    from gridhub.alerts.notify import channels

    return {name: channels.build(name, cfg) for name, cfg in nf.channels.items()}


@dataclass
class _Out:
    """One message to send: its leading row, the rows it carries (a roll-up), what to send."""

    lead: dict[str, Any]
    rows: list[dict[str, Any]]
    msg: Message | None = None
    answer: Answer | None = None
    seconds: float = 0.0
    skip: str | None = None
    tasks: list[str] = field(default_factory=list)


def _shape_or(conn: psycopg.Connection[Any], row: dict[str, Any]) -> dict[str, Any]:
    """The task's shape now, or as it was at the change when the task is gone."""
    return task_shape(conn, row["task_id"]) or row["payload"]


class Sender:
    """Claims due deliveries and sends them; `run_once()` is one round (tests call it), `start()` a loop in a
    thread woken by NOTIFY on `gridhub_deliveries` and at least every `poll_s`."""

    def __init__(self, database_url: str, nf: NotifyFile, *, channels: dict[str, Channel] | None = None,
                 clock: Clock | None = None, lease_s: float | None = None, batch: int = 200, threads: int = 8,
                 poll_s: float = 1.0, link_base: str | None = None) -> None:
        self.url = database_url
        self.nf = nf
        self.channels = channels if channels is not None else build_channels(nf)
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.lease = timedelta(seconds=lease_s or nf.sender_lease_s)
        self.batch = batch
        self.poll_s = poll_s
        self.link_base = (link_base or nf.link_base or "http://localhost:8000").rstrip("/")
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="notify-send")
        self.failed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None

    # ------------------------------------------------------------------ the loop

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="notify-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._conn is not None:
            self._conn.close()

    @property
    def waiting_for(self) -> str | None:
        """What the sender waits for ("database"), or None."""
        return DATABASE if DATABASE in WAITS.waiting() else None

    def _loop(self) -> None:
        try:
            run_through_outages(self._serve, waiter="notify-sender", stopping=self._stop, url=self.url)
        except Exception:
            log.exception("notify sender failed")
            self.failed.set()

    def _serve(self, connected: Callable[[], None]) -> None:
        """Send what is due, woken by NOTIFY; raises when the database goes away (the caller waits and calls again)."""
        if self._conn is not None:  # the previous connection, broken or not
            self._conn.close()
            self._conn = None
        with connect(self.url, autocommit=True) as listener:
            listener.execute(f"LISTEN {DELIVERIES_CHANNEL}")
            self._db()
            connected()
            while not self._stop.is_set():
                if self.run_once():
                    continue
                for _ in listener.notifies(timeout=self._wait_s(), stop_after=1):
                    pass

    def _wait_s(self) -> float:
        conn = self._db()
        row = conn.execute("SELECT min(due_at) FROM notify_deliveries WHERE state IN ('pending', 'sending')"
                           ).fetchone()
        conn.commit()
        if row is None or row[0] is None:
            return self.poll_s
        return max(0.01, min(self.poll_s, (row[0] - self.clock()).total_seconds()))

    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url)
        return self._conn

    # ------------------------------------------------------------------ one round

    def run_once(self) -> int:
        """Claim what is due, send it (in parallel, one attempt each), record the answers. Returns the number
        of rows that reached an outcome or were deferred."""
        conn = self._db()
        now = self.clock()
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                "WITH due AS (SELECT id FROM notify_deliveries WHERE state IN ('pending', 'sending')"
                " AND due_at <= %(now)s AND (state = 'pending' OR lease_until < %(now)s)"
                " ORDER BY (severity = 'critical') DESC, due_at, id LIMIT %(n)s FOR UPDATE SKIP LOCKED)"
                " UPDATE notify_deliveries d SET state = 'sending', lease_until = %(lease)s,"
                " attempts = d.attempts + 1 FROM due WHERE d.id = due.id RETURNING d.*",
                {"now": now, "n": self.batch, "lease": now + self.lease}).fetchall()
        conn.commit()
        if not rows:
            return 0
        outs = self._prepare(conn, rows, now)
        conn.commit()
        for o in outs:  # skips first: nothing to wait for
            if o.msg is None or o.skip is not None:
                self._record(conn, o, self.clock())
        futures = {self.pool.submit(self._send, o): o for o in outs if o.msg is not None and o.skip is None}
        for fut in as_completed(futures):  # each outcome recorded as soon as its answer is in
            o = futures[fut]
            o.answer, o.seconds = fut.result()
            self._record(conn, o, self.clock())
        return len(rows)

    def _send(self, o: _Out) -> tuple[Answer, float]:
        assert o.msg is not None
        ch = self.channels.get(o.lead["channel"])
        started = time.monotonic()
        if ch is None:
            return Answer(ok=False, retry=False, detail=f"channel {o.lead['channel']!r} is not configured"), 0.0
        try:
            answer = ch.send(o.msg)
        except Exception as exc:  # noqa: BLE001 - a channel's bug must not stop the sender
            log.exception("channel %s raised", o.lead["channel"])
            answer = Answer(ok=False, retry=True, detail=f"{type(exc).__name__}: {exc}"[:300])
        return answer, time.monotonic() - started

    # ------------------------------------------------------------------ what to send

    def _prepare(self, conn: psycopg.Connection[Any], rows: list[dict[str, Any]], now: datetime) -> list[_Out]:
        self._round: dict[tuple[str, str], Any] = {}  # what this round read once: shapes, places, people
        outs: list[_Out] = []
        groups: dict[tuple[str, str | None, bool], list[dict[str, Any]]] = {}
        for r in rows:
            why = self._why_not(conn, r, now)
            if why is not None:
                outs.append(_Out(r, [r], skip=why))
            elif r["severity"] == "critical":
                outs.append(_Out(r, [r]))
            else:
                groups.setdefault((r["channel"], r["recipient"], r["drill"]), []).append(r)
        for (channel, recipient, _), group in groups.items():
            count, oldest = conn.execute(
                "SELECT count(*), min(sent_at) FROM notify_deliveries WHERE channel = %s"
                " AND recipient IS NOT DISTINCT FROM %s AND state = 'sent' AND severity <> 'critical'"
                " AND rolled_into IS NULL AND sent_at > %s",
                (channel, recipient, now - timedelta(seconds=60))).fetchone() or (0, None)
            budget = self.nf.storm_per_minute - int(count)
            if budget <= 0:
                until = (oldest or now) + timedelta(seconds=60.5)
                conn.execute("UPDATE notify_deliveries SET state = 'pending', attempts = attempts - 1,"
                             " lease_until = NULL, due_at = %s WHERE id = ANY(%s)", (until, [r["id"] for r in group]))
                continue
            if len(group) <= budget:
                outs.extend(_Out(r, [r]) for r in group)
            else:
                outs.append(_Out(group[0], group))
        for o in outs:
            if o.skip is None:
                o.msg = self._message(conn, o, now)
                if o.msg is None:
                    o.skip = "nothing to send"
        return outs

    def _why_not(self, conn: psycopg.Connection[Any], r: dict[str, Any], now: datetime) -> str | None:
        """Why a claimed row is not sent at all (skipped), or None."""
        if r["fallback"]:
            t = conn.execute("SELECT state, escalation_level FROM tasks WHERE id = %s", (r["task_id"],)).fetchone()
            level = int(r["route"].removeprefix("level"))
            if t is None or t[0] != "open":
                return f"task {t[0] if t else 'gone'}: fallback not needed"
            if int(t[1]) >= level:
                return f"escalation already reached level {level}"
        if r["recipient"] is not None:
            w = conn.execute("SELECT active FROM workers WHERE id = %s", (r["recipient"],)).fetchone()
            if w is None or not w[0]:
                return f"{r['recipient']} is no longer active"
        if r["channel_type"] == "webpush" and r["recipient"] is not None and conn.execute(
                "SELECT 1 FROM push_subscriptions WHERE worker_id = %s LIMIT 1", (r["recipient"],)).fetchone() is None:
            return f"{r['recipient']} has no push subscription"
        return None

    def _once(self, kind: str, key: str, read: Callable[[], Any]) -> Any:
        if (kind, key) not in self._round:
            self._round[(kind, key)] = read()
        return self._round[(kind, key)]

    def _message(self, conn: psycopg.Connection[Any], o: _Out, now: datetime) -> Message | None:
        lead = o.lead
        shapes: dict[str, dict[str, Any]] = {}
        for r in o.rows:
            if r["task_id"] not in shapes:
                shapes[r["task_id"]] = self._once("task", r["task_id"], partial(_shape_or, conn, r))
        o.tasks = list(shapes)
        task = shapes[lead["task_id"]]
        place = self._once("place", task["id"], lambda: place_of_task(conn, task))
        link = f"{self.link_base}/worker#task={task['id']}"
        if len(shapes) > 1:
            places = {tid: self._once("place", tid, partial(place_of_task, conn, t)) for tid, t in shapes.items()}
            title, lines, text = rollup_lines(list(shapes.values()), places)
            text = f"{text} {self.link_base}/worker"
            link = f"{self.link_base}/worker"
        else:
            title, lines, text = title_and_lines(lead["event"], lead["route"], task, place, link)
        recipient = self._once("person", lead["recipient"], lambda: person(conn, lead["recipient"])) \
            if lead["recipient"] else None
        mentions = [p for p in (self._once("person", m, partial(person, conn, m)) for m in lead["mentions"])
                    if p is not None]
        subs: list[PushSubscription] = []
        if lead["channel_type"] == "webpush" and lead["recipient"]:
            subs = [PushSubscription(*r) for r in conn.execute(
                "SELECT id, endpoint, p256dh, auth FROM push_subscriptions WHERE worker_id = %s ORDER BY created_at",
                (lead["recipient"],))]
        return Message(
            delivery_id=lead["id"], event=lead["event"], severity=lead["severity"], drill=lead["drill"], task=task,
            place=place, title=title, lines=lines, text=text, link=link, recipient=recipient, mentions=mentions,
            push_subscriptions=subs, rolled_up=o.tasks if len(o.tasks) > 1 else [],
            sent_at=rfc3339(now, UTC) or "")

    # ------------------------------------------------------------------ outcomes

    def _record(self, conn: psycopg.Connection[Any], o: _Out, now: datetime) -> None:
        lead, ids = o.lead, [r["id"] for r in o.rows]
        channel = lead["channel"]
        who = lead["recipient"] or ("group: " + ", ".join(lead["mentions"]) if lead["mentions"] else "group")
        counts: dict[tuple[str, str], float] = {}
        with UnitOfWork(conn) as uow:
            if o.skip is not None:
                state, note = "skipped", o.skip
                conn.execute("UPDATE notify_deliveries SET state = 'skipped', answer = %s, finished_at = %s,"
                             " lease_until = NULL WHERE id = ANY(%s)", (o.skip, now, ids))
            elif o.answer is not None and o.answer.ok:
                state, note = "sent", o.answer.detail
                conn.execute("UPDATE notify_deliveries SET state = 'sent', answer = %s, sent_at = %s,"
                             " finished_at = %s, lease_until = NULL WHERE id = %s", (o.answer.detail, now, now, lead["id"]))
                if len(ids) > 1:
                    conn.execute("UPDATE notify_deliveries SET state = 'sent', answer = %s, sent_at = %s,"
                                 " finished_at = %s, lease_until = NULL, rolled_into = %s WHERE id = ANY(%s)",
                                 (f"rolled up into {lead['id']}", now, now, lead["id"], ids[1:]))
                metrics.observe(conn, "gridhub_notification_send_seconds", f'channel="{channel}"', o.seconds)
            else:
                answer = o.answer or Answer(ok=False, retry=False, detail="no answer")
                retry_at = now + timedelta(seconds=backoff_s(int(lead["attempts"])))
                if answer.retry and retry_at < lead["expires_at"]:
                    state, note = "retry", answer.detail
                    conn.execute("UPDATE notify_deliveries SET state = 'pending', answer = %s, due_at = %s,"
                                 " lease_until = NULL WHERE id = ANY(%s)", (answer.detail, retry_at, ids))
                else:
                    state, note = "failed", answer.detail
                    conn.execute("UPDATE notify_deliveries SET state = 'failed', answer = %s, finished_at = %s,"
                                 " lease_until = NULL WHERE id = ANY(%s)", (answer.detail, now, ids))
                if o.answer is not None:
                    metrics.observe(conn, "gridhub_notification_send_seconds", f'channel="{channel}"', o.seconds)
            if o.answer is not None and o.answer.gone:
                conn.execute("DELETE FROM push_subscriptions WHERE id = ANY(%s)", (list(o.answer.gone),))
            counts[("gridhub_notifications_total", f'channel="{channel}",result="{state}"')] = len(ids)
            metrics.bump(conn, counts)
            if state in ("sent", "failed"):
                verb = "sent" if state == "sent" else "failed"
                extra = f" (roll-up of {len(o.tasks)} tasks)" if len(o.tasks) > 1 else ""
                for tid in dict.fromkeys(r["task_id"] for r in o.rows):
                    if conn.execute("SELECT 1 FROM tasks WHERE id = %s", (tid,)).fetchone() is None:
                        continue
                    add_history(conn, tid, now, SYSTEM, "notified",
                                f"{verb} to {who} via {channel} ({lead['channel_type']}), delivery {lead['id']},"
                                f" attempt {lead['attempts']}{extra}: {note}"[:1000])
                    uow.stage_task(tid, quiet=True)
        conn.commit()
        if state in ("failed", "retry"):
            log.warning("delivery %s to %s via %s: %s (%s)", lead["id"], who, channel, state, note)
