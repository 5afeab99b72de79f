"""A real PostgreSQL for the tests of the PostgreSQL store (fixtures imported by conftest).

``postgres_url`` (session): ``DAGENGINE_TEST_POSTGRES_URL`` if set (CI starts a cluster with
``.ci/postgres.sh start``), else a throwaway cluster this session starts with the same script
(``--no-install``: initdb in a temp folder as a non-root user, a free loopback port) and stops
at its end. Where PostgreSQL is not installed or cannot start, the tests that need it are
skipped with the reason, unless ``DAGENGINE_REQUIRE_POSTGRES=1`` (CI): then they fail, so they
cannot vanish silently (as ``DAGENGINE_REQUIRE_MULTIHOST=1`` does for the multi-host tests).

``pg_url`` (per test): the URL of a fresh schema of that database (``search_path`` set in the
URL's ``options``), dropped after the test: every test starts from an empty store.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "postgres.sh"


def _unavailable(reason: str) -> None:
    if os.environ.get("DAGENGINE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"DAGENGINE_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``search_path`` set to ``schema`` (in the URL's ``options``)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-c search_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def start_cluster() -> tuple[str, str]:
    """A throwaway cluster of this test's own (``.ci/postgres.sh start --no-install``): its
    URL and folder (for :func:`restart_cluster` and :func:`stop_cluster`); skips or fails
    (``DAGENGINE_REQUIRE_POSTGRES=1``) where none can start."""
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'dagengine[postgres]')")
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", "--no-install", "--watch", str(os.getpid())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if started.returncode != 0:
        _unavailable(f"no PostgreSQL cluster could be started: {started.stderr.strip()}")
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in started.stdout.splitlines()
        if line.startswith("export ")
    )
    url = exports["DAGENGINE_TEST_POSTGRES_URL"]
    folder = exports["DAGENGINE_TEST_POSTGRES_DIR"]
    try:
        with psycopg.connect(url, connect_timeout=10):
            pass
    except BaseException:
        stop_cluster(folder)
        raise
    return url, folder


def restart_cluster(folder: str) -> None:
    """A fast restart of a cluster of :func:`start_cluster` (its sessions are cut)."""
    subprocess.run(
        ["bash", str(SCRIPT), "restart", folder], capture_output=True, timeout=120, check=True
    )


def stop_cluster(folder: str) -> None:
    subprocess.run(
        ["bash", str(SCRIPT), "stop", folder], capture_output=True, timeout=60, check=False
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database for the session's tests (see the module's docstring)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'dagengine[postgres]')")
    given = os.environ.get("DAGENGINE_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    url, folder = start_cluster()
    try:
        yield url
    finally:
        stop_cluster(folder)


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """The URL of an empty schema of the session's database, dropped after the test."""
    import psycopg

    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(postgres_url, schema)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '30s'")  # a store left open would hold it up
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What a store is opened on, once per backend: a SQLite file, a PostgreSQL URL (an
    empty schema of its own)."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return str(request.getfixturevalue("pg_url"))


def query(target: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows read by another connection than the store's (a SQLite file or a PostgreSQL URL):
    what is committed, not what is pending."""
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target) as conn:
            return list(conn.execute(sql).fetchall())
    import sqlite3

    other = sqlite3.connect(target)
    try:
        return list(other.execute(sql).fetchall())
    finally:
        other.close()


def committed(target: str, sql: str) -> int:
    """A count (``sql``: a ``SELECT COUNT(*)``) read by another connection: see :func:`query`."""
    return int(query(target, sql)[0][0])
