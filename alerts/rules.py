"""The alert rule book: thresholds, windows, severities and task deadlines from gridhub/rules.yaml, merged with
GRIDHUB_RULES_FILE overrides per kind and per device, validated at start-up with errors that name the field."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Severity = Literal["critical", "high", "normal", "low"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "normal", "low")


class RulesError(ValueError):
    """The rules file is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Threshold(_Strict):
    """A condition on one metric held for a time, with a separate (hysteresis) clear condition."""

    metric: str
    guard: dict[str, bool | float] = Field(default_factory=dict)
    raise_below: float | None = None
    raise_above: float | None = None
    raise_hold_s: float = Field(default=0, ge=0)
    clear_at_least: float | None = None
    clear_at_most: float | None = None
    clear_hold_s: float = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_each(self) -> Threshold:
        if (self.raise_below is None) == (self.raise_above is None):
            raise ValueError("set exactly one of raise_below / raise_above")
        if (self.clear_at_least is None) == (self.clear_at_most is None):
            raise ValueError("set exactly one of clear_at_least / clear_at_most")
        return self

    def raises(self, v: float) -> bool:
        return v < self.raise_below if self.raise_below is not None else v > (self.raise_above or 0.0)

    def clears(self, v: float) -> bool:
        return v >= self.clear_at_least if self.clear_at_least is not None else v <= (self.clear_at_most or 0.0)


class DropRule(_Strict):
    metric: str = "pressure_mpa"
    fall: float = Field(default=0.07, gt=0)
    within_s: float = Field(default=60, gt=0)
    stable_s: float = Field(default=600, gt=0)


class IncidentRule(_Strict):
    window_s: float = Field(default=300, gt=0)


class NoisyRule(_Strict):
    max_alarms: int = Field(default=5, ge=1)
    window_s: float = Field(default=86400, gt=0)


class OfflineRule(_Strict):
    heartbeat_factor: float = Field(default=2, gt=0)
    grace_margin_s: float = Field(default=15, ge=0)
    building_min_devices: int = Field(default=3, ge=2)  # this many offline in one building within the window ...
    building_window_s: float = Field(default=300, gt=0)  # ... are one building task
    recovered_after_s: float = Field(default=600, gt=0)  # back and stayed back this long: resolved as recovered


class Deadlines(_Strict):
    accept_s: float = Field(gt=0)
    resolve_s: float = Field(gt=0)
    remind_s: float = Field(gt=0)
    max_escalation: int = Field(ge=0, le=3)


Frequency = Literal["weekly", "monthly", "quarterly", "half_yearly", "yearly"]
UNIT_CLASSES = ("key", "general", "shop", "major_hazard")
HAZARD_CATEGORIES = ("escape_route", "fire_equipment", "electrical", "gas", "ebike", "other")


class ChecklistItem(_Strict):
    label: str = Field(min_length=1, max_length=100)
    category: Literal["escape_route", "fire_equipment", "electrical", "gas", "ebike", "other"]


class PatrolRules(_Strict):
    """Patrol plans (CONTRACT §7): a frequency and a checklist per unit class, and the classes an alert patrols."""

    frequency: dict[Literal["key", "general", "shop", "major_hazard"], Frequency]
    on_alert: tuple[Literal["key", "general", "shop", "major_hazard"], ...] = ()
    items: dict[str, ChecklistItem]
    checklists: dict[Literal["key", "general", "shop", "major_hazard"], tuple[str, ...]]

    @model_validator(mode="after")
    def _complete(self) -> PatrolRules:
        for cls in UNIT_CLASSES:
            if cls not in self.frequency:
                raise ValueError(f"patrols.frequency: no frequency for unit class {cls}")
            items = self.checklists.get(cls)  # type: ignore[call-overload]
            if not items:
                raise ValueError(f"patrols.checklists: no checklist for unit class {cls}")
            unknown = [i for i in items if i not in self.items]
            if unknown:
                raise ValueError(f"patrols.checklists.{cls}: unknown item {', '.join(unknown)}: define it under"
                                 " patrols.items")
            if len(set(items)) != len(items):
                raise ValueError(f"patrols.checklists.{cls}: an item appears twice")
        return self

    def checklist(self, unit_class: str) -> list[dict[str, str]]:
        return [{"id": i, "label": self.items[i].label}
                for i in self.checklists[unit_class]]  # type: ignore[index]


class RuleBook(_Strict):
    thresholds: dict[str, dict[str, Threshold]]
    sprinkler_drop: DropRule = DropRule()
    fire_incident: IncidentRule = IncidentRule()
    noisy_device: NoisyRule = NoisyRule()
    offline: OfflineRule = OfflineRule()
    severity: dict[str, Severity]
    tasks: dict[Severity, Deadlines]
    devices: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    patrols: PatrolRules

    @model_validator(mode="after")
    def _complete(self) -> RuleBook:
        missing = [s for s in SEVERITIES if s not in self.tasks]
        if missing:
            raise ValueError(f"tasks: deadlines missing for severity {', '.join(missing)}")
        return self

    def severity_of(self, alert_type: str) -> Severity:
        return self.severity.get(alert_type, "normal")

    def deadlines(self, severity: str) -> Deadlines:
        return self.tasks[severity]  # type: ignore[index]

    def thresholds_for(self, kind: str, device_id: str) -> dict[str, Threshold]:
        """The kind's held thresholds with the device's overrides applied."""
        rules = dict(self.thresholds.get(kind, {}))
        for name, fields in self.devices.get(device_id, {}).items():
            if name in rules:
                try:
                    rules[name] = Threshold.model_validate({**rules[name].model_dump(), **fields})
                except ValidationError as exc:
                    raise RulesError(f"rules devices.{device_id}.{name}: {exc}") from exc
        return rules

    def drop_for(self, device_id: str) -> DropRule:
        fields = self.devices.get(device_id, {}).get("sprinkler_drop")
        return DropRule.model_validate({**self.sprinkler_drop.model_dump(), **fields}) if fields else self.sprinkler_drop


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def default_rules_text() -> str:
    return resources.files("gridhub").joinpath("rules.yaml").read_text(encoding="utf-8")


def load_rules(override_file: Path | None = None) -> RuleBook:
    """The built-in rules merged with `override_file` (GRIDHUB_RULES_FILE)."""
    data = yaml.safe_load(default_rules_text())
    source = "gridhub/rules.yaml"
    if override_file is not None:
        try:
            over = yaml.safe_load(Path(override_file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RulesError(f"cannot read rules file {override_file}: {exc}") from exc
        if not isinstance(over, dict):
            raise RulesError(f"rules file {override_file} must be a mapping of sections")
        data = _merge(data, over)
        source = str(override_file)
    try:
        book = RuleBook.model_validate(data)
    except ValidationError as exc:
        raise RulesError(f"rules from {source} are invalid: {exc}") from exc
    for dev, rules in book.devices.items():  # fail at start-up, not at the device's first message
        for kind, kind_rules in book.thresholds.items():
            if any(name in kind_rules for name in rules):
                book.thresholds_for(kind, dev)
        if "sprinkler_drop" in rules:
            try:
                book.drop_for(dev)
            except ValidationError as exc:
                raise RulesError(f"rules devices.{dev}.sprinkler_drop: {exc}") from exc
    return book
