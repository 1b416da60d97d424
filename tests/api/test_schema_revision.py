"""The API and the workers refuse to start against a database at a schema revision they do not know, and say
which command fixes it, instead of failing every query later (style guide 23). On a brand-new database `rlaif
serve` and a worker create the schema at start; the API app alone (uvicorn) creates no tables and names the
command. Real processes: uvicorn, `rlaif serve`, a Celery worker.

    python -m pytest tests/api/test_schema_revision.py -q
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from service_fixtures import Service, auth, free_port, wait_for
from sqlalchemy import text

from rlaif.service import db

KINDS = ["sqlite", "postgresql"]


def _set_revision(service: Service, revision: str) -> None:
    db.check_database(service.db_url)  # a database at the newest revision...
    engine = db.make_engine(service.db_url)
    with engine.begin() as connection:  # ... then moved to one this code does not know
        connection.execute(text("UPDATE alembic_version SET version_num = :rev"), {"rev": revision})
    engine.dispose()


def _exit_of(proc: subprocess.Popen[bytes], service: Service, log: str) -> tuple[int, str]:
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{log} did not exit:\n{service.log(log)[-3000:]}") from None
    return proc.returncode, service.log(log)


def _api(service: Service, via_cli: bool) -> subprocess.Popen[bytes]:
    port = str(free_port())
    if via_cli:
        return service.spawn("api", [sys.executable, "-m", "rlaif", "serve", "--port", port], COLUMNS="300")
    return service.spawn("api", [sys.executable, "-m", "uvicorn", "api.main:app", "--port", port])


@pytest.mark.parametrize("kind", KINDS)
def test_the_api_exits_on_a_database_at_an_unknown_revision(kind: str, make_service: Callable[..., Service]) -> None:
    service = make_service(kind)
    _set_revision(service, "f00d")
    for via_cli in (False, True):
        code, log = _exit_of(_api(service, via_cli), service, "api")
        assert code != 0, log
        assert "schema revision f00d" in log and "rlaif db upgrade" in log, log
        assert "Traceback" not in log, log  # a reason, not a stack trace
        (service.root / "api.log").unlink()


@pytest.mark.parametrize("kind", KINDS)
def test_a_worker_exits_on_a_database_at_an_unknown_revision(kind: str, make_service: Callable[..., Service]) -> None:
    service = make_service(kind)
    _set_revision(service, "f00d")
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "control", "--pool", "solo"]
    code, log = _exit_of(service.spawn("w1", [*argv, "--without-gossip", "--without-mingle"]), service, "w1")
    assert code != 0, log
    assert "rlaif worker: the database" in log and "schema revision f00d" in log and "rlaif db upgrade" in log, log
    assert " ready." not in log  # it never consumed a message


def test_the_app_factory_refuses_a_database_with_pending_revisions(
    make_service: Callable[..., Service], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database one revision behind the code (the code here has a throwaway revision after the newest)."""
    from test_migrations import _migrations_with_throwaway

    from api.main import create_app

    service = make_service("sqlite")
    db.check_database(service.db_url)
    monkeypatch.setattr(db, "MIGRATIONS", _migrations_with_throwaway(tmp_path))
    with pytest.raises(db.SchemaError, match=r"pending: \d+\): run `rlaif db upgrade`"):
        create_app(service.settings())
    db.upgrade(service.db_url)
    create_app(service.settings())  # starts once upgraded


@pytest.mark.parametrize("kind", KINDS)
def test_rlaif_serve_and_a_worker_create_the_schema_of_a_new_database(
    kind: str, make_service: Callable[..., Service]
) -> None:
    """No manual step on a new machine: both start on an empty database (at once: the schema lock orders them).
    The app alone creates no tables: uvicorn on an empty database exits, naming `rlaif db upgrade`."""
    service = make_service(kind, schema=False)
    code, log = _exit_of(_api(service, via_cli=False), service, "api")
    assert code != 0 and "has no schema yet: run `rlaif db upgrade`" in log and "Traceback" not in log, log
    (service.root / "api.log").unlink()
    assert db.current_revision(service.db_url) is None
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "control", "--pool", "solo"]
    worker = service.spawn("w1", [*argv, "-n", "w1@%h", "-l", "INFO", "--without-gossip", "--without-mingle"])
    url = service.start_api(via_cli=True)
    assert httpx.get(f"{url}/v1/runs", headers=auth()).status_code == 200
    wait_for(lambda: " ready." in service.log("w1") or worker.poll() is not None, 120, "the worker to start")
    assert worker.poll() is None, service.log("w1")
    assert db.current_revision(service.db_url) == db.head_revision()
