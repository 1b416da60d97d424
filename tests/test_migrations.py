"""The run store's schema has a revision (style guide 23): Alembic revisions in rlaif/service/migrations, on SQLite and
PostgreSQL. A fresh database is migrated to the newest revision; one made by the code before migrations
(`create_all`, no alembic_version) is recognised as 0001 and migrates in place; a pending revision is applied
to a database holding rows and keeps them; a database at a revision the code does not know is refused, with
`rlaif db upgrade` in the message (the API and a worker exit at start: tests/api/test_schema_revision.py).

    python -m pytest tests/test_migrations.py -q
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from service_fixtures import REPO, DatabaseFactory
from sqlalchemy import Engine, MetaData, insert, inspect, text

from rlaif.service import db

KINDS = ["sqlite", "postgresql"]


def _engine(url: str) -> Engine:
    return db.make_engine(url)


def _schema(engine: Engine) -> dict[str, Any]:
    """Every table's columns (name, type, nullable), primary key, unique constraints, indexes and foreign keys."""
    found = inspect(engine)
    out = {}
    for table in sorted(set(found.get_table_names()) - {"alembic_version"}):
        columns = [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)]
        uniques = sorted(tuple(u["column_names"]) for u in found.get_unique_constraints(table))
        indexes = sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in found.get_indexes(table))
        foreign = sorted((tuple(f["constrained_columns"]), f["referred_table"]) for f in found.get_foreign_keys(table))
        out[table] = (sorted(columns), found.get_pk_constraint(table)["constrained_columns"], uniques, indexes, foreign)
    return out


def _version(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(text("SELECT version_num FROM alembic_version")))


def _insert_rows(engine: Engine) -> None:
    """A constitution, prompt set, run, stage and event, written through the tables as the database has them
    (reflected, so this holds for any revision)."""
    tables = MetaData()
    tables.reflect(engine)
    now = db.utcnow().replace(tzinfo=None)
    with engine.begin() as connection:
        connection.execute(
            insert(tables.tables["constitutions"]),
            [dict(id="con-1", owner="alice", sha256="s", name="c", source="upload", document={"principles": []},
                  principles=0, created_at=now)],
        )  # fmt: skip
        connection.execute(
            insert(tables.tables["prompt_sets"]),
            [dict(id="ps-1", owner="alice", name="p", sha256="s", count=1, duplicates=0, items=[{"id": "a"}],
                  created_at=now)],
        )  # fmt: skip
        connection.execute(
            insert(tables.tables["runs"]),
            [dict(id="run-1", owner="alice", status="running", constitution_id="con-1", constitution_sha256="s",
                  prompt_set_id="ps-1", config_json='{"seed": 7}', train_prompts=1, eval_prompts=0, created_at=now)],
        )  # fmt: skip
        connection.execute(
            insert(tables.tables["stage_runs"]),
            [dict(run_id="run-1", name="critique", kind="critique", position=0, iteration=0,
                  task="generate.critique_shard", status="running", done=0, shards_total=1, shards_done=0,
                  attempts=1)],
        )  # fmt: skip
        connection.execute(
            insert(tables.tables["events"]),
            [dict(run_id="run-1", kind="message", level="info", message="run created", created_at=now)],
        )  # fmt: skip


def _rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as connection:
        return {
            "runs": list(connection.execute(text("SELECT id, status, config_json FROM runs"))),
            "stage_runs": list(connection.execute(text("SELECT run_id, name, status FROM stage_runs"))),
            "events": list(connection.execute(text("SELECT run_id, message FROM events"))),
            "constitutions": list(connection.execute(text("SELECT id, owner FROM constitutions"))),
        }


EXPECTED_ROWS = {
    "runs": [("run-1", "running", '{"seed": 7}')],
    "stage_runs": [("run-1", "critique", "running")],
    "events": [("run-1", "run created")],
    "constitutions": [("con-1", "alice")],
}


def _pre_migration_database(url: str) -> Engine:
    """A database as the code before migrations left it: the tables of revision 0001 and no alembic_version.
    (That code ran `Base.metadata.create_all`; test_a_fresh_database_is_migrated_to_head_matching_the_models shows
    the newest revision makes what create_all makes, and the newest is 0001.)"""
    db.upgrade(url, db.PRE_MIGRATION_REVISION)
    engine = _engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
    return engine


# ---------------------------------------------------------------- a fresh database


@pytest.mark.parametrize("kind", KINDS)
def test_a_fresh_database_is_migrated_to_head_matching_the_models(kind: str, database_factory: DatabaseFactory) -> None:
    url = database_factory.new(kind)
    assert db.current_revision(url) is None  # empty
    assert db.upgrade(url) == db.head_revision()
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, db.Base.metadata) == []  # the revisions make exactly the models
        assert _version(engine) == [db.head_revision()]
        # ... and exactly what create_all made before migrations (constraints, indexes, types, nullability).
        other = database_factory.new(kind)
        plain = _engine(other)
        db.Base.metadata.create_all(plain)
        assert _schema(engine) == _schema(plain)
        plain.dispose()
        assert db.upgrade(url) == db.head_revision()  # again: nothing to do
    finally:
        engine.dispose()


def test_the_pre_migration_tables_are_those_of_revision_0001(database_factory: DatabaseFactory) -> None:
    """PRE_MIGRATION_TABLES (how a database without a revision is recognised) lists exactly what 0001 makes."""
    url = database_factory.new("sqlite")
    db.upgrade(url, db.PRE_MIGRATION_REVISION)
    engine = _engine(url)
    found = inspect(engine)
    tables = {t: frozenset(c["name"] for c in found.get_columns(t)) for t in found.get_table_names()}
    engine.dispose()
    assert tables.pop("alembic_version") == {"version_num"}
    assert tables == db.PRE_MIGRATION_TABLES


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_start_check_gives_an_empty_database_the_schema(kind: str, database_factory: DatabaseFactory) -> None:
    """An engine (the API app's, a task's) checks the revision and creates nothing: an empty database is refused,
    naming the command. The explicit start-up check of `rlaif serve` and a worker (check_database) creates it."""
    url = database_factory.new(kind)
    with pytest.raises(db.SchemaError, match="has no schema yet: run `rlaif db upgrade`"):
        db.get_engine(url)
    assert db.current_revision(url) is None  # (refusing made no table)
    db.check_database(url)
    engine = db.get_engine(url)
    assert _version(engine) == [db.head_revision()]
    _insert_rows(engine)
    assert _rows(engine) == EXPECTED_ROWS


# A process that initialises the database at `url` once the file `go` exists (so both start together).
RACER = """
import sys, time
from pathlib import Path
from rlaif.service import db
url, go = sys.argv[1], Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
db.check_database(url)
print("ready", db.current_revision(url))
"""


@pytest.mark.parametrize("kind", KINDS)
def test_two_processes_initialising_a_fresh_database_at_once_do_not_race(
    kind: str, database_factory: DatabaseFactory, tmp_path: Path
) -> None:
    """Without the schema lock, the second `CREATE TABLE constitutions` fails ("already exists")."""
    url, go = database_factory.new(kind), tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, url, str(go)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(3)  # (both have imported rlaif.service.db and wait for the file)
    go.touch()
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert all(out.strip().endswith(f"ready {db.head_revision()}") for out in outputs), outputs
    engine = _engine(url)
    assert _version(engine) == [db.head_revision()]
    engine.dispose()


# ---------------------------------------------------------------- a database made before migrations


@pytest.mark.parametrize("kind", KINDS)
def test_a_pre_migration_database_is_recognised_and_upgraded_in_place(
    kind: str, database_factory: DatabaseFactory
) -> None:
    url = database_factory.new(kind)
    engine = _pre_migration_database(url)
    _insert_rows(engine)
    assert db.current_revision(url) == "0001"  # recognised, not changed
    assert "alembic_version" not in inspect(engine).get_table_names()
    assert db.upgrade(url) == db.head_revision()
    assert _version(engine) == [db.head_revision()]
    assert _rows(engine) == EXPECTED_ROWS
    engine.dispose()


@pytest.mark.parametrize("kind", KINDS)
def test_the_start_check_stamps_a_pre_migration_database(kind: str, database_factory: DatabaseFactory) -> None:
    """The API and workers at start record that a pre-migration database is at 0001; they run on it if 0001 is
    the newest revision, and otherwise refuse it with `rlaif db upgrade` (it has the pending revisions)."""
    url = database_factory.new(kind)
    engine = _pre_migration_database(url)
    _insert_rows(engine)
    try:
        db.check_database(url)
        assert db.head_revision() == "0001"
    except db.SchemaError as exc:
        assert "rlaif db upgrade" in str(exc) and "pending" in str(exc)
    assert _version(engine) == ["0001"]
    assert _rows(engine) == EXPECTED_ROWS
    engine.dispose()


@pytest.mark.parametrize("kind", KINDS)
def test_tables_that_are_not_rlaifs_are_refused(kind: str, database_factory: DatabaseFactory) -> None:
    url = database_factory.new(kind)
    engine = _pre_migration_database(url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE runs ADD COLUMN priority INTEGER"))
        connection.execute(text("DROP TABLE checkpoints"))
    for attempt in (lambda: db.check_database(url), lambda: db.upgrade(url), lambda: db.current_revision(url)):
        with pytest.raises(db.SchemaError, match="no schema revision") as caught:
            attempt()
        assert "table checkpoints is missing" in str(caught.value) and "runs.priority is unknown" in str(caught.value)
    assert "alembic_version" not in inspect(engine).get_table_names()  # nothing was stamped
    engine.dispose()


# ---------------------------------------------------------------- unknown and pending revisions


@pytest.mark.parametrize("kind", KINDS)
def test_a_database_at_an_unknown_revision_is_refused(kind: str, database_factory: DatabaseFactory) -> None:
    url = database_factory.new(kind)
    db.upgrade(url)
    engine = _engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    with pytest.raises(db.SchemaError) as caught:
        db.check_database(url)
    message = str(caught.value)
    assert "revision f00d" in message and "does not know" in message and "rlaif db upgrade" in message
    with pytest.raises(db.SchemaError, match="does not know"):
        db.upgrade(url)  # nothing to migrate to: a newer rlaif wrote it
    with pytest.raises(db.SchemaError, match="does not know"):
        db.get_engine(url)
    assert _version(engine) == ["f00d"]
    engine.dispose()


def _next_revision(head: str) -> str:
    return f"{int(head) + 1:04d}"


# A throwaway revision after the newest: a column with a default on `runs` and a new table. On SQLite, `runs`
# is copied to a new table, dropped and renamed (what a batch migration does for most changes there) while
# stage_runs and events rows reference it, so the copy keeps rows and foreign keys.
THROWAWAY = '''"""Test only: add runs.priority and a table."""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    recreate = "always" if op.get_bind().dialect.name == "sqlite" else "auto"
    with op.batch_alter_table("runs", recreate=recreate) as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="5"))
    op.create_table("labels", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("name", sa.String(64)))
    {extra}


def downgrade() -> None:
    op.drop_table("labels")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("priority")
'''


def _migrations_with_throwaway(tmp_path: Path, fail: bool = False) -> Path:
    folder = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    head = db.head_revision()
    revision = _next_revision(head)
    extra = 'raise RuntimeError("this revision fails half way")' if fail else "pass"
    code = THROWAWAY.format(revision=revision, down=head, extra=extra)
    (folder / "versions" / f"{revision}_throwaway.py").write_text(code)
    return folder


@pytest.mark.parametrize("kind", KINDS)
def test_upgrade_applies_a_pending_revision_and_keeps_the_rows(
    kind: str, database_factory: DatabaseFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = database_factory.new(kind)
    db.upgrade(url)
    engine = _engine(url)
    _insert_rows(engine)
    old_head = db.head_revision()
    monkeypatch.setattr(db, "MIGRATIONS", _migrations_with_throwaway(tmp_path))
    new_head = db.head_revision()
    assert new_head == _next_revision(old_head)

    # The code now needs the new revision: the start check refuses, naming what is pending and the command.
    with pytest.raises(db.SchemaError) as caught:
        db.check_database(url)
    message = str(caught.value)
    assert f"revision {old_head}" in message and f"pending: {new_head}" in message and "rlaif db upgrade" in message
    assert _version(engine) == [old_head]  # refusing changed nothing

    assert db.upgrade(url) == new_head
    assert _version(engine) == [new_head]
    assert _rows(engine) == EXPECTED_ROWS
    with engine.connect() as connection:
        assert list(connection.execute(text("SELECT id, priority FROM runs"))) == [("run-1", 5)]
        assert connection.execute(text("SELECT count(*) FROM labels")).scalar() == 0
    found = inspect(engine)
    assert {"ix_runs_owner"} <= {i["name"] for i in found.get_indexes("runs")}  # (the copy kept the index)
    assert {f["referred_table"] for f in found.get_foreign_keys("events")} == {"runs"}
    db.check_database(url)  # starts now
    engine.dispose()


@pytest.mark.parametrize("kind", KINDS)
def test_a_revision_that_fails_leaves_the_database_as_it_was(
    kind: str, database_factory: DatabaseFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migrations run in the schema lock's one transaction: a failure half way rolls all of it back."""
    url = database_factory.new(kind)
    db.upgrade(url)
    engine = _engine(url)
    _insert_rows(engine)
    old_head = db.head_revision()
    monkeypatch.setattr(db, "MIGRATIONS", _migrations_with_throwaway(tmp_path, fail=True))
    with pytest.raises(RuntimeError, match="fails half way"):
        db.upgrade(url)
    assert _version(engine) == [old_head]
    assert _rows(engine) == EXPECTED_ROWS
    found = inspect(engine)
    assert "labels" not in found.get_table_names()
    assert "priority" not in {c["name"] for c in found.get_columns("runs")}
    engine.dispose()


# ---------------------------------------------------------------- the command line


def test_db_commands(tmp_path: Path) -> None:
    """`rlaif db current` / `rlaif db upgrade` on RLAIF_DATABASE_URL: what each says, and its exit status."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "RLAIF_DATABASE_URL": url, "RLAIF_HOME": str(tmp_path / "home"), "COLUMNS": "300"}

    def rlaif(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "rlaif", "db", *args]
        return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    head = db.head_revision()
    first = rlaif("current")
    assert first.returncode == 0 and "no database yet" in first.stdout, first
    assert not (tmp_path / "cli.db").exists()  # looking created nothing
    upgraded = rlaif("upgrade")
    assert upgraded.returncode == 0 and f"upgraded from (empty) to {head}" in upgraded.stdout, upgraded
    again = rlaif("upgrade")
    assert again.returncode == 0 and f"already at revision {head}" in again.stdout, again
    current = rlaif("current")
    assert current.returncode == 0 and f"revision: {head}" in current.stdout and "up to date" in current.stdout
    engine = _engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    engine.dispose()
    for args in (("current",), ("upgrade",)):
        refused = rlaif(*args)
        assert refused.returncode == 1 and "revision f00d" in refused.stderr, refused
        assert "rlaif db upgrade" in refused.stderr
