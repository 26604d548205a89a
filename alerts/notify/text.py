"""The words of a notification, in Chinese, built once for every channel: the title, the lines (place, type,
deadline, link) and a one-line text for SMS and push; and the storm roll-up ("12号楼 23 台设备离线")."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gridhub.alerts.notify.message import Person
from gridhub.labels import SEVERITY_NAMES, TYPE_NAMES
from gridhub.settings import get_settings

__all__ = ["TYPE_NAMES", "EVENT_NAMES", "place_of_task", "title_and_lines", "rollup_lines", "person"]

EVENT_NAMES = {"task.opened": "新任务", "task.escalated": "任务升级", "task.reminder": "催办",
               "task.changed": "任务变更"}
LEVEL_NAMES = {"assignee": "", "level1": "网格长", "level2": "街道", "level3": "应急管理局"}


def person(conn: psycopg.Connection[Any], worker_id: str) -> Person | None:
    row = conn.execute("SELECT id, name, role, phone, wecom_userid, dingtalk_mobile FROM workers WHERE id = %s",
                       (worker_id,)).fetchone()
    return Person(*row) if row else None


def place_of_task(conn: psycopg.Connection[Any], task: dict[str, Any]) -> dict[str, Any]:
    """Community, building, floor and place names of a task (what the worker needs to find it)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT c.name AS community, g.name AS grid, b.name AS building, d.floor, d.place,"
            " w.name AS assignee_name"
            " FROM (SELECT %s::text AS grid_id, %s::text AS building_id, %s::text AS device_id,"
            " %s::text AS assignee) t"
            " LEFT JOIN grids g ON g.id = t.grid_id LEFT JOIN communities c ON c.id = g.community_id"
            " LEFT JOIN buildings b ON b.id = t.building_id LEFT JOIN devices d ON d.id = t.device_id"
            " LEFT JOIN workers w ON w.id = t.assignee",
            (task.get("grid_id"), task.get("building_id"), task.get("device_id"), task.get("assignee"))).fetchone()
    return dict(row) if row else {}


def _where(place: dict[str, Any]) -> str:
    bits = [place.get("community"), place.get("building")]
    if place.get("floor") is not None:
        bits.append(f"{place['floor']}层")
    bits.append(place.get("place"))
    return " ".join(str(b) for b in bits if b) or "（未登记位置）"


def _local(text: str | None) -> str:
    if not text:
        return "—"
    return datetime.fromisoformat(text).astimezone(get_settings().tz).strftime("%m-%d %H:%M")


def title_and_lines(event: str, route: str, task: dict[str, Any], place: dict[str, Any],
                    link: str) -> tuple[str, list[str], str]:
    """(title, lines, one-line text) of a message about one task. The channels add the link to the lines in
    their own format; the one-line text (SMS, push body) carries it."""
    kind = TYPE_NAMES.get(task["type"], task["type"])
    drill = "【演练】" if task.get("drill") else ""
    head = EVENT_NAMES.get(event, "任务")
    if route != "assignee" and LEVEL_NAMES.get(route):
        head += f"（{LEVEL_NAMES[route]}）"
    title = f"{drill}【{SEVERITY_NAMES.get(task['severity'], task['severity'])}】{kind} · {head}"
    where = _where(place)
    due = (f"接单期限 {_local(task.get('accept_due'))}" if task.get("state") == "open"
           else f"办结期限 {_local(task.get('resolve_due'))}")
    lines = [f"地点：{where}", f"类型：{kind}（{task['id']}）", due]
    if task.get("escalation_level"):
        lines.append(f"已升级到第 {task['escalation_level']} 级")
    if task.get("assignee"):
        lines.append(f"负责人：{place.get('assignee_name') or task['assignee']}")
    text = f"{drill}{kind}：{where}，{due}。{link}"
    return title, lines, text


def rollup_lines(tasks: list[dict[str, Any]], places: dict[str, dict[str, Any]]) -> tuple[str, list[str], str]:
    """One message for many tasks (a storm): one line per building and type, e.g. "12号楼 23 台设备离线"."""
    groups: Counter[tuple[str, str]] = Counter()
    devices: dict[tuple[str, str], set[str]] = {}
    for t in tasks:
        building = places.get(t["id"], {}).get("building") or "（未登记楼栋）"
        key = (building, t["type"])
        groups[key] += 1
        devices.setdefault(key, set()).update(t.get("device_ids") or ([t["device_id"]] if t.get("device_id") else []))
    lines = []
    for (building, kind), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0])):
        count = max(n, len(devices[(building, kind)]))
        if kind == "device_offline":
            lines.append(f"{building} {count} 台设备离线")
        else:
            lines.append(f"{building} {count} 条{TYPE_NAMES.get(kind, kind)}")
    drill = "【演练】" if tasks and all(t.get("drill") for t in tasks) else ""
    title = f"{drill}【汇总】{len(tasks)} 条任务"
    return title, lines, f"{title}：" + "；".join(lines[:5]) + ("…" if len(lines) > 5 else "")
