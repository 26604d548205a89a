"""One camera schema, two readers: the replay camera file (CONTRACT §3) lenient as it always was, the registry strict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from gridhub.detectors.config import CameraConfigError, load_camera_config
from gridhub.registry import CameraBlock

ROI = [[0.1, 0.2], [0.9, 0.2], [0.9, 0.9]]


def test_a_replay_camera_file_takes_quoted_numbers_and_the_contract_defaults(tmp_path: Path) -> None:
    f = tmp_path / "cam.json"
    f.write_text(json.dumps({"camera_id": "cam-1", "roi": ROI, "min_blocked_s": "45"}), encoding="utf-8")
    cfg = load_camera_config(f)
    assert (cfg.min_blocked_s, cfg.min_object_frac, cfg.min_clear_s) == (45.0, 0.01, 30)


def test_a_replay_camera_file_still_refuses_what_is_not_a_number(tmp_path: Path) -> None:
    f = tmp_path / "cam.json"
    f.write_text(json.dumps({"camera_id": "cam-1", "roi": ROI, "min_blocked_s": "soon"}), encoding="utf-8")
    with pytest.raises(CameraConfigError, match="min_blocked_s"):
        load_camera_config(f)


def test_the_registry_camera_block_stays_strict() -> None:
    assert CameraBlock.model_validate({"roi": ROI}).min_blocked_s == 60
    with pytest.raises(ValidationError, match="min_blocked_s"):
        CameraBlock.model_validate({"roi": ROI, "min_blocked_s": "45"})
