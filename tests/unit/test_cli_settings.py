"""A setting that cannot work stops the command with one line that names it, not a traceback."""

from __future__ import annotations

import pytest

from gridhub.cli import main
from gridhub.settings import get_settings


@pytest.mark.parametrize(("env", "value", "words"), [
    ("GRIDHUB_TIMEZONE", "Mars/Base", ["unknown time zone 'Mars/Base'", "IANA"]),
    ("GRIDHUB_PG_PORT", "abc", ["GRIDHUB_PG_PORT", "not a port number"]),
    ("GRIDHUB_INGEST_WINDOW", "0", ["GRIDHUB_INGEST_WINDOW"]),
])
def test_a_bad_setting_is_one_clear_line_and_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str],
                                                    env: str, value: str, words: list[str]) -> None:
    monkeypatch.setenv(env, value)
    get_settings.cache_clear()
    try:
        rc = main(["services", "status"])
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("gridhub: ") and "Traceback" not in err
    for w in words:
        assert w in err, err
