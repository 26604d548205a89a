"""The camera configuration of CONTRACT §3: the registry's ``camera:`` block plus ``camera_id``.

The fields and their defaults are defined once, in ``gridhub.registry.CameraScene`` (the registry's block
extends it with ``source`` and ``interval_s``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError, field_validator

from gridhub.registry import CameraScene, Id


class CameraConfig(CameraScene):
    """Where the escape path is in the picture, and how long things must stay to block it."""

    model_config = ConfigDict(extra="ignore")

    camera_id: Id

    @field_validator("min_blocked_s", "min_object_frac", "min_clear_s", mode="before")
    @classmethod
    def _lax_number(cls, v: Any) -> Any:
        """A replay camera file (CONTRACT §3) has always been read leniently ("60" is 60 s); the registry's
        block stays strict."""
        return _FLOAT.validate_python(v) if v is not None else v


_FLOAT: TypeAdapter[float] = TypeAdapter(float)


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
    if cfg.reference is not None and not Path(cfg.reference).is_absolute():
        cfg = cfg.model_copy(update={"reference": str(path.parent / cfg.reference)})
    return cfg
