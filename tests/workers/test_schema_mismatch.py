"""A database whose schema is not the code's (a column missing) fails a task fast, with `rlaif db upgrade` in the
reason, instead of retrying forever as a transient error (SQLite reports it as an OperationalError, like a locked
file); and recording that failure, which hits the same missing column, still marks the run failed and ends the
task. Stored run configs without a version (every one before versions) or of an older version are upgraded on
read by the workers. On SQLite and PostgreSQL.

    python -m pytest tests/workers/test_schema_mismatch.py -q
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import pytest
import sqlalchemy.exc
from service_fixtures import Service, make_run, wait_for
from sqlalchemy import text

from rlaif import config
from rlaif.service import execute, state
from rlaif.service.db import RunRow, is_schema_mismatch, schema_mismatch_reason


def _drop_column(rt: state.Runtime) -> None:
    """What a database migrated by a newer rlaif (or not yet by this one) looks like to this code."""
    with rt.sessions.begin() as session:
        session.execute(text("ALTER TABLE stage_runs DROP COLUMN requeued_at"))


def _run(rt: state.Runtime, run_id: str) -> tuple[str, str | None]:
    with rt.sessions() as session:
        run = session.get(RunRow, run_id)
        assert run is not None
        return run.status, run.error


def test_a_missing_column_is_a_schema_mismatch_and_a_locked_file_is_not(rt: state.Runtime) -> None:
    run_id = make_run(rt)
    _drop_column(rt)
    with pytest.raises(sqlalchemy.exc.DBAPIError) as caught:
        state.fail(rt, run_id, None, "anything")  # reads stage_runs, so it fails on the missing column too
    assert is_schema_mismatch(caught.value)
    assert "requeued_at" in schema_mismatch_reason(caught.value)
    assert "rlaif db upgrade" in schema_mismatch_reason(caught.value)
    locked = sqlalchemy.exc.OperationalError("UPDATE runs", {}, sqlite3.OperationalError("database is locked"))
    assert not is_schema_mismatch(locked)  # transient: retried


def test_recording_a_failure_on_a_mismatched_schema_still_fails_the_run(
    rt: state.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import policy

    run_id = make_run(rt)
    _drop_column(rt)
    monkeypatch.setattr(policy, "runtime", lambda: rt)
    policy.record_failure(run_id, "critique", "the reason")  # state.fail raises inside; this does not
    assert _run(rt, run_id) == ("failed", "the reason")
    policy.record_failure(run_id, "critique", "again")  # a run that already failed keeps its reason
    assert _run(rt, run_id) == ("failed", "the reason")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_worker_fails_a_run_fast_on_a_missing_column(kind: str, make_service: Callable[..., Service]) -> None:
    """The run used to stay "running" forever: the task retried the OperationalError, then state.fail raised it."""
    from workers.app import create_celery

    service = make_service(kind)
    rt = state.Runtime.from_settings(service.settings())
    run_id = make_run(rt)
    service.start_worker("w1", queues="control")
    _drop_column(rt)  # (after the worker's start check, which looks at the revision only)
    create_celery(service.settings()).send_task(state.ADVANCE, args=[run_id])
    wait_for(lambda: _run(rt, run_id)[0] == "failed", 60, "the run to fail")
    _, error = _run(rt, run_id)
    assert error is not None and "requeued_at" in error and "rlaif db upgrade" in error, error
    assert "transient error, retry" not in service.log("w1")


# ---------------------------------------------------------------- stored configs carry a version


def _store_config(rt: state.Runtime, run_id: str, edit: Callable[[dict], dict]) -> None:
    with rt.sessions.begin() as session:
        row = session.get(RunRow, run_id)
        assert row is not None
        row.config_json = json.dumps(edit(json.loads(row.config_json)))


def test_a_run_stores_its_config_with_its_version(rt: state.Runtime) -> None:
    run_id = make_run(rt)
    with rt.sessions() as session:
        row = session.get(RunRow, run_id)
        assert row is not None and json.loads(row.config_json)["config_version"] == config.CONFIG_VERSION
    pinned = rt.store.path(run_id, "inputs", "config.json").read_text(encoding="utf-8")
    assert json.loads(pinned)["config_version"] == config.CONFIG_VERSION


def test_workers_read_a_config_stored_before_versions(rt: state.Runtime) -> None:
    run_id = make_run(rt, {"seed": 11})
    _store_config(rt, run_id, lambda raw: {k: v for k, v in raw.items() if k != "config_version"})  # version 0
    ctx = execute.stage_context(rt, run_id, "critique")
    assert (ctx.cfg.config_version, ctx.cfg.seed) == (config.CONFIG_VERSION, 11)


def test_workers_read_a_config_stored_under_a_renamed_field(rt: state.Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Had version 1 renamed ppo.old_kl to ppo.kl_coef, the step 0 -> 1 would be that rename: a run stored under
    the old name (and no version) still runs, with its value."""
    run_id = make_run(rt, {"ppo": {"kl_coef": 0.25}})

    def as_stored_by_version_0(raw: dict) -> dict:
        ppo = {("old_kl" if k == "kl_coef" else k): v for k, v in raw["ppo"].items()}
        return {**{k: v for k, v in raw.items() if k != "config_version"}, "ppo": ppo}

    _store_config(rt, run_id, as_stored_by_version_0)
    with pytest.raises(ValueError, match="old_kl"):
        execute.stage_context(rt, run_id, "critique")  # (extra="forbid": without the step it cannot be read)
    monkeypatch.setitem(config.CONFIG_STEPS, 0, config.rename_field("ppo.old_kl", "ppo.kl_coef"))
    ctx = execute.stage_context(rt, run_id, "critique")
    assert (ctx.cfg.config_version, ctx.cfg.ppo.kl_coef) == (config.CONFIG_VERSION, 0.25)
