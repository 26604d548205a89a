"""Camera sources (issue 13): `${NAME}` never reaches the hub's own settings, and only allowed schemes and files
under GRIDHUB_CAMERA_FILES_DIR are opened; refused at registry import (with line and field) and again where the
detector opens the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridhub import envref, notifyfile
from gridhub.detectors.live import open_source
from gridhub.registry import CameraSourceError, RegistryError, check_camera_source, parse

DATA = Path(__file__).parent.parent / "data"
CAM_SOURCE = 'source: "rtsp://${CAM_0001_AUTH}@10.0.0.21/stream1"'


def _registry_with_source(source: str) -> tuple[str, int]:
    text = (DATA / "registry.yaml").read_text()
    assert CAM_SOURCE in text
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if CAM_SOURCE in ln)
    return text.replace(CAM_SOURCE, f'source: "{source}"'), line


@pytest.mark.parametrize(("source", "words"), [
    ("rtsp://${GRIDHUB_SECRET_KEY}@10.0.0.21/stream1", "${GRIDHUB_SECRET_KEY}: the hub's own settings"),
    ("http://evil.example/?k=${gridhub_secret_key}", "hub's own settings"),
    ("file:///etc/passwd", "GRIDHUB_CAMERA_FILES_DIR"),
    ("/etc/passwd", "GRIDHUB_CAMERA_FILES_DIR"),
    ("ftp://10.0.0.21/cam.mp4", "scheme 'ftp' is not allowed"),
    ("udp://10.0.0.21:1234", "scheme 'udp' is not allowed"),
])
def test_a_bad_camera_source_is_refused_at_import_with_line_and_field(source: str, words: str) -> None:
    text, line = _registry_with_source(source)
    with pytest.raises(RegistryError) as info:
        parse(text, "reg.yaml")
    msg = str(info.value)
    assert f"reg.yaml:{line}: devices[7](cam-0001).camera.source" in msg, msg
    assert words in msg, msg


def test_file_sources_only_under_the_configured_folder(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "corridor.mp4").write_bytes(b"")
    (videos / "escape").symlink_to("/etc/passwd")
    for ok in ("file://" + str(videos / "corridor.mp4"), str(videos / "corridor.mp4"), "corridor.mp4"):
        text, _ = _registry_with_source(ok)
        reg = parse(text, "reg.yaml", camera_files_dir=videos)
        assert reg.devices[7].camera is not None and reg.devices[7].camera.source == ok
        assert check_camera_source(ok, videos) == str((videos / "corridor.mp4").resolve())
    for bad in ("file:///etc/passwd", "../outside.mp4", str(videos / ".." / "x.mp4"), "escape"):
        text, line = _registry_with_source(bad)
        with pytest.raises(RegistryError, match=rf"reg.yaml:{line}: .*camera.source: .*outside"):
            parse(text, "reg.yaml", camera_files_dir=videos)
    # the allowed network schemes and the default
    for ok in ("rtsp://10.0.0.21/s", "RTSPS://10.0.0.21/s", "http://10.0.0.5/snap.jpg", "https://cam/x", "mqtt"):
        assert check_camera_source(ok, None) == ok


def test_the_detector_checks_the_expanded_source_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDHUB_SECRET_KEY", "the-hub-key")
    monkeypatch.setenv("CAM_URL", "file:///etc/passwd")
    monkeypatch.setenv("CAM_AUTH", "admin:pw")
    monkeypatch.setenv("CAM_FILE", "../../etc/passwd")
    # the whole URL from the environment passes the import (it cannot be judged there) ...
    assert check_camera_source("${CAM_URL}", None) == "${CAM_URL}"
    # ... and is refused where it is opened
    with pytest.raises(CameraSourceError, match="GRIDHUB_CAMERA_FILES_DIR"):
        open_source("${CAM_URL}", None)
    with pytest.raises(CameraSourceError, match="outside"):
        open_source(str(tmp_path) + "/${CAM_FILE}", tmp_path)
    with pytest.raises(envref.EnvRefError, match="hub's own settings"):
        open_source("rtsp://${GRIDHUB_SECRET_KEY}@cam/s", None)
    with pytest.raises(envref.EnvRefError, match="NOT_SET_ANYWHERE} is not set"):
        open_source("rtsp://${NOT_SET_ANYWHERE}@cam/s", None)
    assert open_source("rtsp://${CAM_AUTH}@10.0.0.21/s", None) == "rtsp://admin:pw@10.0.0.21/s"
    assert open_source("rtsp://$GRIDHUB_SECRET_KEY@cam/s", None) == "rtsp://$GRIDHUB_SECRET_KEY@cam/s"  # not a ref


def test_one_resolver_for_the_notify_file_and_the_cameras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDHUB_SECRET_KEY", "the-hub-key")
    monkeypatch.setenv("WECOM_KEY", "abc")
    assert notifyfile.expand("https://x/?key=${WECOM_KEY}") == envref.expand("https://x/?key=${WECOM_KEY}") \
        == "https://x/?key=abc"
    with pytest.raises(notifyfile.NotifyFileError, match="in the notify file"):
        notifyfile.expand("${GRIDHUB_SECRET_KEY}")
    with pytest.raises(envref.EnvRefError, match="in a camera source"):
        envref.expand("${GRIDHUB_SECRET_KEY}", where="a camera source")
