"""The demo district's life: its devices report as usual on the broker, a scenario plays every few minutes, and its
grid workers do their patrols over the REST API (`gridhub.simulators.workers`).

`gridhub demo` (gridhub/demo_run.py) sets the hub up and calls `district_life()`; like every simulator, this module
speaks only the device protocol and the public API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from gridhub.protocol import BrokerAddress
from gridhub.simulators.devices import DevicePool, run_life
from gridhub.simulators.fleet import DeviceAccounts, demo_district_path, load_fleet
from gridhub.simulators.scenario import ScenarioError, load_scenario, play
from gridhub.simulators.workers import WorkerOptions, WorkerSim

log = logging.getLogger("gridhub.demo")

SCENARIO_CYCLE = ("fire", "dark_stairwell", "pressure_loss", "garbage", "power_cut", "flapping", "exit_blocked")
FIRST_SCENARIO_AFTER_S = 90.0
SCENARIO_EVERY_S = 240.0


async def district_life(target: BrokerAddress, accounts: DeviceAccounts, stop: asyncio.Event, *, prefix: str,
                        timezone: str, v5: bool, board: str, scenarios: tuple[str, ...],
                        workers: WorkerOptions | None = None) -> None:
    """The demo district's devices live their normal lives on the broker at `target`; every few minutes the next
    of `scenarios` plays on some of them, announced with the `board` to watch; with `workers`, simulated grid
    workers do their patrols on the API (call this once the API answers)."""
    fleet = load_fleet(demo_district_path())
    pool = DevicePool(target, accounts, prefix=prefix, v5=v5)
    life = asyncio.create_task(run_life(pool, fleet.active, stop, timezone=timezone))
    log.info("%d virtual devices are logging in", len(fleet.active))

    playing: set[asyncio.Task[Any]] = set()

    async def scenario_loop() -> None:
        n = 0
        wait = FIRST_SCENARIO_AFTER_S
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return
            name = scenarios[n % len(scenarios)]
            n += 1
            wait = SCENARIO_EVERY_S
            try:
                sc = load_scenario(name)
                print(f"[demo] scenario {name}: {sc.summary} Watch {board}", flush=True)
                task = asyncio.create_task(play([sc], fleet, pool, target, seed=n, stop=stop,
                                                timezone=timezone))
                playing.add(task)
                task.add_done_callback(playing.discard)
            except ScenarioError as exc:
                log.warning("scenario %s not played: %s", name, exc)

    runner = asyncio.create_task(scenario_loop())
    people = None
    if workers is not None:
        people = asyncio.create_task(WorkerSim(workers).run(stop))
        log.info("%d simulated grid workers are doing their patrols on %s", len(workers.workers), workers.api)
    await stop.wait()
    runner.cancel()
    await asyncio.gather(life, *playing, *([people] if people else []), return_exceptions=True)
    await pool.close_all(say_offline=False)
