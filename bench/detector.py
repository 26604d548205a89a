"""Benchmark of the blocked-exit detector on generated corridor scenes; prints JSON.

    .venv/bin/python bench/detector.py                 # 10 held-out scenes of 6 minutes, frames every 2 s and 5 s
    .venv/bin/python bench/detector.py --tuning 0-39   # the seeds parameters may be tuned on
    .venv/bin/python bench/detector.py --hard          # grey-on-grey obstacles, people pausing at start-up

Each scene has lighting changes (lights off/on, dusk or flicker), a busy period, people pausing,
obstacles that stay and obstacles taken away early. Frames are JPEG-encoded beforehand; the
measured frames per second include decoding them (at half size, as the replay does), run on
one thread (``cv2.setNumThreads(1)``) and are counted in CPU time, so that other work on the
machine does not change the per-core figure.

Scoring: a ground-truth blocked interval starts ``min_blocked_s`` after an obstacle is put
down and ends when it is taken away. It is caught when an ``exit_blocked`` event falls between
10 s before its start and 45 s after it; an ``exit_blocked`` that catches nothing is a false
alarm (a second one in the same interval too). Covered lenses are scored the same way with
``camera_obstructed`` and a 30 s allowance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import cv2
import numpy as np

from gridhub.detectors.config import CameraConfig
from gridhub.detectors.model import ExitDetector, decode_frame
from gridhub.simulators.scenes import HELD_OUT_SEEDS, generate_hard_scene, generate_scene

CATCH_S = 45.0
EARLY_S = 10.0


def score(events: list[tuple[str, int]], truth: dict[str, Any]) -> dict[str, Any]:
    """Match ``(type, ts_ms)`` events against a scene's truth."""
    out: dict[str, Any] = {}
    for kind, intervals, allowance in (
        ("exit_blocked", truth["blocked"], CATCH_S),
        ("camera_obstructed", truth["obstructed"], 30.0),
    ):
        raised = sorted(ts for t, ts in events if t == kind)
        caught: list[float] = []
        matched: set[int] = set()
        for start, end in intervals:
            hit = next(
                (
                    ts
                    for ts in raised
                    if ts not in matched
                    and start - EARLY_S * 1000 <= ts <= min(end, start + allowance * 1000)
                ),
                None,
            )
            if hit is not None:
                matched.add(hit)
                caught.append((hit - start) / 1000.0)
        false = [ts for ts in raised if ts not in matched]
        out[kind] = {
            "truth": len(intervals),
            "caught": len(caught),
            "missed": len(intervals) - len(caught),
            "false_alarms": len(false),
            "delays_s": caught,
            "false_at_ms": false,
        }
    return out


def run_scene(
    seed: int, duration_s: float, interval_s: float, cover: bool, hard: bool = False
) -> tuple[dict[str, Any], float, int]:
    if hard:
        scene = generate_hard_scene(seed, duration_s, interval_s)
    else:
        scene = generate_scene(seed, duration_s, interval_s, cover=cover)
    jpegs = list(scene.jpeg_frames())
    det = ExitDetector(CameraConfig.model_validate(scene.camera_config()))
    events: list[tuple[str, int]] = []
    t0 = time.process_time()
    for ts, data in jpegs:
        frame = decode_frame(data)
        if frame is None:
            continue
        res = det.process(frame, ts)
        events.extend((e.type, e.ts_ms) for e in res.events)
    elapsed = time.process_time() - t0
    truth = scene.truth()
    result = score(events, truth)
    result["seed"] = seed
    result["events"] = [(t, round((ts - scene.start_ms) / 1000, 1)) for t, ts in events]
    result["truth_s"] = {
        "blocked": [
            [round((a - scene.start_ms) / 1000, 1), round((b - scene.start_ms) / 1000, 1)]
            for a, b in truth["blocked"]
        ],
        "short": [
            [round((a - scene.start_ms) / 1000, 1), round((b - scene.start_ms) / 1000, 1)]
            for a, b in truth["short_obstacles"]
        ],
        "lights": truth["lights"],
        "obstacles": truth["obstacles"],
    }
    return result, elapsed, len(jpegs)


def _seeds(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=10)
    ap.add_argument("--duration", type=float, default=360.0, help="seconds of scene time per scene")
    ap.add_argument("--intervals", default="2,5", help="seconds between frames, one report each")
    ap.add_argument("--tuning", default="", help="tuning seeds instead of the held-out ones, e.g. 0-9")
    ap.add_argument("--cover", action="store_true", help="also cover the lens once per scene")
    ap.add_argument("--hard", action="store_true", help="the hard scenes (generate_hard_scene)")
    ap.add_argument("--verbose", action="store_true", help="per-scene details")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    seeds = _seeds(args.tuning) if args.tuning else list(HELD_OUT_SEEDS[: args.scenes])
    reports = [_report(args, seeds, float(iv)) for iv in args.intervals.split(",") if iv]
    print(json.dumps(reports[0] if len(reports) == 1 else {"by_interval": reports}, indent=1))
    return 0


def _report(args: argparse.Namespace, seeds: list[int], interval_s: float) -> dict[str, Any]:
    per_scene = []
    elapsed = 0.0
    frames = 0
    for i, seed in enumerate(seeds):
        print(f"scene {i + 1}/{len(seeds)} seed {seed} every {interval_s} s", file=sys.stderr)
        r, e, n = run_scene(seed, args.duration, interval_s, args.cover, args.hard)
        per_scene.append(r)
        elapsed += e
        frames += n
    totals: dict[str, Any] = {}
    for kind in ("exit_blocked", "camera_obstructed"):
        delays = [d for r in per_scene for d in r[kind]["delays_s"]]
        totals[kind] = {
            "truth": sum(r[kind]["truth"] for r in per_scene),
            "caught_within_45s": sum(r[kind]["caught"] for r in per_scene),
            "missed": sum(r[kind]["missed"] for r in per_scene),
            "false_alarms": sum(r[kind]["false_alarms"] for r in per_scene),
            "mean_delay_s": round(float(np.mean(delays)), 1) if delays else None,
            "max_delay_s": round(float(np.max(delays)), 1) if delays else None,
        }
    report: dict[str, Any] = {
        "seeds": seeds,
        "held_out": not args.tuning,
        "hard": args.hard,
        "scenes": len(seeds),
        "scene_duration_s": args.duration,
        "frame_interval_s": interval_s,
        "frames": frames,
        "frames_per_s_per_core": round(frames / elapsed, 1) if elapsed else None,
        "ms_per_frame": round(1000 * elapsed / frames, 3) if frames else None,
        "resolution": "640x360 JPEG, decoded at half size",
        **totals,
        "short_obstacles": sum(len(r["truth_s"]["short"]) for r in per_scene),
        "lighting_events": sum(len(r["truth_s"]["lights"]) for r in per_scene),
    }
    if args.verbose:
        report["per_scene"] = [{k: v for k, v in r.items()} for r in per_scene]
    return report


if __name__ == "__main__":
    raise SystemExit(main())
