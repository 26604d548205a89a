"""Scenarios: YAML files of timed device behaviour, cast onto a registry's devices and played on the broker.

A scenario names roles (`cast`), then `steps` that say what each role's devices do and when, in scenario
seconds. It may run faster than real time (`speed`) by compressing the past: the message of scenario second
`s` carries `ts = T0 + s`, where T0 is placed so that the last second is now; no `ts` is ever in the future
(except where a step asks for it, `ts_offset_s`, to test clock skew).

A scenario marked `drill: true` (or played with `--drill`) is a drill (演练): every event it sends carries
`detail.drill: true` (CONTRACT §1 leaves `detail` free), and so do the events of the scenarios it includes; the
hub then raises its alerts marked drill and opens drill tasks, which are left out of the KPIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import aiomqtt
import orjson
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gridhub.protocol import BrokerAddress, DeviceKind, device_topic
from gridhub.settings import Settings
from gridhub.simulators.behaviour import steady_metrics
from gridhub.simulators.devices import DevicePool, camera_scene, encode_jpeg
from gridhub.simulators.fleet import DeviceAccounts, DeviceSpec, Fleet
from gridhub.simulators.link import mqtt_client

log = logging.getLogger("gridhub.simulators.scenario")

SCENARIO_DIR = Path(__file__).parent / "scenarios"


class ScenarioError(ValueError):
    """A scenario file that cannot be read or cast; the message names the file, the step and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Role(_Strict):
    """Who plays a part: a building, or devices picked by kind, building, ids, or everyone."""

    building_with: dict[DeviceKind, int] | None = None
    kind: DeviceKind | None = None
    kinds: list[DeviceKind] | None = None
    in_: str | None = Field(default=None, alias="in")
    ids: list[str] | None = None
    all: bool = False
    retired: bool = False
    count: int | None = Field(default=None, gt=0)
    skip: int = Field(default=0, ge=0)
    pick: Literal["first", "random"] = "first"
    optional: bool = False  # when no device fits, the role's steps are left out


class Raw(_Strict):
    """A message as bytes: for the garbage scenario."""

    topic: str | None = None  # `{prefix}` and `{id}` are filled in
    channel: str | None = None  # telemetry | event | status | frame of the step's device
    text: str | None = None
    json_: Any = Field(default=None, alias="json")  # "$ts" and "$seq" are filled in
    hex: str | None = None
    size: int | None = Field(default=None, gt=0)  # a reading padded to this many bytes
    qos: int = 1


class Frames(_Strict):
    """A camera filming its corridor; an e-bike is left in it from `obstacle_at` for `obstacle_s` seconds."""

    obstacle_at: float | None = None
    obstacle_s: float = 150.0


class Step(_Strict):
    at: float = Field(default=0.0, ge=0)
    who: str | None = None
    as_: Literal["device", "hub"] = Field(default="device", alias="as")
    every_s: float | None = Field(default=None, gt=0)
    until: float | None = None
    stagger_s: float = 0.0
    note: str | None = None
    expect: str | None = None  # the quarantine reason or alert this step is meant to cause
    # what happens (exactly one)
    report: bool = False
    readings: dict[str, Any] | None = None
    noise: float = 0.0
    event: str | None = None
    detail: dict[str, Any] = {}
    vanish: bool = False
    connect: bool = False
    buffered_every_s: float | None = Field(default=None, gt=0)
    frames: Frames | None = None
    raw: Raw | None = None
    ts_offset_s: float = 0.0

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        chosen = [n for n, on in (("report", self.report), ("readings", self.readings is not None),
                                  ("event", self.event is not None), ("vanish", self.vanish),
                                  ("connect", self.connect), ("frames", self.frames is not None),
                                  ("raw", self.raw is not None)) if on]
        if len(chosen) != 1:
            raise ValueError("a step does exactly one of report, readings, event, vanish, connect, frames, raw "
                             f"(this one: {', '.join(chosen) or 'none'})")
        if self.as_ == "hub" and self.raw is None:
            raise ValueError("only `raw` steps can be sent `as: hub`")
        if self.who is None and not (self.raw and self.raw.topic):
            raise ValueError("the step needs `who` (a role of the cast)")
        return self


class Include(_Strict):
    scenario: str
    at: float = Field(default=0.0, ge=0)


class Scenario(_Strict):
    name: str
    summary: str
    duration_s: float = Field(gt=0)
    speed: float = Field(default=1.0, gt=0)
    expect: dict[str, list[str]] = {}
    cast: dict[str, Role] = {}
    steps: list[Step] = []
    include: list[Include] = []
    drill: bool = False  # a drill (演练): its events (and its includes') carry detail.drill
    source: str = ""


# ------------------------------------------------------------------ loading


def list_scenarios() -> list[Scenario]:
    return [load_scenario(p.stem) for p in sorted(SCENARIO_DIR.glob("*.yaml"))]


def load_scenario(name_or_path: str) -> Scenario:
    """A scenario by name (simulators/scenarios/NAME.yaml) or by file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SCENARIO_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(p.stem for p in sorted(SCENARIO_DIR.glob("*.yaml")))
        raise ScenarioError(f"no scenario {name_or_path!r}: the known ones are {known}, or give a YAML file path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        sc = Scenario.model_validate({**data, "source": str(path)})
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path} is not YAML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ScenarioError(f"{path}: {problems}") from exc
    for i, step in enumerate(sc.steps):
        if step.who is not None and step.who not in sc.cast:
            raise ScenarioError(f"{path}: steps[{i}] plays role {step.who!r}, which the cast does not name "
                                f"(roles: {', '.join(sc.cast)})")
    return sc


# ------------------------------------------------------------------ casting


@dataclass
class Cast:
    """Roles resolved to building ids (for `building_with`) or device specs."""

    buildings: dict[str, list[str]] = field(default_factory=dict)
    devices: dict[str, list[DeviceSpec]] = field(default_factory=dict)

    def describe(self) -> dict[str, list[str]]:
        return {**self.buildings, **{k: [d.id for d in v] for k, v in self.devices.items()}}


def cast_roles(sc: Scenario, fleet: Fleet, rng: random.Random, overrides: dict[str, list[str]]) -> Cast:
    cast = Cast()
    for name, role in sc.cast.items():
        if role.building_with is not None:
            if name in overrides:
                cast.buildings[name] = overrides[name]
                continue
            fits = [b for b in fleet.buildings()
                    if all(len(fleet.in_building(b, k)) >= n for k, n in role.building_with.items())]
            if not fits:
                need = ", ".join(f"{n} {k.value}" for k, n in role.building_with.items())
                raise ScenarioError(f"scenario {sc.name}: no building has {need} (role {name}); use a registry "
                                    "with one, or --cast")
            cast.buildings[name] = [rng.choice(fits) if role.pick == "random" else fits[0]]
            continue
        if name in overrides:
            cast.devices[name] = [fleet.get(i) for i in overrides[name]]
            continue
        if role.ids:
            pool = [fleet.get(i) for i in role.ids]
        elif role.retired:
            pool = [d for d in fleet.devices if d.retired]
        else:
            pool = list(fleet.active)
            if role.in_:
                if role.in_ not in cast.buildings:
                    raise ScenarioError(f"scenario {sc.name}: role {name} is `in: {role.in_}`, which must be a "
                                        "`building_with` role named before it")
                pool = [d for b in cast.buildings[role.in_] for d in fleet.in_building(b)]
        if role.kind is not None:
            pool = [d for d in pool if d.kind == role.kind]
        if role.kinds:
            pool = [d for d in pool if d.kind in role.kinds]
        if role.pick == "random":
            rng.shuffle(pool)
        pool = pool[role.skip:]
        if role.count is not None:
            pool = pool[: role.count]
        if not pool and role.optional:
            log.info("scenario %s: no device fits the optional role %s; its steps are left out", sc.name, name)
        elif not pool:
            raise ScenarioError(f"scenario {sc.name}: no device fits role {name} in this registry; use one that "
                                f"has it, or --cast {name}=DEVICE_ID")
        cast.devices[name] = pool
    return cast


# ------------------------------------------------------------------ the timeline


@dataclass
class Action:
    s: float  # scenario second
    device: DeviceSpec | None  # None: a hub-account message with its own topic
    op: str  # report | reading | event | vanish | connect | frame | raw
    step: Step
    frac: float = 0.0  # how far through its step (ramps)
    since: float | None = None  # connect: when the device vanished (buffered readings)
    scene_key: str = ""
    scene_t: float = 0.0
    via_hub: bool = False
    scenario: str = ""
    drill: bool = False


def _times(step: Step, offset: float) -> list[float]:
    start = step.at + offset
    if step.every_s is None:
        return [start]
    end = (step.until if step.until is not None else step.at) + offset
    n = int((end - start) // step.every_s + 1e-9) + 1
    return [start + i * step.every_s for i in range(max(1, n))]


def expand(sc: Scenario, cast: Cast, at: float = 0.0, drill: bool = False) -> list[Action]:
    """The scenario's actions in time order, members of a role staggered by `stagger_s`."""
    actions: list[Action] = []
    vanished_at: dict[str, float] = {}
    for i, step in enumerate(sc.steps):
        if step.who in cast.devices and not cast.devices[step.who]:
            continue  # an optional role nobody plays
        members: list[DeviceSpec | None] = list(cast.devices.get(step.who or "", [])) or [None]
        op = next(n for n, on in (("report", step.report), ("reading", step.readings is not None),
                                  ("event", step.event is not None), ("vanish", step.vanish),
                                  ("connect", step.connect), ("frame", step.frames is not None),
                                  ("raw", step.raw is not None)) if on)
        for k, dev in enumerate(members):
            times = _times(step, at + k * step.stagger_s)
            span = max(times[-1] - times[0], 1e-9)
            for t in times:
                act = Action(t, dev, op, step, frac=(t - times[0]) / span if len(times) > 1 else 0.0,
                             via_hub=step.as_ == "hub", scenario=sc.name, drill=drill or sc.drill)
                if op == "frame" and dev is not None:
                    act.scene_key = f"{sc.name}/{i}/{dev.id}"
                    act.scene_t = t - times[0]
                actions.append(act)
    actions.sort(key=lambda a: a.s)
    for a in actions:  # connect after vanish: the readings buffered in between
        if a.device is None:
            continue
        if a.op == "vanish":
            vanished_at[a.device.id] = a.s
        elif a.op == "connect":
            a.since = vanished_at.pop(a.device.id, None)
    return actions


def compose(scenarios: list[tuple[Scenario, float]], fleet: Fleet, rng: random.Random,
            overrides: dict[str, list[str]], drill: bool = False) -> tuple[list[Action], float, dict[str, Any]]:
    """Scenarios (with their start offsets, and their includes) as one timeline: actions, duration, cast. The
    actions of a drill scenario, and of everything it includes, are marked drill."""
    actions: list[Action] = []
    duration = 0.0
    casts: dict[str, Any] = {}
    for sc, at in scenarios:
        nested = [(load_scenario(inc.scenario), at + inc.at) for inc in sc.include]
        if nested:
            sub_actions, sub_duration, sub_casts = compose(nested, fleet, rng, overrides, drill or sc.drill)
            actions += sub_actions
            duration = max(duration, sub_duration)
            casts.update(sub_casts)
        cast = cast_roles(sc, fleet, rng, overrides)
        casts[sc.name] = cast.describe()
        actions += expand(sc, cast, at, drill)
        duration = max(duration, at + sc.duration_s)
    actions.sort(key=lambda a: a.s)
    if actions and actions[-1].s > duration:
        duration = actions[-1].s
    return actions, duration, casts


# ------------------------------------------------------------------ playing


def _resolve(value: Any, base: Any, frac: float, noise: float, rng: random.Random) -> Any:
    def one(v: Any) -> Any:
        return base if v == "base" else v

    if isinstance(value, list) and len(value) == 2:
        a, b = one(value[0]), one(value[1])
        if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
            out: Any = a
        else:
            out = a + (b - a) * frac
    else:
        out = one(value)
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        if noise:
            out = max(0.0, out + rng.gauss(0, noise))
        out = round(float(out), 4)
    return out


def _fill(template: Any, ts: int, seq: int) -> Any:
    if isinstance(template, dict):
        return {k: _fill(v, ts, seq) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, ts, seq) for v in template]
    if template == "$ts":
        return ts
    if template == "$seq":
        return seq
    return template


class _HubAccount:
    """The broker URL's own account, for messages no device may send (bad topics, unregistered ids)."""

    def __init__(self, target: BrokerAddress, v5: bool):
        if not target.username:
            raise ScenarioError("this scenario sends messages as the hub: give the broker URL with the hub's "
                                "user and password (--broker or GRIDHUB_MQTT_URL)")
        self._client = mqtt_client(target, f"sim-hub-{os.getpid()}-{random.randrange(1 << 30):x}", v5=v5)
        self._open = False

    async def publish(self, topic: str, payload: bytes, qos: int, properties: Properties | None = None) -> None:
        if not self._open:
            await self._client.__aenter__()
            self._open = True
        await self._client.publish(topic, payload, qos=qos, properties=properties)

    async def close(self) -> None:
        if self._open:
            with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
                await self._client.__aexit__(None, None, None)


@dataclass
class Playback:
    pool: DevicePool
    hub_target: BrokerAddress
    t0_ms: int
    tz: ZoneInfo
    rng: random.Random
    counts: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None
    scenes: dict[str, Any] = field(default_factory=dict)
    hub: _HubAccount | None = None
    sent: list[dict[str, Any]] = field(default_factory=list)

    def ts(self, s: float, offset_s: float = 0.0) -> int:
        return self.t0_ms + round((s + offset_s) * 1000)

    async def perform(self, a: Action) -> None:
        try:
            await self._perform(a)
            self.counts[a.op] += 1
        except (TimeoutError, aiomqtt.MqttError, OSError, RuntimeError) as exc:
            self.counts["errors"] += 1
            who = a.device.id if a.device else "hub"
            if self.first_error is None:
                self.first_error = f"{a.scenario} at {a.s:.0f} s, {who} {a.op}: {exc}"
            log.warning("%s at %.0f s: %s %s failed: %s", a.scenario, a.s, who, a.op, exc)

    def _record(self, a: Action, ts: int, what: str) -> None:
        self.sent.append({"s": round(a.s, 3), "ts": ts, "device": a.device.id if a.device else None, "op": a.op,
                          "what": what, "expect": a.step.expect})

    async def _perform(self, a: Action) -> None:
        step, dev = a.step, a.device
        ts = self.ts(a.s, step.ts_offset_s)
        if a.op == "raw":
            await self._raw(a, ts)
            return
        assert dev is not None
        if a.op == "vanish":
            await self.pool.existing(dev.id).vanish()
            self._record(a, ts, "vanish")
            return
        link = await self.pool.link(dev.id)
        if a.op == "connect":
            self._record(a, ts, "online")
            if a.since is not None and dev.kind != DeviceKind.CAMERA:
                every = step.buffered_every_s or dev.interval_s
                t = a.since + every
                while t < a.s:
                    bts = self.ts(t)
                    await link.reading(bts, steady_metrics(dev, bts, self.rng, self.tz))
                    self._record(a, bts, "buffered")
                    self.counts["buffered"] += 1
                    t += every
            return
        if a.op == "report":
            if dev.kind == DeviceKind.CAMERA:
                await link.event(ts, "heartbeat")
            else:
                await link.reading(ts, steady_metrics(dev, ts, self.rng, self.tz))
            self._record(a, ts, "report")
        elif a.op == "reading":
            assert step.readings is not None
            base = steady_metrics(dev, ts, self.rng, self.tz)
            metrics = dict(base)
            for name, value in step.readings.items():
                metrics[name] = _resolve(value, base.get(name), a.frac, step.noise, self.rng)
            await link.reading(ts, metrics)
            self._record(a, ts, "reading")
        elif a.op == "event":
            assert step.event is not None
            await link.event(ts, step.event, {**step.detail, "drill": True} if a.drill else step.detail)
            self._record(a, ts, f"{step.event} (drill)" if a.drill else step.event)
        elif a.op == "frame":
            assert step.frames is not None
            scene = self.scenes.get(a.scene_key)
            if scene is None:
                scene = await asyncio.to_thread(_scene_with_obstacle, dev, step)
                if scene is None:
                    raise RuntimeError("no camera scene generator (simulators/scenes.py): frames skipped")
                self.scenes[a.scene_key] = scene
            jpeg = await asyncio.to_thread(encode_jpeg, scene, a.scene_t)
            await link.frame(ts, jpeg, qos=1)
            self._record(a, ts, "frame")

    async def _raw(self, a: Action, ts: int) -> None:
        raw = a.step.raw
        assert raw is not None
        dev_id = a.device.id if a.device else "-"
        prefix = self.pool.prefix
        props: Properties | None = None
        if raw.topic:
            topic = raw.topic.replace("{prefix}", prefix).replace("{id}", dev_id)
        else:
            channel = raw.channel or "telemetry"
            topic = device_topic(prefix, dev_id, channel)
            if channel == "frame":
                if self.pool.v5:
                    props = Properties(PacketTypes.PUBLISH)
                    props.UserProperty = [("ts", str(ts))]
                else:
                    topic = f"{topic}/{ts}"
        seq = 0
        if a.device is not None and not a.via_hub:
            seq = self.pool.existing(a.device.id).next_seq()
        if raw.hex is not None:
            payload = bytes.fromhex(raw.hex)
        elif raw.text is not None:
            payload = raw.text.encode()
        elif raw.json_ is not None:
            payload = orjson.dumps(_fill(raw.json_, ts, seq))
        else:
            payload = b""
        if raw.size:
            pad = raw.size - len(orjson.dumps({"ts": ts, "seq": seq, "metrics": {"firmware_log": ""}}))
            payload = orjson.dumps({"ts": ts, "seq": seq, "metrics": {"firmware_log": "x" * max(0, pad)}})
        if a.via_hub or a.device is None:
            if self.hub is None:
                self.hub = _HubAccount(self.hub_target, self.pool.v5)
            await self.hub.publish(topic, payload, raw.qos, props)
        else:
            link = await self.pool.link(a.device.id)
            await link.raw(topic, payload, qos=raw.qos, properties=props)
        self._record(a, ts, f"raw {topic}")


def _scene_with_obstacle(device: DeviceSpec, step: Step) -> Any:
    frames = step.frames
    assert frames is not None
    length = max(60.0, (step.until or step.at) - step.at + 10)
    if frames.obstacle_at is None:
        return camera_scene(device, length)
    scene = camera_scene(device, length, obstacles=1)
    if scene is None:
        return None
    if scene.obstacles:
        o = scene.obstacles[0]
        # an e-bike across the middle of the escape route, a few metres ahead
        scene.obstacles = [dataclasses.replace(o, kind="ebike", size=1.6, height=1.0, depth_m=3.8, x_m=0.1,
                                               start_s=frames.obstacle_at,
                                               end_s=frames.obstacle_at + frames.obstacle_s)]
    return scene


@dataclass
class PlayReport:
    scenarios: list[str]
    speed: float
    duration_s: float
    start_ts: int
    end_ts: int
    cast: dict[str, Any]
    counts: dict[str, int]
    first_error: str | None
    sent: list[dict[str, Any]]

    elapsed_s: float = 0.0

    def summary(self, longest_list: int = 50) -> dict[str, Any]:
        """The report without the messages; a role of more than `longest_list` devices shown by its first ones."""
        out = dataclasses.asdict(self)
        del out["sent"]
        for roles in out["cast"].values():
            for role, ids in roles.items():
                if len(ids) > longest_list:
                    roles[role] = ids[:longest_list] + [f"... {len(ids)} in all"]
        return out


async def play(scenarios: list[Scenario], fleet: Fleet, pool: DevicePool, hub_target: BrokerAddress, *,
               speed: float | None = None, seed: int = 0, cast_overrides: dict[str, list[str]] | None = None,
               stop: asyncio.Event | None = None, timezone: str | None = None, release: bool = True) -> PlayReport:
    """Play the scenarios together on the pool's devices (held from normal life meanwhile)."""
    rng = random.Random(seed)
    actions, duration, casts = compose([(sc, 0.0) for sc in scenarios], fleet, rng, cast_overrides or {})
    speed = speed or min(sc.speed for sc in scenarios)
    ids = {a.device.id for a in actions if a.device is not None}
    pool.hold(ids)
    start_ms = int(time.time() * 1000)
    t0_ms = start_ms - round(duration * 1000 * (1 - 1 / speed))
    pb = Playback(pool, hub_target, t0_ms, ZoneInfo(timezone or Settings().timezone),
                  rng)
    r0 = time.monotonic()
    try:
        i = 0
        while i < len(actions):
            s = actions[i].s
            group = []
            while i < len(actions) and actions[i].s == s:
                group.append(actions[i])
                i += 1
            delay = r0 + s / speed - time.monotonic()
            if delay > 0:
                if stop is not None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                else:
                    await asyncio.sleep(delay)
            if stop is not None and stop.is_set():
                break
            by_device: dict[str, list[Action]] = {}
            for a in group:
                by_device.setdefault(a.device.id if a.device and not a.via_hub else "", []).append(a)

            async def in_order(acts: list[Action]) -> None:
                for act in acts:
                    await pb.perform(act)

            await asyncio.gather(*(in_order(v) for v in by_device.values()))
    finally:
        if pb.hub is not None:
            await pb.hub.close()
        if release:
            pool.release(ids)
    return PlayReport([sc.name for sc in scenarios], speed, duration, t0_ms, pb.ts(duration), casts,
                      dict(pb.counts), pb.first_error, pb.sent, round(time.monotonic() - r0, 2))


def parse_overrides(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        role, sep, ids = item.partition("=")
        if not sep or not ids:
            raise ScenarioError(f"--cast {item!r} must look like ROLE=ID[,ID...]")
        out[role.strip()] = [i.strip() for i in ids.split(",") if i.strip()]
    return out


def play_cli(scenarios: list[Scenario], fleet: Fleet, target: BrokerAddress, accounts: DeviceAccounts, *,
             prefix: str, v5: bool, speed: float | None, seed: int, cast_overrides: list[str]) -> int:
    """`gridhub simulate scenario ...`: play, then print a JSON summary; exit 1 if any message failed."""

    async def main() -> PlayReport:
        pool = DevicePool(target, accounts, prefix=prefix, v5=v5)
        try:
            return await play(scenarios, fleet, pool, target, speed=speed, seed=seed,
                              cast_overrides=parse_overrides(cast_overrides))
        finally:
            await pool.close_all(say_offline=False)

    try:
        report = asyncio.run(main())
    except ScenarioError as exc:
        print(f"gridhub simulate scenario: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.summary(), ensure_ascii=False))
    return 1 if report.counts.get("errors") else 0


