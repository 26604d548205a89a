"""The answers of CONTRACT §4 as pydantic models, for the OpenAPI document (routes build the JSON themselves;
the schema test checks that what they send matches these)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Severity = Literal["critical", "high", "normal", "low"]


class Page(BaseModel):
    next: str | None = Field(description="cursor of the next page, null on the last")


class Place(BaseModel):
    id: str
    name: str


class BuildingPlace(Place):
    floors: int | None


class Location(BaseModel):
    district: Place
    street: Place
    community: Place
    grid: Place
    building: BuildingPlace
    floor: int | None
    place: str | None


class Device(BaseModel):
    id: str
    kind: Literal["smoke_alarm", "stairwell_light", "sprinkler_pressure", "camera"]
    grid_id: str
    building_id: str
    floor: int | None
    place: str | None
    online: bool
    last_seen: datetime | None
    latest: dict[str, Any] = Field(description="newest value of every metric, by the readings' own time")
    retired: bool


class DeviceDetail(Device):
    heartbeat_s: int | None
    status: str | None
    seq_gaps: int
    location: Location


class DevicePage(Page):
    items: list[Device]


class RawPoint(BaseModel):
    ts: datetime
    value: Any


class BucketPoint(BaseModel):
    ts: datetime = Field(description="bucket start, aligned in GRIDHUB_TIMEZONE")
    min: float | None
    max: float | None
    avg: float | None
    count: int


class Readings(BaseModel):
    device_id: str
    metric: str
    start: datetime
    end: datetime
    bucket: Literal["1m", "5m", "15m", "1h", "6h", "1d"] | None = None
    truncated: bool | None = Field(default=None, description="raw points only: more than 10,000 in the range")
    points: list[RawPoint] | list[BucketPoint]


class CommandSent(BaseModel):
    id: str
    type: Literal["self_test", "silence", "snapshot"]
    device_id: str
    topic: str
    sent_by: str


class QuarantineEntry(BaseModel):
    id: str
    received_at: datetime
    topic: str
    device_id: str | None
    reason: str
    detail: str
    payload: str
    payload_encoding: Literal["utf8", "base64"]
    payload_truncated: bool


class QuarantinePage(Page):
    items: list[QuarantineEntry]


class Alert(BaseModel):
    id: str
    device_id: str | None
    building_id: str | None
    grid_id: str | None
    type: str
    severity: Severity
    state: Literal["active", "cleared"]
    acked: bool
    count: int
    first_seen: datetime
    last_seen: datetime
    cleared_at: datetime | None
    task_id: str | None
    detail: dict[str, Any]


class AlertPage(Page):
    items: list[Alert]


class HistoryStep(BaseModel):
    at: datetime = Field(description="when the person acted (an action replayed from offline keeps its own time)")
    actor: str
    action: str
    note: str | None
    received_at: datetime | None = Field(default=None, description="only when the hub received the step later than"
                                                                   " `at` (an offline replay)")


class TaskLocation(BaseModel):
    grid: str | None
    building: str | None
    floor: int | None
    place: str | None
    device_kind: str | None


class ChecklistItem(BaseModel):
    id: str
    label: str


class ChecklistResult(ChecklistItem):
    result: Literal["ok", "hazard", "n/a"]
    note: str | None
    photos: list[str]


class Patrol(BaseModel):
    """A patrol task's plan and results (CONTRACT §7)."""

    unit_id: str
    unit_name: str
    class_: Literal["key", "general", "shop", "major_hazard"] = Field(alias="class")
    kind: Literal["plan", "alert"]
    frequency: str
    period_start: datetime
    period_end: datetime
    planned_for: date
    checklist: list[ChecklistItem]
    results: list[ChecklistResult] | None
    note: str | None
    done_at: datetime | None
    done_by: str | None
    hazards: int
    overdue: bool


class Task(BaseModel):
    id: str
    type: str
    severity: Severity
    state: Literal["open", "accepted", "on_site", "resolved", "closed"]
    grid_id: str | None
    building_id: str | None
    device_id: str | None
    assignee: str | None
    assignee_name: str | None
    escalation_level: int
    accept_due: datetime | None
    resolve_due: datetime | None
    opened_at: datetime
    accepted_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    resolution: str | None
    count: int
    last_seen: datetime
    alert_ids: list[str]
    history: list[HistoryStep]
    location: TaskLocation
    unit_id: str | None = None
    source_task_id: str | None = None
    patrol: Patrol | None = Field(default=None, description="on patrol tasks only")


class TaskDetail(Task):
    alerts: list[Alert]


class TaskPage(Page):
    items: list[Task]


class PhotoStored(BaseModel):
    id: str
    task_id: str
    device_id: str | None
    kind: Literal["photo"]
    url: str
    bytes: int


class Evidence(BaseModel):
    id: str
    device_id: str | None
    task_id: str | None
    kind: Literal["detection", "photo"]
    grid_id: str | None
    created_by: str | None
    created_at: datetime
    bytes: int
    url: str


class EvidencePage(Page):
    items: list[Evidence]


class DeviceCounts(BaseModel):
    online: int
    offline: int


class AlertCounts(BaseModel):
    critical: int
    high: int
    normal: int
    low: int


class TaskCounts(BaseModel):
    open: int = Field(description="not yet closed")
    overdue: int = Field(description="open past the accept deadline, or unresolved past the resolve deadline")


class GridSummary(BaseModel):
    id: str
    name: str
    devices: DeviceCounts
    alerts: AlertCounts
    tasks: TaskCounts


class CommunitySummary(BaseModel):
    id: str
    name: str
    grids: list[GridSummary]


class StreetSummary(BaseModel):
    id: str
    name: str
    communities: list[CommunitySummary]


class Summary(BaseModel):
    streets: list[StreetSummary]
    at: datetime


class Kpi(BaseModel):
    level: Literal["grid", "community", "street"]
    id: str
    name: str
    due: int
    closed: int
    closed_on_time: int
    closure_rate: float | None = Field(description="结案率: closed / due")
    on_time_closure_rate: float | None = Field(description="按期结案率: closed on time / due")
    mean_accept_s: float | None
    mean_resolve_s: float | None
    open: dict[str, int]
    overdue: dict[str, int]


class Kpis(BaseModel):
    level: Literal["grid", "community", "street"]
    start: datetime
    end: datetime
    items: list[Kpi]


class Notification(BaseModel):
    """A delivery to me (CONTRACT §6): what was sent, on which channel, and how it went."""

    id: str
    task_id: str
    event: Literal["task.opened", "task.escalated", "task.reminder", "task.changed"]
    channel: str
    channel_type: str
    severity: Severity
    drill: bool
    state: Literal["pending", "sending", "sent", "failed", "skipped"]
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    answer: str | None = Field(description="the provider's answer, or why it was skipped")


class NotificationPage(Page):
    items: list[Notification]


def documented(model: type[BaseModel], status_code: int = 200) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that builds its JSON itself: documents the shape without re-validating it."""
    return {status_code: {"model": model}}
