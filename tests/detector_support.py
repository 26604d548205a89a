"""Playing a generated scene through a detector as the hub does (every frame through JPEG and decode_frame), for the
detector's tests."""

from __future__ import annotations

from gridhub.detectors.model import DetectionEvent, ExitDetector, decode_frame
from gridhub.simulators.scenes import Scene


def play(det: ExitDetector, scene: Scene) -> tuple[list[DetectionEvent], list[dict[str, object]]]:
    """The events `det` raised over the whole scene, and its replay line for every frame."""
    events: list[DetectionEvent] = []
    lines = []
    for ts, data in scene.jpeg_frames():
        frame = decode_frame(data)
        assert frame is not None
        res = det.process(frame, ts)
        events.extend(res.events)
        lines.append(res.line())
    return events, lines
