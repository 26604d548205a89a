"""The camera configuration of CONTRACT §3: the registry's ``camera:`` block plus ``camera_id``."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class CameraConfig(BaseModel):
    """Where the escape path is in the picture, and how long things must stay to block it."""

    model_config = ConfigDict(extra="ignore")

    camera_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    roi: list[tuple[float, float]] = Field(
        min_length=3, description="polygon, normalised 0..1, origin top-left"
    )
    min_blocked_s: float = Field(default=60.0, gt=0)
    min_object_frac: float = Field(default=0.01, gt=0, le=1)
    min_clear_s: float = Field(default=30.0, ge=0)
    reference: Path | None = None

    @field_validator("roi")
    @classmethod
    def _points_in_unit_square(cls, roi: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for i, (x, y) in enumerate(roi):
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ValueError(
                    f"point {i} ({x}, {y}) is outside 0..1: roi points are normalised image coordinates"
                )
        return roi


class CameraConfigError(ValueError):
    """A camera file that cannot be used; the message names the file and the field."""


def load_camera_config(path: Path) -> CameraConfig:
    """Read a camera JSON file, with errors that name the file and the field."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CameraConfigError(f"camera file {path} does not exist") from None
    except OSError as exc:
        raise CameraConfigError(f"camera file {path} cannot be read: {exc}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CameraConfigError(f"camera file {path} is not JSON: {exc}") from None
    try:
        cfg = CameraConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise CameraConfigError(f"camera file {path}: {problems}") from None
    if cfg.reference is not None and not cfg.reference.is_absolute():
        cfg = cfg.model_copy(update={"reference": (path.parent / cfg.reference)})
    return cfg
