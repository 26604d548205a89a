"""``gridhub detect replay``: run the hub's detector offline over a folder of frames (CONTRACT §3).

Frames are ``DIR/<epoch_ms>.jpg``, judged in time order with every timer on frame time; one JSON
line per frame goes to ``OUT``: ``{"ts_ms", "blocked", "occupancy", "obstructed"}``, plus
``events`` on the frames where the state changed. A frame that cannot be decoded is reported on
standard error and skipped. Progress goes to standard error on long runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from .config import CameraConfigError, load_camera_config
from .evidence import render_evidence
from .model import ExitDetector, decode_frame, frame_problem

PROGRESS_EVERY_S = 5.0


class ReplayError(Exception):
    """A replay that cannot start; the message says what to fix."""


def list_frames(frames_dir: Path) -> list[tuple[int, Path]]:
    """``(epoch_ms, path)`` of the frames in ``frames_dir``, oldest first."""
    if not frames_dir.exists():
        raise ReplayError(f"frames directory {frames_dir} does not exist")
    if not frames_dir.is_dir():
        raise ReplayError(f"{frames_dir} is not a directory: --frames wants a folder of <epoch_ms>.jpg files")
    frames = []
    for p in frames_dir.iterdir():
        if p.suffix.lower() in (".jpg", ".jpeg") and p.stem.isdigit():
            frames.append((int(p.stem), p))
    frames.sort()
    return frames


def replay(
    camera_json: Path,
    frames_dir: Path,
    out: Path,
    *,
    evidence_dir: Path | None = None,
    log: TextIO | None = None,
) -> int:
    """Judge every frame of ``frames_dir`` and write the JSON lines to ``out``; returns the frame count.

    With ``evidence_dir``, an evidence JPEG is written there for each event.
    """
    log = log if log is not None else sys.stderr
    try:
        config = load_camera_config(camera_json)
    except CameraConfigError as exc:
        raise ReplayError(str(exc)) from None
    frames = list_frames(frames_dir)
    if not frames:
        raise ReplayError(f"no frames in {frames_dir}: expected files named <epoch_ms>.jpg")
    try:
        detector = ExitDetector(config)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    if evidence_dir is not None:
        evidence_dir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    skipped = 0
    started = last_report = time.monotonic()
    with out.open("w", encoding="utf-8") as fh:
        for i, (ts, path) in enumerate(frames):
            try:
                data = path.read_bytes()
            except OSError as exc:
                print(f"frame {path.name}: cannot be read ({exc}); skipped", file=log)
                skipped += 1
                continue
            problem = frame_problem(data)  # from the header: nothing decoded yet
            frame = decode_frame(data) if problem is None else None
            if frame is None:
                print(f"frame {path.name}: not a decodable image{': ' + problem if problem else ''}; skipped",
                      file=log)
                skipped += 1
                continue
            result = detector.process(frame, ts)
            fh.write(json.dumps(result.line()) + "\n")
            done += 1
            if evidence_dir is not None:
                for event in result.events:
                    full = decode_frame(data, reduced=False)
                    if full is not None:
                        jpeg = render_evidence(full, config.roi, event.boxes, label=f"{event.type} {ts}")
                        (evidence_dir / f"{ts}_{event.type}.jpg").write_bytes(jpeg)
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                rate = (i + 1) / (now - started)
                print(f"replay: {i + 1}/{len(frames)} frames ({rate:.0f}/s)", file=log)
    if skipped:
        print(f"replay: {skipped} of {len(frames)} frames skipped (see above)", file=log)
    return done


def replay_cli(argv: list[str]) -> int:
    """``gridhub detect replay --camera CAMERA.json --frames DIR --out OUT.jsonl``; exit status."""
    ap = argparse.ArgumentParser(
        prog="gridhub detect replay",
        description="Run the blocked-exit detector offline over DIR/<epoch_ms>.jpg frames (CONTRACT §3).",
    )
    ap.add_argument(
        "--camera", required=True, type=Path, help="camera JSON: camera_id, roi, min_blocked_s, ..."
    )
    ap.add_argument("--frames", required=True, type=Path, help="folder of <epoch_ms>.jpg frames")
    ap.add_argument("--out", required=True, type=Path, help="JSON lines, one per frame")
    ap.add_argument("--evidence", type=Path, default=None, help="also write an evidence JPEG per event here")
    args = ap.parse_args(argv)
    try:
        n = replay(args.camera, args.frames, args.out, evidence_dir=args.evidence)
    except ReplayError as exc:
        print(f"gridhub detect replay: {exc}", file=sys.stderr)
        return 2
    print(f"replay: {n} frames judged, results in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(replay_cli(sys.argv[1:]))
