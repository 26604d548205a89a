"""Rules over one device's messages, in memory and on the messages' own time: which alerts a reading or an
event raises or clears (held thresholds with hysteresis, the sprinkler drop window, event mappings)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from gridhub.alerts.rules import RuleBook, Threshold
from gridhub.protocol import EVENTS, MAX_FUTURE_MS, METRICS, DeviceKind, Event, Reading


@dataclass(frozen=True)
class Finding:
    action: Literal["raise", "clear"]
    alert_type: str
    ts_ms: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class DeviceState:
    """What the rules remember of one device: hold windows, the drop window, its active alert types."""

    holds: dict[str, dict[str, Any]] = field(default_factory=dict)  # rule -> {"since": ms | None, "last": ms}
    drop: dict[str, Any] = field(default_factory=dict)  # {"window": [[ms, v]], "stable_since", "lo", "hi", "last"}
    active: set[str] = field(default_factory=set)  # alert types active in the database
    dirty: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"holds": self.holds, "drop": self.drop}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None, active: set[str]) -> DeviceState:
        data = data or {}
        return cls(holds=dict(data.get("holds") or {}), drop=dict(data.get("drop") or {}), active=set(active))


# event type -> (action, alert type); self_test is decided by detail.passed
EVENT_ALERTS: dict[str, tuple[Literal["raise", "clear"], str]] = {
    "alarm": ("raise", "fire_alarm"), "alarm_cleared": ("clear", "fire_alarm"),
    "fault": ("raise", "device_fault"), "fault_cleared": ("clear", "device_fault"),
    "video_loss": ("raise", "device_fault"), "video_restored": ("clear", "device_fault"),
    "low_battery": ("raise", "low_battery"),
    "tamper": ("raise", "tamper"), "tamper_cleared": ("clear", "tamper"),
    "exit_blocked": ("raise", "exit_blocked"), "exit_cleared": ("clear", "exit_blocked"),
    "camera_obstructed": ("raise", "camera_obstructed"), "camera_obstructed_cleared": ("clear", "camera_obstructed"),
    "lamp_fault": ("raise", "light_fault"), "lamp_fault_cleared": ("clear", "light_fault"),
}


def acceptable(kind: str, msg: Reading | Event, now_ms: int) -> bool:
    """What ingest would accept rather than quarantine: known event, metrics in range, ts not in the future."""
    if msg.ts > now_ms + MAX_FUTURE_MS:
        return False
    try:
        k = DeviceKind(kind)
    except ValueError:
        return False
    if isinstance(msg, Event):
        return msg.type in EVENTS[k]
    for name, value in msg.metrics.items():
        spec = METRICS[k].get(name)
        if spec is None:
            continue
        if spec.kind == "bool":
            if not isinstance(value, bool):
                return False
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        try:
            value = float(value)  # an integer beyond a double is out of range, as ingest says
        except OverflowError:
            return False
        if not math.isfinite(value):
            return False
        if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
            return False
    return True


def event_findings(ev: Event) -> list[Finding]:
    if ev.type == "self_test":
        passed = ev.detail.get("passed")
        if not isinstance(passed, bool):
            return []
        found = {"event": "self_test", "passed": passed, **({"drill": True} if ev.detail.get("drill") is True else {})}
        return [Finding("clear" if passed else "raise", "device_fault", ev.ts, found)]
    mapped = EVENT_ALERTS.get(ev.type)
    if mapped is None:
        return []
    action, alert_type = mapped
    detail: dict[str, Any] = {"event": ev.type, **({"detail": ev.detail} if ev.detail else {})}
    if ev.detail.get("drill") is True:  # a drill (演练): the alert says so, and its task is a drill task
        detail["drill"] = True
    return [Finding(action, alert_type, ev.ts, detail)]


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def _hold(st: DeviceState, name: str, th: Threshold, metrics: dict[str, Any], ts: int) -> Finding | None:
    h = st.holds.setdefault(name, {"since": None, "last": None})
    if h["last"] is not None and ts <= h["last"]:
        return None  # late or repeated: holds are judged in time order
    h["last"] = ts
    v = _number(metrics.get(th.metric))
    if v is None:
        return None
    active = name in st.active
    guarded = all(metrics.get(g) == want for g, want in th.guard.items())
    cond = guarded and (th.clears(v) if active else th.raises(v))
    hold_ms = (th.clear_hold_s if active else th.raise_hold_s) * 1000
    if not cond:
        if h["since"] is not None:
            h["since"] = None
            st.dirty = True
        return None
    if h["since"] is None:
        h["since"] = ts
        st.dirty = True
    if ts - h["since"] < hold_ms:
        return None
    h["since"] = None
    st.dirty = True
    if active:
        st.active.discard(name)
        return Finding("clear", name, ts, {th.metric: v})
    st.active.add(name)
    return Finding("raise", name, ts, {th.metric: v, "held_s": th.raise_hold_s})


def _drop(st: DeviceState, rules: RuleBook, device_id: str, metrics: dict[str, Any], ts: int) -> Finding | None:
    rule = rules.drop_for(device_id)
    v = _number(metrics.get(rule.metric))
    if v is None:
        return None
    d = st.drop
    if d.get("last") is not None and ts <= d["last"]:
        return None
    d["last"] = ts
    st.dirty = True
    # the window holds a decreasing run of values (a sliding maximum): its head is the peak of the last within_s
    window = [p for p in d.get("window", []) if p[0] >= ts - rule.within_s * 1000]
    found: Finding | None = None
    active = "sprinkler_drop" in st.active
    peak = window[0][1] if window else v
    if not active and peak - v >= rule.fall - 1e-9:
        st.active.add("sprinkler_drop")
        found = Finding("raise", "sprinkler_drop", ts, {rule.metric: v, "from": peak, "within_s": rule.within_s})
        d.update(stable_since=ts, lo=v, hi=v)
    elif active:
        if d.get("stable_since") is None:
            d.update(stable_since=ts, lo=v, hi=v)
        lo, hi = min(d["lo"], v), max(d["hi"], v)
        if hi - lo >= rule.fall - 1e-9:
            d.update(stable_since=ts, lo=v, hi=v)
        else:
            d.update(lo=lo, hi=hi)
            if ts - d["stable_since"] >= rule.stable_s * 1000:
                st.active.discard("sprinkler_drop")
                d.update(stable_since=None, lo=None, hi=None)
                found = Finding("clear", "sprinkler_drop", ts, {rule.metric: v, "stable_s": rule.stable_s})
    while window and window[-1][1] <= v:
        window.pop()
    window.append([ts, v])
    d["window"] = window
    return found


def reading_findings(st: DeviceState, rules: RuleBook, kind: str, device_id: str, r: Reading) -> list[Finding]:
    """Evaluate a reading against the device's held thresholds and drop rule, updating its state."""
    out: list[Finding] = []
    for name, th in rules.thresholds_for(kind, device_id).items():
        f = _hold(st, name, th, r.metrics, r.ts)
        if f:
            out.append(f)
    if kind == DeviceKind.SPRINKLER_PRESSURE:
        f = _drop(st, rules, device_id, r.metrics, r.ts)
        if f:
            out.append(f)
    return out
