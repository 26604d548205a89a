"""gridhub/db.py without a database: the multi-host URL of PostgreSQL under Patroni is handed to libpq as given (only
a default connect_timeout and TCP keepalives are added, none that the URL sets), and no form of a database URL reaches a log with
its password."""

from __future__ import annotations

import pytest

from gridhub.db import CONNECT_TIMEOUT_S, TCP_DEFAULTS, LazyConnection, connect_kwargs, redact

MULTI = ("postgresql://gridhub:s3cret@10.0.0.1:5432,10.0.0.2:5432/gridhub"
         "?target_session_attrs=read-write&connect_timeout=3")


def test_the_multi_host_url_is_kept_whole() -> None:
    lazy = LazyConnection(MULTI, application_name="t")
    assert lazy.url == MULTI
    assert lazy._kw == {**TCP_DEFAULTS, "application_name": "t", "autocommit": False}  # the URL's connect_timeout wins
    assert connect_kwargs(MULTI.replace("&connect_timeout=3", ""), autocommit=True) == {
        "connect_timeout": CONNECT_TIMEOUT_S, **TCP_DEFAULTS, "autocommit": True}
    assert connect_kwargs("host=a,b port=1,2 connect_timeout=2 keepalives_idle=5 dbname=x") == {
        k: v for k, v in TCP_DEFAULTS.items() if k != "keepalives_idle"}
    assert connect_kwargs(MULTI, tcp_user_timeout=5000)["tcp_user_timeout"] == 5000  # the caller's wins too
    assert connect_kwargs("not a conninfo ===") == {"connect_timeout": CONNECT_TIMEOUT_S, **TCP_DEFAULTS}


@pytest.mark.parametrize(("url", "shown"), [
    (MULTI, "postgresql://gridhub:***@10.0.0.1:5432,10.0.0.2:5432/gridhub"
            "?target_session_attrs=read-write&connect_timeout=3"),
    ("postgresql://u:p@ss/w@h:1/db", "postgresql://u:***@h:1/db"),  # a password with unescaped @ and /
    ("postgresql://u@h/db?password=zz&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    ("host=a,b port=5432,5433 password=secret user=x", "host=a,b port=5432,5433 password=*** user=x"),
    ("host=a password='se cret' user=x", "host=a password=*** user=x"),
    ("postgresql://h/db?application_name=a@b", "postgresql://h/db?application_name=a@b"),
    ("postgresql:///gridhub", "postgresql:///gridhub"),
])
def test_redact_hides_every_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_several_hosts_without_read_write_are_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql://gridhub:s3cret@10.0.0.7:5432,10.0.0.8:5432/gridhub"
    with caplog.at_level("WARNING", logger="gridhub.db"):
        connect_kwargs(url)
        connect_kwargs(url)
        connect_kwargs(MULTI)  # with target_session_attrs=read-write: nothing to say
        connect_kwargs("postgresql://gridhub:s3cret@10.0.0.7:5432/gridhub")  # one host: nothing to say
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "target_session_attrs=read-write" in warned[0]
    assert "s3cret" not in warned[0] and "gridhub:***@10.0.0.7:5432,10.0.0.8:5432" in warned[0]
