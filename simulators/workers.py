"""Simulated grid workers (网格员) on the public REST API: they do their patrols, find hazards, fix them, re-check
them, and now and then file a resident's report (CONTRACT §4.1, §7).

Like the virtual devices speak only MQTT, these speak only the documented REST API (httpx): log in as a worker,
`GET /api/v1/tasks?type=patrol&assignee=me&state=open,accepted,on_site`, `accept`, a photo
(`POST /tasks/{id}/photos`), `resolve` with the checklist; `hazard` and `recheck` tasks are accepted and resolved
`fixed`; grid heads confirm (立案) the reports in their grids. What each does is drawn from a seed and the task
(for a patrol: its unit and period, so that the same demo makes the same choices every time):

- about `done_share` of the patrols are done, the rest are left to go overdue;
- about `hazard_share` of the patrols done find a hazard (one checklist item, sometimes two, with a note and, when
  a photo was taken, that photo);
- about `fix_share` of the hazards are rectified (`fixed`), which opens a re-check, which is done;
- every `report_every` actions one worker files a resident-style report (社区提报) with a photo, and when nobody has
  anything to do, one every time `report_every` actions would take at the pace, so that a long demo stays alive.

Actions are paced (`per_minute`, all workers together); a 4xx is logged with its detail and the task set aside;
while the API is down (connection refused, 5xx) the simulator waits and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import yaml

log = logging.getLogger("gridhub.simulators.workers")

DEMO_PASSWORD = "demo-{id}"  # the demo's log-ins (gridhub/demo_run.py demo_password)
OPEN = "open,accepted,on_site"

# what a worker writes when an item is a hazard (the rules file's default checklist items)
HAZARD_NOTES: dict[str, tuple[str, ...]] = {
    "escape_route": ("安全出口堆放杂物", "疏散通道被货物占用", "安全出口上锁"),
    "extinguisher": ("灭火器压力不足", "灭火器过期未更换", "灭火器缺失"),
    "hydrant": ("消火栓被车辆遮挡", "消火栓箱内水带缺失"),
    "emergency_light": ("应急照明灯不亮", "疏散指示标志损坏"),
    "ebike": ("楼道内电动自行车充电", "门厅停放电动自行车"),
    "wiring": ("私拉乱接电线", "插座超负荷使用"),
    "gas": ("燃气软管老化", "燃气阀门有异味"),
    "fire_lane": ("消防车通道被占用", "消防车通道设置障碍物"),
    "key_post": ("值班室无人值守", "值班记录缺失"),
}
OTHER_HAZARD = ("发现隐患，需整改",)
# resident-style reports (社区提报): category, description
REPORTS: tuple[tuple[str, str], ...] = (
    ("ebike", "居民反映：楼道里有电动自行车整夜充电"),
    ("escape_route", "居民反映：楼梯间堆满纸箱，安全出口过不去"),
    ("fire_equipment", "居民反映：楼下消火栓箱门坏了，里面是空的"),
    ("electrical", "居民反映：楼道电表箱电线乱拉，晚上有火花"),
    ("gas", "居民反映：一楼餐馆后门有燃气味"),
    ("other", "居民反映：天台堆放易燃杂物"),
)


class ApiDown(Exception):
    """The API did not answer (connection refused, timeout) or answered 5xx: wait and try again."""


class Refused(Exception):
    """A 4xx: `detail` says why; the task is set aside."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class WorkerOptions:
    api: str                                 # the hub's base URL, e.g. http://127.0.0.1:8000
    workers: tuple[str, ...]                 # grid workers who patrol
    heads: tuple[str, ...] = ()              # grid heads who confirm reports (立案)
    password: str = DEMO_PASSWORD            # each log-in's password; `{id}` is the worker id
    seed: int = 0
    per_minute: float = 4.0                  # actions a minute, all workers together (0: no pause)
    done_share: float = 0.75
    hazard_share: float = 0.2
    photo_share: float = 0.4
    fix_share: float = 0.7
    report_every: int = 20                   # actions between resident-style reports (0: none)
    idle_s: float = 30.0                     # pause when nobody has anything to do
    retry_s: float = 5.0                     # first wait while the API is down (doubles up to a minute)
    timeout_s: float = 20.0


@dataclass
class _Chore:
    worker: str
    task: dict[str, Any]
    kind: str                                # patrol | hazard | recheck | confirm


@dataclass
class WorkerSim:
    """The simulated workers; `await run(stop)` until `stop` is set (or `max_actions` actions, or idle)."""

    options: WorkerOptions
    transport: httpx.AsyncBaseTransport | None = None
    stats: Counter[str] = field(default_factory=Counter)
    _tokens: dict[str, str] = field(default_factory=dict)
    _set_aside: set[str] = field(default_factory=set)   # tasks left (overdue on purpose) or refused
    _actions: int = 0
    _reports: int = 0
    _last_report: float = field(default_factory=time.monotonic)

    # ---------------------------------------------------------------- the loop

    async def run(self, stop: asyncio.Event | None = None, *, max_actions: int | None = None,
                  until_idle: bool = False) -> dict[str, int]:
        """Act until `stop` is set, `max_actions` actions were taken, or (`until_idle`) a sweep finds nothing to
        do. Returns the counts (`stats`)."""
        stop = stop or asyncio.Event()
        wait = self.options.retry_s
        async with httpx.AsyncClient(base_url=self.options.api.rstrip("/"), timeout=self.options.timeout_s,
                                     transport=self.transport) as http:
            self._http = http
            while not stop.is_set() and (max_actions is None or self._actions < max_actions):
                try:
                    did = await self._sweep(stop, max_actions)
                    wait = self.options.retry_s
                except ApiDown as exc:
                    self.stats["api_down"] += 1
                    log.warning("the API at %s is not answering (%s): trying again in %.0f s", self.options.api,
                                exc, wait)
                    await _sleep(stop, wait)
                    wait = min(wait * 2, 60.0)
                    continue
                except Refused as exc:  # a list or a log-in refused (a wrong password, a hub without patrols)
                    self.stats["refused"] += 1
                    log.warning("the API at %s refused a request (%s): trying again in %.0f s", self.options.api,
                                exc, self.options.idle_s)
                    if until_idle:
                        break
                    await _sleep(stop, self.options.idle_s)
                    continue
                if not did:
                    if until_idle:
                        break
                    if self._quiet_for_a_report():  # nothing else to do: the district stays alive with reports
                        with contextlib.suppress(ApiDown):  # the next sweep finds it down and waits
                            await self._report(stop)
                        continue
                    await _sleep(stop, self.options.idle_s)
        return dict(self.stats)

    def _quiet_for_a_report(self) -> bool:
        """As long as `report_every` actions would take at the pace since the last report (paced runs only)."""
        o = self.options
        return bool(o.report_every and o.per_minute > 0
                    and time.monotonic() - self._last_report >= o.report_every * 60.0 / o.per_minute)

    async def _sweep(self, stop: asyncio.Event, max_actions: int | None) -> bool:
        """One pass over every worker's open tasks; True if anything was done."""
        did = False
        for chore in await self._chores():
            if stop.is_set() or (max_actions is not None and self._actions >= max_actions):
                return True
            try:
                await self._do(chore, stop)
                did = True
            except Refused as exc:
                self.stats["refused"] += 1
                self._set_aside.add(chore.task["id"])
                log.warning("%s: %s on task %s refused (%s), moving on", chore.worker, chore.kind,
                            chore.task["id"], exc)
                did = True
            if self.options.report_every and self._actions >= (self._reports + 1) * self.options.report_every:
                await self._report(stop)
        return did

    async def _chores(self) -> list[_Chore]:
        """What everyone would do next: the heads' confirmations first, then the workers' tasks taken in turns
        (one of each worker's, oldest first, then the next), so that the whole district is seen at work."""
        out: list[_Chore] = []
        for head in self.options.heads:
            for report in await self._pages(head, "/api/v1/reports", {}):
                if report.get("state") == "open" and not (report.get("report") or {}).get("confirmed") \
                        and report["id"] not in self._set_aside:
                    out.append(_Chore(head, report, "confirm"))
        queues: list[list[_Chore]] = []
        for worker in self.options.workers:
            mine: list[_Chore] = []
            queues.append(mine)
            tasks = await self._pages(worker, "/api/v1/tasks",
                                      {"type": "patrol,hazard,recheck", "assignee": "me", "state": OPEN})
            waiting: set[str] = set()  # reports not yet confirmed (立案): the grid head's first
            if any(t["type"] == "hazard" and not t.get("source_task_id") for t in tasks):
                waiting = {r["id"] for r in await self._pages(worker, "/api/v1/reports", {})
                           if not (r.get("report") or {}).get("confirmed")}
            for task in sorted(tasks, key=lambda t: (t.get("opened_at") or "", t["id"])):
                if task["id"] in self._set_aside or task["id"] in waiting:
                    continue
                kind = task["type"]
                if kind == "patrol" and not self._chance(task, "done", self.options.done_share):
                    self._leave(task, "patrols_left")
                    continue
                if kind == "hazard" and not self._chance(task, "fix", self.options.fix_share):
                    self._leave(task, "hazards_left")
                    continue
                mine.append(_Chore(worker, task, kind))
        for turn in range(max((len(q) for q in queues), default=0)):
            out += [q[turn] for q in queues if turn < len(q)]
        return out

    def _leave(self, task: dict[str, Any], counter: str) -> None:
        self._set_aside.add(task["id"])
        self.stats[counter] += 1
        log.debug("leaving %s %s undone", task["type"], task["id"])

    # ---------------------------------------------------------------- chores

    async def _do(self, chore: _Chore, stop: asyncio.Event) -> None:
        task, who = chore.task, chore.worker
        tid = task["id"]
        if chore.kind == "confirm":
            if self._chance(task, "dismiss", 0.15):
                await self._act(who, tid, "dismiss", {"note": "经核实，不属于事故隐患（不予立案）"}, stop)
                self.stats["reports_dismissed"] += 1
            else:
                await self._act(who, tid, "confirm", {"note": "已核实，立案"}, stop)
                self.stats["reports_confirmed"] += 1
            return
        if task.get("state") == "open":
            await self._act(who, tid, "accept", {}, stop)
        if chore.kind == "patrol":
            await self._patrol(who, task, stop)
        elif chore.kind == "hazard":
            await self._act(who, tid, "resolve", {"resolution": "fixed", "note": "已督促整改到位"}, stop)
            self.stats["hazards_fixed"] += 1
        else:  # recheck
            await self._act(who, tid, "resolve", {"resolution": "fixed", "note": "复查合格"}, stop)
            self.stats["rechecks_done"] += 1

    async def _patrol(self, who: str, task: dict[str, Any], stop: asyncio.Event) -> None:
        patrol = task.get("patrol") or {}
        checklist = [i["id"] for i in patrol.get("checklist") or []]
        if not checklist:
            raise Refused(0, "the patrol task has no checklist")
        rng = self._rng(task, "checklist")
        hazards: list[str] = []
        if rng.random() < self.options.hazard_share:
            hazards = rng.sample(checklist, 2 if len(checklist) > 3 and rng.random() < 0.25 else 1)
        photo: str | None = None
        if hazards or rng.random() < self.options.photo_share:
            photo = await self._photo(who, task, rng, stop)
        answers = []
        for item in checklist:
            if item in hazards:
                answer: dict[str, Any] = {"id": item, "result": "hazard",
                                          "note": rng.choice(HAZARD_NOTES.get(item, OTHER_HAZARD))}
                if photo is not None and item == hazards[0]:
                    answer["photos"] = [photo]
            elif item == "gas" and rng.random() < 0.2:
                answer = {"id": item, "result": "n/a", "note": "未通燃气"}
            else:
                answer = {"id": item, "result": "ok"}
            answers.append(answer)
        note = "巡查发现隐患，已告知负责人" if hazards else "巡查未发现隐患"
        await self._act(who, task["id"], "resolve", {"checklist": answers, "note": note}, stop)
        self.stats["patrols_done"] += 1
        self.stats["hazards_found"] += len(hazards)

    async def _photo(self, who: str, task: dict[str, Any], rng: random.Random, stop: asyncio.Event) -> str:
        data = photo_jpeg(rng.randrange(1 << 30))
        body = await self._call(who, "POST", f"/api/v1/tasks/{task['id']}/photos",
                                files={"photo": ("patrol.jpg", data, "image/jpeg")}, data={"note": "巡查照片"},
                                key=True)
        self.stats["photos"] += 1
        await self._pace(stop)
        return str(body["id"])

    async def _report(self, stop: asyncio.Event) -> None:
        """A resident's report, relayed by a worker (社区提报): a unit of the worker's grid, a photo."""
        self._reports += 1
        self._last_report = time.monotonic()
        if not self.options.workers:
            return
        rng = random.Random(f"{self.options.seed}:report:{self._reports}")
        who = self.options.workers[rng.randrange(len(self.options.workers))]
        try:
            units = [u for u in await self._pages(who, "/api/v1/units", {}) if u.get("building_id")]
            if not units:
                return
            unit = units[rng.randrange(len(units))]
            category, text = REPORTS[rng.randrange(len(REPORTS))]
            body = await self._call(
                who, "POST", "/api/v1/reports", key=True,
                data={"category": category, "unit": unit["id"], "description": f"{unit['name']}：{text}"},
                files=[("photos", ("report.jpg", photo_jpeg(rng.randrange(1 << 30)), "image/jpeg"))])
            self.stats["reports_filed"] += 1
            log.info("%s reported a hazard at %s: task %s", who, unit["id"], body.get("id"))
        except Refused as exc:
            self.stats["refused"] += 1
            log.warning("%s: the report was refused (%s), moving on", who, exc)
        await self._pace(stop)

    # ---------------------------------------------------------------- the API

    async def _act(self, who: str, task_id: str, action: str, body: dict[str, Any], stop: asyncio.Event) -> None:
        try:
            await self._call(who, "POST", f"/api/v1/tasks/{task_id}/{action}", json=body, key=True)
        except Refused:
            await self._pace(stop)  # a refusal is an action too: no loop faster than the pace
            raise
        self.stats[f"action_{action}"] += 1
        await self._pace(stop)

    async def _pace(self, stop: asyncio.Event) -> None:
        self._actions += 1
        if self.options.per_minute > 0:
            await _sleep(stop, 60.0 / self.options.per_minute)

    async def _pages(self, who: str, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(100):
            body = await self._call(who, "GET", path, params={**params, "limit": 200,
                                                              **({"cursor": cursor} if cursor else {})})
            items += body.get("items", [])
            cursor = body.get("next")
            if not cursor:
                break
        return items

    async def _call(self, who: str, method: str, path: str, *, key: bool = False, **kw: Any) -> dict[str, Any]:
        """One request as `who` (logging in first, and again once on a 401). A write carries an Idempotency-Key,
        the same on a retry after the connection failed, so that it acts once."""
        headers = {"Idempotency-Key": f"sim-{uuid.uuid4().hex}"} if key else {}
        for attempt in (1, 2):
            token = self._tokens.get(who) or await self._log_in(who)
            try:
                r = await self._http.request(method, path, headers={**headers, "Authorization": f"Bearer {token}"},
                                             **kw)
            except httpx.TransportError as exc:
                raise ApiDown(f"{type(exc).__name__}: {exc}") from exc
            if r.status_code == 401 and attempt == 1:
                self._tokens.pop(who, None)
                continue
            return _answer(r)
        raise AssertionError("unreachable")

    async def _log_in(self, who: str) -> str:
        try:
            r = await self._http.post("/api/v1/auth/token",
                                      data={"username": who, "password": self.options.password.format(id=who)})
        except httpx.TransportError as exc:
            raise ApiDown(f"{type(exc).__name__}: {exc}") from exc
        if r.status_code == 429:
            raise ApiDown(f"log-in throttled: {_detail(r)}")
        token = str(_answer(r)["access_token"])
        self._tokens[who] = token
        return token

    # ---------------------------------------------------------------- seeded choices

    def _rng(self, task: dict[str, Any], what: str) -> random.Random:
        """A generator for one choice about one task: a patrol by its unit and period (the same choice whenever the
        demo runs), anything else by its id."""
        patrol = task.get("patrol") or {}
        ident = f"{patrol.get('unit_id')}:{patrol.get('period_start')}:{patrol.get('kind')}" if patrol else task["id"]
        return random.Random(f"{self.options.seed}:{ident}:{what}")

    def _chance(self, task: dict[str, Any], what: str, share: float) -> bool:
        return self._rng(task, what).random() < share


def _answer(r: httpx.Response) -> dict[str, Any]:
    if r.status_code >= 500:
        raise ApiDown(f"{r.status_code} {_detail(r)}")
    if r.status_code >= 400:
        raise Refused(r.status_code, _detail(r))
    body = r.json()
    return body if isinstance(body, dict) else {"items": body}


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail"))
    except (ValueError, AttributeError):
        return r.text[:200]


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def photo_jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A small JPEG (a wall, a floor and a few boxes in seeded colours): what a phone would send, a few KiB."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    img[: h * 2 // 3] = rng.integers(150, 230, 3)
    img[h * 2 // 3:] = rng.integers(60, 140, 3)
    for _ in range(int(rng.integers(1, 5))):
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(h // 3, h - 40))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(20, 60)), y + int(rng.integers(20, 40))),
                      tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    noise = rng.integers(0, 12, img.shape, dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.add(img, noise), [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return bytes(buf.tobytes())


def roster(registry: Path | dict[str, Any], *, grids: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """The active grid workers and grid heads a registry file lists (optionally only those of `grids`)."""
    data = yaml.safe_load(registry.read_text(encoding="utf-8")) if isinstance(registry, Path) else registry
    wanted = set(grids) if grids is not None else None
    workers: list[str] = []
    heads: list[str] = []
    for w in (data or {}).get("workers") or []:
        if not w.get("active", True) or (wanted is not None and not wanted.intersection(w.get("grids") or [])):
            continue
        if w.get("role") == "grid_worker":
            workers.append(str(w["id"]))
        elif w.get("role") == "grid_head":
            heads.append(str(w["id"]))
    return workers, heads
