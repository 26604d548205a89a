"""Evidence images: the frame, the escape route's ROI and the objects found on it, as a JPEG."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

ROI_COLOUR = (0, 200, 255)  # BGR amber
OBJECT_COLOUR = (0, 0, 255)


def render_evidence(
    frame_bgr: np.ndarray,
    roi: Sequence[Sequence[float]],
    boxes: Sequence[Sequence[float]],
    *,
    label: str = "",
    quality: int = 85,
) -> bytes:
    """A JPEG of ``frame_bgr`` with the ROI polygon and each box (normalised x0, y0, x1, y1) outlined."""
    img = frame_bgr.copy()
    h, w = img.shape[:2]
    thick = max(1, round(w / 320))
    pts = np.array([[x * w, y * h] for x, y in roi], np.float32).round().astype(np.int32)
    overlay = img.copy()
    cv2.fillPoly(overlay, [pts], ROI_COLOUR)
    img = cv2.addWeighted(overlay, 0.15, img, 0.85, 0)
    cv2.polylines(img, [pts], True, ROI_COLOUR, thick, cv2.LINE_AA)
    for x0, y0, x1, y1 in boxes:
        p0 = (int(x0 * w), int(y0 * h))
        p1 = (int(np.ceil(x1 * w)), int(np.ceil(y1 * h)))
        cv2.rectangle(img, p0, p1, OBJECT_COLOUR, thick + 1, cv2.LINE_AA)
    if label:
        scale = max(0.4, w / 1280)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(img, (0, 0), (tw + 8, th + base + 8), (0, 0, 0), -1)
        cv2.putText(img, label, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - encoding a uint8 BGR image does not fail
        raise RuntimeError("evidence JPEG encoding failed")
    return buf.tobytes()
