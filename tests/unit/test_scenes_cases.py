"""The scene generator's cases of issue 16 (an object removed after a long stay; a real person standing on the
route) and the footage finder, without the footage itself: a drawn silhouette stands in for a real person crop
(the integration tests use real ones, tests/test_detector_real.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from gridhub.simulators.footage import FootageMissing, PersonCrop, find_vtest
from gridhub.simulators.scenes import (
    HALF_WIDTH_M,
    HELD_OUT_REMOVAL_SEEDS,
    HELD_OUT_SEEDS,
    HELD_OUT_STANDING_SEEDS,
    TUNING_SEEDS,
    floor_point,
    generate_hard_scene,
    generate_removal_scene,
    generate_scene,
    generate_standing_scene,
    pause_ends,
    roi_mask,
)

# the truth of scenes that existed before these cases, digested when they were added: they must not change
EXISTING = {
    "scene-0": "3c4509ae75fafbcb", "hard-0": "87c5732b2b05fbd2", "cover-0": "9287743eaaa9e78d",
    "scene-7": "7ac31c786746dda8", "hard-7": "f773c8121c3c7d76", "cover-7": "8bdbc78443cf5260",
    "scene-1000": "7b8f15ce7260c37f", "hard-1000": "056f609900e2c52b", "cover-1000": "cb0e01be969be798",
    "scene-1009": "b08fce10f42f0d19", "hard-1009": "92886f60be919bb9", "cover-1009": "1a27c866b6a9dfda",
}


def silhouette(height: int = 90, width: int = 30) -> PersonCrop:
    """A drawn person: a dark coat, blue legs, a head; the mask is the shape, not its box."""
    image = np.full((height, width, 3), 200, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    cx = width // 2
    cv2.circle(mask, (cx, height // 10), height // 12, 255, -1)
    cv2.ellipse(mask, (cx, int(height * 0.38)), (width // 2 - 1, int(height * 0.2)), 0, 0, 360, 255, -1)
    cv2.rectangle(mask, (cx - width // 4, int(height * 0.55)), (cx - 2, height - 1), 255, -1)
    cv2.rectangle(mask, (cx + 2, int(height * 0.55)), (cx + width // 4, height - 1), 255, -1)
    image[: int(height * 0.55)] = (30, 30, 40)
    image[int(height * 0.55):] = (160, 90, 40)
    image[: height // 5] = (120, 160, 205)
    return PersonCrop(image, mask, 0)


def digest(truth: dict[str, object]) -> str:
    kept = {k: v for k, v in truth.items() if k != "standing"}  # the one field added with these cases
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def test_the_existing_scenes_and_seeds_are_unchanged() -> None:
    for seed in (0, 7, 1000, 1009):
        assert digest(generate_scene(seed, 360.0, 2.0).truth()) == EXISTING[f"scene-{seed}"]
        assert digest(generate_hard_scene(seed, 360.0, 5.0).truth()) == EXISTING[f"hard-{seed}"]
        assert digest(generate_scene(seed, 300.0, 5.0, cover=True).truth()) == EXISTING[f"cover-{seed}"]
        assert generate_scene(seed, 360.0, 2.0).truth()["standing"] == []


def test_held_out_seeds_of_the_new_cases_are_apart_from_every_other_set() -> None:
    sets = [set(TUNING_SEEDS), set(HELD_OUT_SEEDS), set(HELD_OUT_REMOVAL_SEEDS), set(HELD_OUT_STANDING_SEEDS)]
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            assert not a & b
    assert len(HELD_OUT_REMOVAL_SEEDS) >= 10 and len(HELD_OUT_STANDING_SEEDS) >= 10


@pytest.mark.parametrize("min_blocked_s", [60.0, 20.0])
def test_a_removal_scene_leaves_an_object_minutes_then_bare_floor_to_the_end(min_blocked_s: float) -> None:
    for seed in (5, 6, 2000, 2009):
        scene = generate_removal_scene(seed, 2.0, min_blocked_s=min_blocked_s)
        (o,) = scene.obstacles
        assert o.end_s - o.start_s >= 120.0
        assert scene.duration_s - o.end_s >= 2 * min_blocked_s + 60.0
        truth = scene.truth()
        assert truth["blocked"] == [[scene.start_ms + round((o.start_s + min_blocked_s) * 1000),
                                     scene.start_ms + round(o.end_s * 1000)]]
        assert truth["obstacles"][0]["roi_fraction"] >= 0.02  # on the route, big enough to count
        # someone stops by it when it is taken away (the owner), and nobody else stops after that
        owners = [w for w in scene.walkers if w.pause_at is not None and abs(w.pause_at - o.depth_m) < 0.5]
        assert owners
        for w in scene.walkers:
            if w.pause_at is not None and w not in owners:
                assert pause_ends(w) < o.end_s - 5.0
        assert generate_removal_scene(seed, 2.0, min_blocked_s=min_blocked_s).truth() == truth
        assert scene.camera_config()["min_clear_s"] == 10.0  # sharp, as on the platform of issue 16
    assert "min_clear_s" not in generate_scene(5, 120.0, 5.0, lighting=False).camera_config()


def test_a_standing_scene_needs_crops() -> None:
    with pytest.raises(ValueError, match="crop"):
        generate_standing_scene(3, [])


def test_a_standing_person_is_pasted_through_the_mask_with_feet_on_the_floor() -> None:
    crop = silhouette()
    for seed in (3, 4, 3000):
        scene = generate_standing_scene(seed, [crop], 2.0, min_blocked_s=30.0)
        assert all(w.pause_s <= 15.0 for w in scene.walkers)  # drawn passers-by pause under min_blocked_s
        scene.walkers = []
        (p,) = scene.people
        assert p.leave_s - p.stand_s == pytest.approx(90.0)
        assert scene.truth()["standing"] == [[scene.start_ms + round(p.stand_s * 1000),
                                              scene.start_ms + round(p.leave_s * 1000)]]
        standing = scene.render(p.stand_s + 10.0).astype(np.int16)
        gone = scene.render(p.leave_s + 30.0).astype(np.int16)
        changed = (np.abs(standing - gone).max(axis=2) > 40).astype(np.uint8)
        # the person is the largest blob of change (camera jitter moves the tiles' grout a little too)
        changed = cv2.morphologyEx(changed, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
        _n, labels, stats, _c = cv2.connectedComponentsWithStats(changed, connectivity=8)
        changed = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
        ys, xs = np.nonzero(changed)
        assert len(ys) > 100
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        fill = changed[y0:y1 + 1, x0:x1 + 1].mean()
        assert fill < 0.85, f"the person fills {fill:.2f} of their box: pasted as a box, not through the mask"
        assert changed[y0, x0] == 0 and changed[y0, x1] == 0  # the box's top corners are floor or wall
        fx, fy = floor_point(p.depth_m, p.x_m)
        assert abs(y1 - fy) <= 3 and abs((x0 + x1) / 2 - fx) <= 4  # feet on the floor, where they stand
        assert (changed.astype(bool) & (roi_mask(scene.roi) > 0)).sum() > 100  # on the route
        # they walk in from the side and out to the other side
        assert p.x_at(p.stand_s - 1.0) != p.x_m and p.x_at(p.leave_s + 1.0) != p.x_m
        assert p.x_at(p.stand_s + 5.0) == p.x_m and abs(p.from_x_m) > HALF_WIDTH_M
        # reproducible
        again = generate_standing_scene(seed, [crop], 2.0, min_blocked_s=30.0)
        again.walkers = []
        assert np.array_equal(again.render(p.stand_s + 10.0), standing.astype(np.uint8))


def test_the_footage_is_found_decompressed_or_refused_naming_the_fix(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    with pytest.raises(FootageMissing, match=r"scripts/install-test-data\.sh") as missing:
        find_vtest(tmp_path / "cache", [nowhere])
    assert "make test" in str(missing.value) and str(nowhere / "vtest.avi") in str(missing.value)

    packed = tmp_path / "doc"
    packed.mkdir()
    with gzip.open(packed / "vtest.avi.gz", "wb") as fh:
        fh.write(b"RIFF not really a video")
    found = find_vtest(tmp_path / "cache", [nowhere, packed])
    assert found == tmp_path / "cache" / "vtest.avi"
    assert found.read_bytes() == b"RIFF not really a video"
    assert find_vtest(tmp_path / "cache", [packed]) == found  # the cache is used again

    (packed / "vtest.avi").write_bytes(b"plain")
    assert find_vtest(tmp_path / "cache", [packed]) == packed / "vtest.avi"
