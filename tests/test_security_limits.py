# ruff: noqa: F811
"""Issue 13, limits before work and exposure: request bodies refused before they are read (a 2 GB upload from a raw
socket, declared and chunked), image sizes judged from the header before decoding (photos, frames, references),
the security headers on every answer, HSTS only over TLS, and /healthz without internal error text."""

from __future__ import annotations

import json
import resource
import select
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from apitools import RunningApi, api, as_, bearer, client, free_port, make_incident, serve, tiny_jpeg, tokens  # noqa: F401
from fastapi import FastAPI

from gridhub import images
from gridhub.api.app import create_app
from gridhub.api.deps import get_pool
from gridhub.settings import Settings

MiB = 1024 * 1024
TWO_GB = 2 * 1024 * MiB
FEW_MB = 4 * MiB


# -- crafted images -------------------------------------------------------------------------------------------------

def jpeg_header(width: int, height: int, sof: int = 0xC0, app_segments: int = 1, fill: int = 0) -> bytes:
    """A JPEG that is only markers: SOI, APPn, DQT, SOF (the given size), DHT, SOS, a few bytes, EOI. Tiny,
    whatever size it claims."""
    out = bytearray(b"\xff\xd8")
    for n in range(app_segments):
        body = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" if n == 0 else b"Exif\x00\x00" + b"\x00" * 200
        out += b"\xff" + bytes([0xE0 + min(n, 1)]) + struct.pack(">H", len(body) + 2) + body
    out += b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + bytes(range(1, 65))
    out += b"\xff" * fill
    sof_body = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x00\x03\x11\x00"
    out += b"\xff" + bytes([sof]) + struct.pack(">H", len(sof_body) + 2) + sof_body
    dht = b"\x00" + b"\x01" + b"\x00" * 15 + b"\x00"
    out += b"\xff\xc4" + struct.pack(">H", len(dht) + 2) + dht
    sos = b"\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00"
    out += b"\xff\xda" + struct.pack(">H", len(sos) + 2) + sos + b"\x00" * 32 + b"\xff\xd9"
    return bytes(out)


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + b"\x00" * 4


HUGE = jpeg_header(30000, 30000)


def test_sizes_come_from_the_header_for_every_kind_of_jpeg() -> None:
    real = tiny_jpeg()
    assert images.jpeg_size(real) == (64, 48)
    assert images.jpeg_size(HUGE) == (30000, 30000) and len(HUGE) < 1024
    for sof in (0xC1, 0xC2, 0xC3, 0xC9, 0xCA):  # extended, progressive, lossless, arithmetic
        assert images.jpeg_size(jpeg_header(641, 481, sof=sof)) == (641, 481)
    assert images.jpeg_size(jpeg_header(100, 50, app_segments=3, fill=5)) == (100, 50)  # EXIF, fill bytes
    assert images.image_size(png_header(30000, 20000)) == (30000, 20000)
    with pytest.raises(images.ImageTooLarge, match="image too large: 30000×30000 pixels, at most 50,000,000"):
        images.check_jpeg(HUGE, images.PHOTO_MAX_PIXELS)
    assert images.check_jpeg(real, 64 * 48) == (64, 48)
    with pytest.raises(images.ImageTooLarge):
        images.check_jpeg(real, 64 * 48 - 1)


@pytest.mark.parametrize("data, why", [
    (b"", "SOI"), (b"GIF89a.....", "SOI"), (b"\xff\xd8\xff", "SOI"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "ends before"),  # cut inside its first segment
    (b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 20, "before any frame header"),  # image data without a SOF
    (b"\xff\xd8garbage\xff\xc0", "no marker"),  # bytes a lenient decoder would skip: refused, never measured
    (b"\xff\xd8\xff\xe0\x00\x01", "length of 1"),
    (jpeg_header(640, 0), "DNL"),
])
def test_what_is_not_a_measurable_jpeg_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(images.NotAnImage, match=why):
        images.jpeg_size(data)


def test_opencv_is_capped_too() -> None:
    import os

    import cv2
    import numpy as np

    assert images.opencv_cap_applied(), "cv2 was imported before gridhub.images: its pixel cap is not in force"
    assert int(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"]) == images.OPENCV_MAX_PIXELS
    with pytest.raises(cv2.error, match="CV_IO_MAX_IMAGE_PIXELS"):  # a decoder reached by another path refuses
        cv2.imdecode(np.frombuffer(jpeg_header(10000, 10000), np.uint8), cv2.IMREAD_COLOR)


# -- bodies from a raw socket ---------------------------------------------------------------------------------------

@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the socket took before the answer was seen


def raw_post(base_url: str, path: str, *, chunked: bool, headers: tuple[str, ...] = (),
             content_type: str = "multipart/form-data; boundary=xyz", prefix: bytes = b"",
             give_up_after: int = 64 * MiB) -> RawAnswer:
    """POST a body of zeros (declared 2 GB, or chunked without end) and stop as soon as an answer can be read;
    the client's send buffer is kept small, so `sent` is close to what the server has taken in."""
    port = int(base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}", *headers,
            "Transfer-Encoding: chunked" if chunked else f"Content-Length: {TWO_GB}"]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    block = b"\0" * 65536
    piece = b"%x\r\n" % len(block) + block + b"\r\n" if chunked else block
    pending = (b"%x\r\n" % len(prefix) + prefix + b"\r\n" if chunked else prefix) if prefix else b""
    sent = 0
    sock.setblocking(False)
    while sent < give_up_after:
        readable, writable, _ = select.select([sock], [sock], [], 15)
        if readable or not writable:
            break  # an answer (or a hang-up) is there; or nothing moves at all
        pending = pending or piece
        try:
            n = sock.send(pending)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += n
        pending = pending[n:]
    sock.setblocking(True)
    sock.settimeout(15)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                break
            data += more
        head_raw, _, body = data.partition(b"\r\n\r\n")
        lines = head_raw.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        while len(body) < int(fields.get("content-length", 0)):
            more = sock.recv(65536)
            if not more:
                break
            body += more
    except (ConnectionResetError, TimeoutError):
        raise AssertionError(f"no answer after {sent} bytes sent; got {data[:200]!r}") from None
    finally:
        sock.close()
    assert lines[0].startswith("HTTP/1.1 "), f"no answer after {sent} bytes sent: {data[:200]!r}"
    return RawAnswer(int(lines[0].split()[1]), fields, body, sent)


@pytest.fixture(scope="module")
def task_of_w003(db_url: str) -> str:
    _, task_id = make_incident(db_url, "sa-0201", "g-xg-02", "b-20", "w-003", alert_type="exit_blocked",
                               severity="high")
    return task_id


def test_a_declared_2gb_upload_without_a_token_is_413_before_the_server_reads_it(api: RunningApi,
                                                                                  task_of_w003: str) -> None:
    answer = raw_post(api.url, f"/api/v1/tasks/{task_of_w003}/photos", chunked=False)
    assert answer.status == 413, answer
    assert answer.sent < FEW_MB, f"{answer.sent} bytes went in before the answer"
    detail = json.loads(answer.body)["detail"]
    assert f"{TWO_GB} bytes" in detail and "10 MiB" in detail
    assert answer.headers["connection"] == "close"
    assert answer.headers["x-content-type-options"] == "nosniff"
    # a JSON route has its own, smaller cap; the same before any token is looked at
    answer = raw_post(api.url, f"/api/v1/tasks/{task_of_w003}/comment", chunked=False)
    assert answer.status == 413 and "1 MiB" in json.loads(answer.body)["detail"] and answer.sent < FEW_MB


def test_a_declared_2gb_upload_with_a_token_is_413_too(api: RunningApi, tokens: dict[str, str],
                                                       task_of_w003: str) -> None:
    answer = raw_post(api.url, f"/api/v1/tasks/{task_of_w003}/photos", chunked=False,
                      headers=(f"Authorization: Bearer {tokens['w-003']}",))
    assert answer.status == 413 and answer.sent < FEW_MB


def test_a_chunked_upload_without_a_token_is_answered_before_a_few_mb(api: RunningApi, task_of_w003: str) -> None:
    # the photo route checks the token before it reads its body: 401 at once, and the server hangs up
    answer = raw_post(api.url, f"/api/v1/tasks/{task_of_w003}/photos", chunked=True)
    assert answer.status == 401, answer
    assert answer.sent < FEW_MB, f"{answer.sent} bytes went in before the answer"
    assert answer.headers["connection"] == "close"
    # routes that read their body before the token (FastAPI reads a declared body first) are counted: 413 past
    # 1 MiB, whether the body is a form (the log-in: nobody has a token yet) or JSON
    for path, content_type in (("/api/v1/auth/token", "application/x-www-form-urlencoded"),
                               (f"/api/v1/tasks/{task_of_w003}/comment", "application/json")):
        answer = raw_post(api.url, path, chunked=True, content_type=content_type)
        assert answer.status == 413, answer
        assert answer.sent < FEW_MB, f"{answer.sent} bytes went in before the answer"
        assert "1 MiB" in json.loads(answer.body)["detail"] and answer.headers["connection"] == "close"


def test_an_authenticated_chunked_upload_stops_at_the_photo_cap(api: RunningApi, tokens: dict[str, str],
                                                                task_of_w003: str, db_url: str) -> None:
    part = (b'--xyz\r\nContent-Disposition: form-data; name="photo"; filename="endless.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n\xff\xd8")
    answer = raw_post(api.url, f"/api/v1/tasks/{task_of_w003}/photos", chunked=True, prefix=part,
                      headers=(f"Authorization: Bearer {tokens['w-003']}",))
    assert answer.status == 413, answer
    assert 10 * MiB < answer.sent < 10 * MiB + FEW_MB, answer.sent
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM evidence WHERE task_id = %s", (task_of_w003,)).fetchone() == (0,)


def test_ordinary_bodies_still_pass(client: httpx.Client, tokens: dict[str, str], task_of_w003: str) -> None:
    r = client.post(f"/api/v1/tasks/{task_of_w003}/comment", json={"note": "x" * 1999}, **as_(tokens, "w-003"))
    assert r.status_code == 200, r.text
    assert r.headers.get("connection") != "close"


# -- images before decoding -----------------------------------------------------------------------------------------

@pytest.fixture
def imdecode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every cv2.imdecode call in this process (the test API runs in a thread of it) is counted."""
    import cv2

    calls: list[int] = []
    real = cv2.imdecode

    def spy(buf: Any, flags: int) -> Any:
        calls.append(len(buf))
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    return calls


def test_a_30000x30000_photo_header_is_422_without_decoding(client: httpx.Client, tokens: dict[str, str],
                                                            task_of_w003: str, imdecode_calls: list[int]) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = client.post(f"/api/v1/tasks/{task_of_w003}/photos", files={"photo": ("big.jpg", HUGE, "image/jpeg")},
                    **as_(tokens, "w-003"))
    assert r.status_code == 422, r.text
    assert "image too large: 30000×30000 pixels, at most 50,000,000" in r.json()["detail"]
    assert imdecode_calls == []  # refused from the header
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024, f"the process grew by {grown_kib} KiB"  # decoding would take 2.7 GB
    # a photo within the budget is still decoded (checked to be a real JPEG) and stored
    r = client.post(f"/api/v1/tasks/{task_of_w003}/photos", files={"photo": ("ok.jpg", tiny_jpeg(), "image/jpeg")},
                    **as_(tokens, "w-003"))
    assert r.status_code == 201, r.text
    assert len(imdecode_calls) == 1


def test_frames_of_huge_dimensions_never_reach_the_decoder(imdecode_calls: list[int]) -> None:
    from gridhub.detectors.model import decode_frame, frame_problem

    for data in (HUGE, png_header(20000, 20000), jpeg_header(4097, 4097, sof=0xC2)):
        problem = frame_problem(data)
        assert problem is not None and "image too large" in problem
        assert decode_frame(data) is None and decode_frame(data, reduced=False) is None
    assert "30000×30000" in (frame_problem(HUGE) or "")
    assert imdecode_calls == []
    assert frame_problem(b"BM\x00\x00 a bitmap") == "not a JPEG or PNG image"
    assert frame_problem(tiny_jpeg()) is None and decode_frame(tiny_jpeg()) is not None


def test_the_live_detector_quarantines_a_huge_frame_as_bad_frame(settings: Settings, db_url: str,
                                                                 imdecode_calls: list[int]) -> None:
    from gridhub.detectors.config import CameraConfig
    from gridhub.detectors.live import Camera, DetectService, Frame

    cam_id = f"cam-big-{uuid.uuid4().hex[:6]}"
    service = DetectService(settings)
    service.conn = psycopg.connect(db_url, autocommit=True)
    try:
        cam = Camera(CameraConfig(camera_id=cam_id, roi=[[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]]))
        service.cameras[cam_id] = cam
        service.held = {cam_id}
        topic = f"gridhub/v1/devices/{cam_id}/frame"
        service._handle(Frame(cam_id, int(time.time() * 1000), HUGE, topic=topic))
        row = service.conn.execute("SELECT reason, detail FROM quarantine WHERE device_id = %s", (cam_id,)).fetchone()
    finally:
        service.conn.close()
    assert row is not None and row[0] == "bad_frame"
    assert "image too large: 30000×30000 pixels" in row[1]
    assert cam.detector is None and service.processed == 0 and imdecode_calls == []


def test_replay_skips_a_huge_frame_and_a_huge_reference_is_refused(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from gridhub.detectors.config import CameraConfig
    from gridhub.detectors.model import ExitDetector
    from gridhub.detectors.replay import replay

    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "1790000000000.jpg").write_bytes(HUGE)
    (frames / "1790000001000.jpg").write_bytes(tiny_jpeg())
    camera = tmp_path / "camera.json"
    camera.write_text(json.dumps({"camera_id": "cam-r", "roi": [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]],
                                  "min_blocked_s": 60}))
    assert replay(camera, frames, tmp_path / "out.jsonl") == 1
    assert "1790000000000.jpg: not a decodable image: image too large: 30000×30000" in capsys.readouterr().err
    reference = tmp_path / "clear.jpg"
    reference.write_bytes(HUGE)
    config = CameraConfig(camera_id="cam-r", roi=[[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]],
                          reference=str(reference))
    with pytest.raises(ValueError, match="image too large: 30000×30000"):
        ExitDetector(config)


# -- headers --------------------------------------------------------------------------------------------------------

def test_every_answer_has_nosniff_and_a_referrer_policy(client: httpx.Client, tokens: dict[str, str]) -> None:
    answers = [
        client.get("/healthz"), client.get("/metrics"), client.get("/openapi.json"), client.get("/"),
        client.get("/worker"), client.get("/sw.js"), client.get("/api/v1/devices"),  # 401
        client.get("/api/v1/devices", **as_(tokens, "a-001")),
        client.get("/api/v1/quarantine", **as_(tokens, "w-001")),  # 403
        client.get("/api/v1/devices/nope", **as_(tokens, "a-001")),  # 404
        client.get("/api/v1/devices", params={"limit": 0}, **as_(tokens, "a-001")),  # 422
        client.get("/no/such/page"),
        client.post("/api/v1/auth/token", content=b"x" * (2 * MiB),
                    headers={"Content-Type": "application/x-www-form-urlencoded"}),  # 413
    ]
    assert {r.status_code for r in answers} >= {200, 401, 403, 404, 413, 422}
    for r in answers:
        assert r.headers.get("x-content-type-options") == "nosniff", (r.request.url, r.status_code)
        assert r.headers.get("referrer-policy") == "no-referrer", (r.request.url, r.status_code)
        assert "strict-transport-security" not in r.headers  # plain HTTP
    page = answers[3]
    assert "default-src" in page.headers["content-security-policy"]


@pytest.fixture
def running(settings: Settings) -> Iterator[Callable[..., RunningApi]]:
    started: list[RunningApi] = []

    def start(app: FastAPI | None = None, **changes: Any) -> RunningApi:
        changed = settings.model_copy(update=changes)
        one = serve(changed, app)  # as `gridhub api` serves it: proxy headers only from trusted proxies
        started.append(one)
        return one

    yield start
    for one in started:
        one.stop()


def test_hsts_only_over_tls_as_told_by_a_trusted_proxy(running: Callable[..., RunningApi]) -> None:
    https = {"X-Forwarded-Proto": "https"}
    behind_proxy = running(trusted_proxies="127.0.0.1")
    with httpx.Client(base_url=behind_proxy.url, timeout=30) as c:
        for path in ("/healthz", "/api/v1/devices", "/"):
            r = c.get(path, headers=https)
            assert r.headers.get("strict-transport-security") == "max-age=31536000", (path, r.headers)
            assert r.headers["x-content-type-options"] == "nosniff"
        assert "strict-transport-security" not in c.get("/healthz").headers  # the proxy says: plain http
        assert "strict-transport-security" not in c.get("/healthz", headers={"X-Forwarded-Proto": "http"}).headers
    # the same header from a peer that is not a configured proxy is anybody's say-so
    no_proxy = running(trusted_proxies="10.9.9.9")
    with httpx.Client(base_url=no_proxy.url, timeout=30) as c:
        assert "strict-transport-security" not in c.get("/healthz", headers=https).headers


class _DownPool:
    """A pool whose every connection fails as a wrong database URL does: with hosts, ports and user names."""

    def __init__(self, url: str) -> None:
        self.url = url

    def connection(self, timeout: float | None = None) -> Any:
        url = self.url

        class _Connect:
            async def __aenter__(self) -> Any:
                return await psycopg.AsyncConnection.connect(url, connect_timeout=3)

            async def __aexit__(self, *exc: object) -> None:
                return None

        return _Connect()


def test_healthz_names_what_is_down_and_nothing_else(running: Callable[..., RunningApi], settings: Settings) -> None:
    port = free_port()
    wrong_db = f"postgresql://probe-user:probe-pw@127.0.0.1:{port}/probe-db"
    wrong_broker = f"mqtt://broker-user:broker-pw@127.0.0.1:{free_port()}"
    app = create_app(settings.model_copy(update={"mqtt_url": wrong_broker}))
    app.dependency_overrides[get_pool] = lambda: _DownPool(wrong_db)
    down = running(app)
    r = httpx.get(f"{down.url}/healthz", timeout=30)
    assert r.status_code == 503
    assert r.json() == {"status": "degraded", "checks": {"database": {"ok": False, "error": "unreachable"},
                                                         "broker": {"ok": False, "error": "unreachable"}}}
    for secret in ("probe", "broker-user", "broker-pw", "127.0.0.1", str(port), "refused", "connection"):
        assert secret not in r.text
    assert r.headers["x-content-type-options"] == "nosniff"
