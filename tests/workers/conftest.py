"""Fixtures of the worker tests: a runtime on a fresh run store (SQLite and PostgreSQL), without Celery."""

from __future__ import annotations

import pytest
from service_fixtures import DatabaseFactory

from rlaif.service import state
from rlaif.service.db import get_engine, session_factory
from rlaif.store import ArtifactStore


@pytest.fixture(params=["sqlite", "postgresql"])
def rt(request: pytest.FixtureRequest, database_factory: DatabaseFactory, tmp_path) -> state.Runtime:
    """A runtime on a fresh database; short leases and requeue delay, so staleness can be tested in seconds."""
    return state.Runtime(
        sessions=session_factory(get_engine(database_factory.migrated(request.param))),
        store=ArtifactStore(tmp_path / "artifacts"),
        lease_ttl_s=2.0,
        heartbeat_s=0.2,
        requeue_after_s=5.0,
    )
