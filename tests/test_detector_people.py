"""People who stand still on the route are occupancy, never an obstacle (issue 16 item 2).

A real person (cut out of vtest.avi, PETS 2009, from Debian's opencv-doc: read at test time, nothing from it is
kept in the repository) stands for 3 × ``min_blocked_s`` on the route of a generated corridor scene: the route is
occupied but never ``blocked``. The same pixels upside down (no longer a person to OpenCV's people detector) are an
object and raise it: the check is about people, not about the picture."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from footage import vtest_path, vtest_person_crops

from gridhub.detectors.config import CameraConfig
from gridhub.detectors.model import DetectionEvent, ExitDetector, decode_frame
from gridhub.simulators.footage import PersonCrop
from gridhub.simulators.scenes import (
    HELD_OUT_STANDING_SEEDS,
    PIX_PER_M,
    TUNING_SEEDS,
    floor_point,
    generate_scene,
    generate_standing_scene,
)

MIN_BLOCKED_S = 20.0
ARRIVES_S = 40.0
LEAVES_S = ARRIVES_S + 3 * MIN_BLOCKED_S


@pytest.fixture(scope="module")
def person(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A person from vtest (the strongest of OpenCV's people detections on one frame), cut to their own box; the
    test fails, naming the fix, when the footage is not installed (tests/footage.py)."""
    vtest = vtest_path(tmp_path_factory.getbasetemp() / "footage")
    cap = cv2.VideoCapture(str(vtest))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 200)
    ok, frame = cap.read()
    cap.release()
    assert ok, f"{vtest} cannot be read by OpenCV"
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), np.float32))
    rects, weights = hog.detectMultiScale(frame, winStride=(8, 8), padding=(8, 8), scale=1.05)
    assert len(rects), "no person found in vtest's frame 200: is it the PETS 2009 clip?"
    x, y, w, h = (int(v) for v in rects[int(np.argmax(weights))])
    return np.ascontiguousarray(frame[y + h // 20 : y + h - h // 20, x + w * 18 // 100 : x + w * 82 // 100])


def standing(seed: int, crop: np.ndarray, depth_m: float, x_m: float, left: bool = False) -> tuple[
        ExitDetector, list[DetectionEvent], list[float]]:
    """A quiet corridor (people passing, none pausing) where ``crop`` stands on the route from ARRIVES_S to
    LEAVES_S, at the size of a 1.75 m person ``depth_m`` from the camera; every frame through JPEG. ``left``: a
    brown case, knee high, stays where their feet were when they go."""
    assert seed in TUNING_SEEDS
    scene = generate_scene(seed, 200.0, 2.0, min_blocked_s=MIN_BLOCKED_S, lighting=False, crowd=False,
                           obstacles=0, short_obstacles=0)
    scene.walkers = [w for w in scene.walkers if w.pause_at is None]
    det = ExitDetector(CameraConfig.model_validate(dict(scene.camera_config(), min_clear_s=10)))
    fx, fy = floor_point(depth_m, x_m)
    h = round(1.75 * PIX_PER_M * 2 / depth_m)
    w = round(crop.shape[1] * h / crop.shape[0])
    body = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)
    x0, y0 = round(fx - w / 2), round(fy - h)
    events: list[DetectionEvent] = []
    occupancy: list[float] = []
    for ts in scene.timestamps():
        t = (ts - scene.start_ms) / 1000
        img = scene.render(t)
        if ARRIVES_S <= t < LEAVES_S:
            img[y0 : y0 + h, x0 : x0 + w] = body
        elif left and t >= LEAVES_S:
            img[y0 + h - h // 4 : y0 + h, x0 : x0 + w] = (40, 70, 120)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        frame = decode_frame(buf.tobytes())
        assert frame is not None
        res = det.process(frame, ts)
        events.extend(res.events)
        if ARRIVES_S + 15 <= t < LEAVES_S:
            occupancy.append(res.occupancy)
    return det, events, occupancy


@pytest.mark.parametrize(("seed", "depth_m", "x_m"), [(50, 4.5, 0.3), (52, 3.5, -0.5), (56, 4.0, 0.0)])
def test_a_person_standing_three_times_min_blocked_s_is_occupancy_not_blocked(
    person: np.ndarray, seed: int, depth_m: float, x_m: float
) -> None:
    det, events, occupancy = standing(seed, person, depth_m, x_m)
    assert [e.type for e in events] == [], "a person standing on the route raised it"
    assert min(occupancy) > 0.0, "the person standing is not reported as occupancy"
    print(f"seed {seed}: occupancy while standing {min(occupancy):.4f}..{max(occupancy):.4f}, "
          f"{det.people_crops} crops looked at")


@pytest.mark.parametrize(("seed", "depth_m", "x_m"), [(50, 4.5, 0.3), (52, 3.5, -0.5)])
def test_the_same_pixels_upside_down_are_an_obstacle(person: np.ndarray, seed: int, depth_m: float,
                                                     x_m: float) -> None:
    _det, events, _occupancy = standing(seed, cv2.flip(person, 0), depth_m, x_m)
    assert [e.type for e in events] == ["exit_blocked", "exit_cleared"]
    assert ARRIVES_S + MIN_BLOCKED_S - 10 <= (events[0].ts_ms - _start(seed)) / 1000 <= ARRIVES_S + MIN_BLOCKED_S + 45


def _start(seed: int) -> int:
    return generate_scene(seed, 1.0, 1.0, lighting=False, crowd=False, obstacles=0, short_obstacles=0).start_ms


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> list[PersonCrop]:
    return vtest_person_crops(tmp_path_factory)


def test_a_real_person_walking_off_after_standing_raises_nothing(crops: list[PersonCrop]) -> None:
    """Walking off, the person is not found on their mark's second look: the mark stays over them as they go
    (moving over the place they stood), else the seconds they stood there held as an object's raise the route
    (tuning seed 4 of bench/detector.py's standing case did, 4.7 s after they left)."""
    assert 4 in TUNING_SEEDS and 4 not in HELD_OUT_STANDING_SEEDS
    scene = generate_standing_scene(4, crops, 2.0)
    det = ExitDetector(CameraConfig.model_validate(scene.camera_config()))
    events: list[DetectionEvent] = []
    for ts, data in scene.jpeg_frames():
        frame = decode_frame(data)
        assert frame is not None
        events.extend(det.process(frame, ts).events)
    print(f"events {[(e.type, (e.ts_ms - scene.start_ms) / 1000) for e in events]}, {det.people_crops} crops")
    assert [e.type for e in events] == []


def test_a_case_left_where_a_person_stood_is_raised(person: np.ndarray) -> None:
    """What stands still where a person was found, once they are no longer found there, is no longer theirs."""
    _det, events, _occupancy = standing(50, person, 4.5, 0.3, left=True)
    seconds = [(e.type, (e.ts_ms - _start(50)) / 1000) for e in events]
    print(f"events {seconds}")
    assert [e.type for e in events][:1] == ["exit_blocked"], "a case left where a person stood was not raised"
    assert LEAVES_S <= seconds[0][1] <= LEAVES_S + MIN_BLOCKED_S + 45
