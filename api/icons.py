"""Draws the worker app's icons (api/static/icons/icon-{192,512}.png): a street grid on the page's navy with a red
alarm dot, our own drawing. The PNGs are committed; run `python -m gridhub.api.icons` to draw them again."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).parent / "static" / "icons"
NAVY = (79, 50, 18)  # #12324f in BGR
RED = (54, 48, 217)  # #d93036
WHITE = (255, 255, 255)


def draw(size: int) -> np.ndarray:
    """A square icon; everything that matters stays inside the central 80 % (the "maskable" safe zone)."""
    scale = 4  # drawn large and shrunk: smooth edges without anti-aliasing tricks
    s = size * scale
    img = np.full((s, s, 3), NAVY, np.uint8)
    lo, hi = int(s * 0.24), int(s * 0.76)
    width = max(2, s // 40)
    for i in range(4):  # a 3 x 3 grid of streets
        p = lo + (hi - lo) * i // 3
        cv2.line(img, (p, lo), (p, hi), WHITE, width, cv2.LINE_AA)
        cv2.line(img, (lo, p), (hi, p), WHITE, width, cv2.LINE_AA)
    centre = (lo + (hi - lo) // 2, lo + (hi - lo) // 2)
    cv2.circle(img, centre, int(s * 0.13), NAVY, -1, cv2.LINE_AA)
    cv2.circle(img, centre, int(s * 0.115), RED, -1, cv2.LINE_AA)
    cv2.circle(img, centre, int(s * 0.045), WHITE, -1, cv2.LINE_AA)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for size in (192, 512):
        ok, buf = cv2.imencode(".png", draw(size), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        assert ok
        (OUT / f"icon-{size}.png").write_bytes(buf.tobytes())


if __name__ == "__main__":
    main()
