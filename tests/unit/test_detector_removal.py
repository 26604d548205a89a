"""The blocked-exit detector after an object is taken away (issue 16 item 1): the clear scene there is the one
from before the object came, so bare floor never raises the route again.

Generated corridor scenes (``simulators/scenes.py``, tuning seeds only), each frame through JPEG as the hub
sends them; ``min_clear_s`` short (10 s) as on a busy camera, so that the route clears while the evidence of a
long stay would still be fading."""

from __future__ import annotations

from detector_support import play

from gridhub.detectors.config import CameraConfig
from gridhub.detectors.model import DetectionEvent, ExitDetector
from gridhub.simulators.scenes import TUNING_SEEDS, LightEvent, Obstacle, Scene, generate_scene

PLACED_S, REMOVED_S = 40.0, 160.0


def removal_scene(seed: int, min_blocked_s: float) -> Scene:
    """An empty corridor with people passing (none pausing), one box standing 120 s on the route."""
    assert seed in TUNING_SEEDS
    scene = generate_scene(
        seed, 360.0, 2.0, min_blocked_s=min_blocked_s, lighting=False, crowd=False, obstacles=0,
        short_obstacles=0,
    )
    scene.walkers = [w for w in scene.walkers if w.pause_at is None]
    scene.obstacles = [Obstacle("box", PLACED_S, REMOVED_S, 4.5, 0.3, (40, 40, 200), 0.7, 0.6)]
    return scene


def run(scene: Scene, min_clear_s: float) -> tuple[ExitDetector, list[DetectionEvent], list[dict[str, object]]]:
    det = ExitDetector(CameraConfig.model_validate(dict(scene.camera_config(), min_clear_s=min_clear_s)))
    return (det, *play(det, scene))


def at(scene: Scene, ts_ms: int) -> float:
    return (ts_ms - scene.start_ms) / 1000


def summary(scene: Scene, events: list[DetectionEvent]) -> list[tuple[str, float, float]]:
    return [(e.type, at(scene, e.ts_ms), round(e.occupancy, 4)) for e in events]


def assert_raised_once_then_clear_for_good(scene: Scene, events: list[DetectionEvent],
                                           lines: list[dict[str, object]]) -> None:
    told = summary(scene, events)
    assert [e.type for e in events] == ["exit_blocked", "exit_cleared"], f"after removal the route re-raised: {told}"
    blocked, cleared = events
    assert PLACED_S + scene.min_blocked_s - 10 <= at(scene, blocked.ts_ms) <= PLACED_S + scene.min_blocked_s + 45
    assert at(scene, cleared.ts_ms) >= REMOVED_S
    after = [line for line in lines if at(scene, int(str(line["ts_ms"]))) >= at(scene, cleared.ts_ms)]
    assert after and not any(line["blocked"] for line in after), told
    assert after[-1]["occupancy"] == 0.0


def test_bare_floor_where_a_box_stood_two_minutes_is_never_raised_again() -> None:
    # on today's code before the fix: exit_cleared at 168 s, exit_blocked at 170 s with occupancy 0.0
    scene = removal_scene(30, 20.0)
    _det, events, lines = run(scene, 10.0)
    assert_raised_once_then_clear_for_good(scene, events, lines)


def test_no_ghost_when_the_lights_went_off_and_on_while_the_box_stood() -> None:
    # the light changes while the box stands: the clear scene is relit around it; the floor seen after the
    # removal is still the floor from before
    scene = removal_scene(40, 20.0)
    scene.lights = [LightEvent("off", 80.0, 130.0)]
    _det, events, lines = run(scene, 10.0)
    assert_raised_once_then_clear_for_good(scene, events, lines)


def test_no_ghost_with_a_short_persistence_time() -> None:
    scene = removal_scene(32, 10.0)
    _det, events, lines = run(scene, 10.0)
    assert_raised_once_then_clear_for_good(scene, events, lines)
