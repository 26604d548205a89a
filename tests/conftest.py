"""The test layers' markers, and fixtures on the real services: a fresh PostgreSQL database per test session (from
the cluster that `make test` starts) and a private mosquitto per test session with accounts generated from the
registry. The service fixtures are never autouse: only the integration tests that ask for them start anything."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gridhub.db import migrate
from gridhub.registry import import_registry, load_file
from gridhub.settings import Settings

TESTS = Path(__file__).parent
DATA = TESTS / "data"
ADMIN_URL = os.environ.get("GRIDHUB_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:55432/postgres")
TEST_SECRET = "test-secret-" + "x" * 40


# The layers (tests/README.md): everything under tests/unit is `unit` and needs no service; everything else is
# `integration`, on the real services; the test_browser*.py files are also `browser`; the files below, which start processes,
# play whole scenarios or generate load, are also `slow`. Test files carry no markers of their own.
UNIT = TESTS / "unit"
BROWSER_FILES = {"test_browser.py", "test_browser_pwa.py", "test_browser_map.py"}
SLOW_FILES = {
    "test_alerts_restart.py", "test_alerts_failover.py", "test_browser.py", "test_browser_pwa.py", "test_browser_map.py", "test_detect_live.py",
    "test_embedded_up.py",
    "test_ingest_processes.py", "test_ingest_restart_loss.py", "test_ingest_slots.py", "test_localservices.py", "test_scenarios_e2e.py", "test_simulators_demo.py",
    "test_simulators_load.py", "test_notify_processes.py", "test_notify_cli.py", "test_parts_wait_for_db.py",
    "test_nats_cluster.py", "test_ingest_nats.py", "test_alerts_nats.py", "test_detect_nats.py",
    "test_store_unknown_commit.py", "test_detector_real.py",
    "test_fault_single_machine.py", "test_broker_check.py",
}
# the fixtures that reach PostgreSQL or start a broker: no unit test may use them, even through another fixture
SERVICE_FIXTURES = {"pg_admin_url", "make_database", "make_registry_database", "db_url", "db", "broker", "settings",
                    "passwords"}


def _is_unit(item: pytest.Item) -> bool:
    return item.path.is_relative_to(UNIT)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _is_unit(item):
            item.add_marker(pytest.mark.unit)
            continue
        item.add_marker(pytest.mark.integration)
        if item.path.name in BROWSER_FILES:
            item.add_marker(pytest.mark.browser)
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A unit test that asks for a service fixture fails before the fixture starts anything."""
    if _is_unit(item):
        wanted = SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if wanted:
            pytest.fail(f"{item.nodeid} is in tests/unit but uses {', '.join(sorted(wanted))}: unit tests need no "
                        "service; move it out of tests/unit or drop the fixture", pytrace=False)


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.exit(
            f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}). Run the tests with `make test`, which installs "
            "and starts the services, or set GRIDHUB_TEST_ADMIN_URL.",
            returncode=2,
        )
    return ADMIN_URL


@pytest.fixture(scope="session")
def make_database(pg_admin_url: str) -> Iterator[Callable[[], str]]:
    """A factory of empty databases, each dropped at the end of the session."""
    made: list[str] = []

    def make() -> str:
        name = f"gridhub_t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return _with_db(pg_admin_url, name)

    yield make
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def make_registry_database(make_database: Callable[[], str]) -> Callable[[], str]:
    """A factory of databases migrated and with tests/data/registry.yaml imported."""

    def make() -> str:
        url = make_database()
        migrate(url)
        with psycopg.connect(url) as conn:
            import_registry(conn, load_file(DATA / "registry.yaml"))
        return url

    return make


@pytest.fixture(scope="session")
def db_url(make_registry_database: Callable[[], str]) -> str:
    """The session's database: migrated, with tests/data/registry.yaml imported."""
    return make_registry_database()


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gridhub-data")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private mosquitto for this session, with a hub account; `broker.url` is the hub's URL."""
    from gridhub.accounts import mosquitto_hash
    from gridhub.broker import acl_text
    from gridhub.services.mosquitto import start_private_mosquitto

    hub_pw = secrets.token_urlsafe(16)
    conf = tmp_path_factory.mktemp("mosquitto")
    mq = start_private_mosquitto(
        conf, passwd_text=f"gridhub-hub:{mosquitto_hash(hub_pw)}\n", acl_text=acl_text("gridhub/v1", "gridhub-hub", [])
    )
    mq.test_url = f"mqtt://gridhub-hub:{hub_pw}@127.0.0.1:{mq.port}"  # type: ignore[attr-defined]
    yield mq
    mq.stop()


@pytest.fixture(scope="session")
def settings(db_url: str, broker: Any, data_dir: Path) -> Settings:
    """Settings for the session's database and broker, with the registry's broker accounts applied."""
    from gridhub.broker import acl_text, build_accounts, passwd_text

    s = Settings(database_url=db_url, mqtt_url=broker.test_url, data_dir=data_dir, secret_key=TEST_SECRET,
                 instance_id=f"t{os.getpid()}")
    with psycopg.connect(db_url) as conn:
        accounts, workers, hub = build_accounts(conn, s)
    broker.apply_accounts(passwd_text(accounts), acl_text(s.topic_prefix, hub.username, workers))
    return s


@pytest.fixture(scope="session")
def passwords(db_url: str) -> dict[str, str]:
    """A log-in password for every registry worker."""
    from gridhub.auth import set_password

    out = {}
    with psycopg.connect(db_url) as conn:
        for (wid,) in conn.execute("SELECT id FROM workers ORDER BY id").fetchall():
            out[wid] = f"pw-{wid}-secret"
            set_password(conn, wid, out[wid])
    return out
