"""The run store: SQLAlchemy 2.0 models of constitutions, prompt sets, runs, stages, shards, items, events, checkpoints.

SQLite by default (`settings.db_url`, WAL mode, a busy timeout and `BEGIN IMMEDIATE`, so the API and several
worker processes can share one file), PostgreSQL by URL (`postgresql+psycopg2://...`). Rows that belong to
an API key carry its `owner`. Time stamps are stored as naive UTC and read back as aware UTC on both databases.

Idempotency lives here: an item is `UNIQUE(run_id, stage, item_id)` and written with "insert, ignore if present",
so a redelivered shard never duplicates work; a shard is `UNIQUE(stage_run_id, index)`.

The schema changes only through Alembic revisions (rlaif/service/migrations, style guide 23), and tables are made only
by them: `rlaif db upgrade` (`upgrade`), or the explicit start-up check of `rlaif serve` and of a worker
(`check_database`, `prepare_schema`), which gives an empty database the schema. Everything else only checks:
`get_engine` (the engine of the API app and of every task) refuses a database at another revision than the
newest, an empty one included, with the command that fixes it, and creates nothing.

    rlaif db upgrade        # or: python -c "from rlaif.service.db import upgrade; print(upgrade('sqlite:///rlaif.service.db'))"
    rlaif db current
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

log = logging.getLogger(__name__)

logging.getLogger("alembic.runtime").setLevel(logging.WARNING)  # (lines per check; ours say what changed)

SHIPPED_OWNER = "shipped"

# Run and stage life cycles (strings in the database; the API returns them as they are).
QUEUED, PENDING, RUNNING, COMPLETING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "pending",
    "running",
    "completing",
    "succeeded",
    "failed",
    "cancelled",
)
DONE = "done"  # a shard's final status
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A short random id that is also a safe artifact folder name ("run-3f9a0c1d2b4e5f60")."""
    return f"{prefix}-{secrets.token_hex(8)}"


class UTCDateTime(TypeDecorator[datetime]):
    """Naive UTC in the database (identical on SQLite and PostgreSQL), aware UTC in Python."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use rlaif.service.db.utcnow()")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON(none_as_null=True),
        list[Any]: JSON(none_as_null=True),
    }


class ConstitutionRow(Base):
    """One version of a constitution: versions are keyed by the content SHA-256, per owner."""

    __tablename__ = "constitutions"
    __table_args__ = (UniqueConstraint("owner", "sha256"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(512), doc="'upload' or the shipped file's name.")
    document: Mapped[dict[str, Any]] = mapped_column(doc="The validated constitution as JSON.")
    principles: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PromptSetRow(Base):
    __tablename__ = "prompt_sets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(256))
    sha256: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer)
    duplicates: Mapped[int] = mapped_column(Integer, doc="Prompts dropped as duplicates at upload.")
    items: Mapped[list[Any]] = mapped_column(doc="[{id, prompt}, ...] in upload order.")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PreferenceSetRow(Base):
    """Human comparisons {prompt, chosen, rejected} (rlaif/preference_sets.py) for the hybrid preference model."""

    __tablename__ = "preference_sets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(256))
    sha256: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer)
    duplicates: Mapped[int] = mapped_column(Integer, doc="Pairs dropped as duplicates at upload.")
    items: Mapped[list[Any]] = mapped_column(doc="[{id, prompt, chosen, rejected}, ...] in upload order.")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    constitution_id: Mapped[str] = mapped_column(ForeignKey("constitutions.id"))
    constitution_sha256: Mapped[str] = mapped_column(String(64))
    prompt_set_id: Mapped[str] = mapped_column(ForeignKey("prompt_sets.id"))
    preference_set_id: Mapped[str | None] = mapped_column(
        ForeignKey("preference_sets.id"), default=None, doc="Human pairs the reward model also trains on (or none)."
    )
    config_json: Mapped[str] = mapped_column(
        Text, doc="RunConfig as JSON, with its config_version; read back with rlaif.config.stored_run_config."
    )
    train_prompts: Mapped[int] = mapped_column(Integer)
    eval_prompts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class StageRunRow(Base):
    """One stage of a run. Training stages hold their lease here; sharded stages count their shards here."""

    __tablename__ = "stage_runs"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)
    iteration: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(64), doc="Celery task name; its prefix is the queue.")
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int | None] = mapped_column(Integer, default=None)
    shards_total: Mapped[int] = mapped_column(Integer, default=0)
    shards_done: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(256), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    requeued_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None, doc="The StageResult as JSON.")


class ShardRow(Base):
    __tablename__ = "shards"
    __table_args__ = (UniqueConstraint("stage_run_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stage_run_id: Mapped[int] = mapped_column(ForeignKey("stage_runs.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    lease_owner: Mapped[str | None] = mapped_column(String(256), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    requeued_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class ItemRow(Base):
    """One output record of a sharded stage, written exactly once."""

    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("run_id", "stage", "item_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    stage: Mapped[str] = mapped_column(String(64))
    item_id: Mapped[str] = mapped_column(String(256))
    payload: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EventRow(Base):
    """A typed event of a run: a log `message` or a step's `metrics`."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    stage: Mapped[str | None] = mapped_column(String(64), default=None)
    kind: Mapped[str] = mapped_column(String(16), doc="'message' or 'metrics'.")
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text, default="")
    step: Mapped[int | None] = mapped_column(Integer, default=None)
    data: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CheckpointRow(Base):
    """A downloadable Hugging Face folder written by a training stage, with its manifest's files."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "stage", "step"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    stage: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024), doc="Folder relative to the artifact root.")
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    files: Mapped[dict[str, Any]] = mapped_column(doc="{relative path: {sha256, bytes}} from the folder's manifest.")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------- engines and sessions


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE transactions."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below (pysqlite's own BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get("read_only"):
            # A reader in WAL mode reads a snapshot and never waits for the writer: readers (the API's GETs)
            # must not queue for the write lock, or they sleep in SQLite's busy handler (seconds at the tail).
            connection.exec_driver_sql("BEGIN")
            return
        # Take the write lock up front: a deferred transaction that later upgrades to a writer can fail with
        # "database is locked" at once, whatever the busy timeout, when another process is writing.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_ENGINES: dict[tuple[int, str], Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    """A per-process engine for `url` (default: settings.db_url), its revision checked on first use
    (`check_revision`: SchemaError unless the database is at the newest revision; an empty one is not given the
    schema here).

    Keyed by the process id too: a Celery prefork child must not share its parent's connections.
    """
    if url is None:
        from rlaif.settings import settings

        url = settings.db_url
    key = (os.getpid(), url)
    if key not in _ENGINES:
        engine = make_engine(url)
        try:
            check_revision(engine)
        except BaseException:
            engine.dispose()
            raise
        _ENGINES[key] = engine
    return _ENGINES[key]


# ---------------------------------------------------------------- schema revisions (Alembic, rlaif/service/migrations)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
UPGRADE_COMMAND = "rlaif db upgrade"
SCHEMA_LOCK_KEY = 724201  # PostgreSQL advisory lock of schema changes (any constant; the same in every process)

# What the code before migrations made with `create_all`: a database with exactly these tables and columns and
# no alembic_version table is at revision 0001 (tests/test_migrations.py checks that 0001 makes the same).
PRE_MIGRATION_REVISION = "0001"
_PRE_MIGRATION_COLUMNS = {
    "constitutions": "id owner sha256 name source document principles created_at",
    "prompt_sets": "id owner name sha256 count duplicates items created_at",
    "runs": "id owner status constitution_id constitution_sha256 prompt_set_id config_json train_prompts "
    "eval_prompts error created_at started_at finished_at",
    "stage_runs": "id run_id name kind position iteration task status done total shards_total shards_done "
    "lease_owner heartbeat_at requeued_at attempts started_at finished_at error result",
    "shards": "id stage_run_id index size status lease_owner heartbeat_at requeued_at attempts started_at finished_at",
    "items": "id run_id stage item_id payload created_at",
    "events": "id run_id stage kind level message step data created_at",
    "checkpoints": "id run_id owner stage step path metrics files created_at",
}
PRE_MIGRATION_TABLES = {table: frozenset(columns.split()) for table, columns in _PRE_MIGRATION_COLUMNS.items()}


class SchemaError(RuntimeError):
    """The database is at a schema revision this code does not run on; the message names the command to run."""


# A query on a table or column the database lacks: SQLite's messages, PostgreSQL's undefined_table/_column codes.
_MISSING_SQLITE = ("no such table", "no such column", "has no column named")
_MISSING_POSTGRES = ("42P01", "42703")


def is_schema_mismatch(exc: BaseException) -> bool:
    """Whether `exc` says the database's schema is not the one of this code (a table or column is missing, or
    the revision check refused it): nothing a retry fixes, unlike a dropped connection or a locked file."""
    if isinstance(exc, SchemaError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if getattr(exc.orig, "pgcode", None) in _MISSING_POSTGRES:
        return True
    message = str(exc.orig).lower()
    return any(part in message for part in _MISSING_SQLITE)


def schema_mismatch_reason(exc: BaseException) -> str:
    """A readable reason for `is_schema_mismatch` errors, naming the command that fixes it."""
    if isinstance(exc, SchemaError):
        return str(exc)
    detail = str(exc.orig if isinstance(exc, DBAPIError) else exc).strip().splitlines()[0]
    return (
        f"the database schema is not the one of this version of rlaif ({detail}): run `{UPGRADE_COMMAND}` and "
        "restart the API and the workers (or, if a newer rlaif migrated the database, upgrade this worker)"
    )


def alembic_config(connection: Connection | None = None) -> Config:
    """The Alembic configuration of rlaif/service/migrations (no alembic.ini), bound to `connection` for env.py."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows (what `rlaif db upgrade` migrates to)."""
    head = _scripts().get_current_head()
    assert head is not None, f"no revisions in {MIGRATIONS / 'versions'}"
    return head


@contextmanager
def schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction that holds the database's schema lock, so processes starting together
    check, create or migrate the schema one after the other: an advisory lock on PostgreSQL, the write lock on
    SQLite (make_engine's BEGIN IMMEDIATE). Committed on success, rolled back on any exception.

    On SQLite, foreign keys are not enforced inside it: a batch migration copies a table, drops the original and
    renames the copy, and dropping a table that other rows reference would fail (the pragma can only change
    outside a transaction). Every foreign key is checked before the commit instead."""
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                yield connection
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all() if sqlite else []
                if broken:
                    raise SchemaError(f"a migration left rows whose foreign key points nowhere: {broken[:5]}")
        finally:
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


def _pre_migration_problems(connection: Connection, tables: set[str]) -> list[str]:
    """How a database without a revision differs from what the code before migrations made (empty: it matches)."""
    problems = [f"table {name} is missing" for name in sorted(set(PRE_MIGRATION_TABLES) - tables)]
    found = inspect(connection)
    for name in sorted(set(PRE_MIGRATION_TABLES) & tables):
        columns = {column["name"] for column in found.get_columns(name)}
        expected = PRE_MIGRATION_TABLES[name]
        problems += [f"{name}.{column} is missing" for column in sorted(expected - columns)]
        problems += [f"{name}.{column} is unknown" for column in sorted(columns - expected)]
    return problems


def database_revision(connection: Connection) -> str | None:
    """The database's revision: its alembic_version, PRE_MIGRATION_REVISION for a database the code before
    migrations made (not stamped yet), None for an empty one. Raises SchemaError for tables that are neither."""
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" in tables:
        return MigrationContext.configure(connection).get_current_revision()
    if not tables:
        return None
    problems = _pre_migration_problems(connection, tables)
    if problems:
        raise SchemaError(
            f"the database at {_shown(connection)} has tables but no schema revision, and they are not those of "
            f"rlaif before migrations: {'; '.join(problems)}. Point RLAIF_DATABASE_URL at an rlaif database "
            "or an empty one"
        )
    return PRE_MIGRATION_REVISION


def _shown(connection: Connection) -> str:
    return connection.engine.url.render_as_string(hide_password=True)


def _stamp_pre_migration(connection: Connection) -> str | None:
    """The database's revision, after recording PRE_MIGRATION_REVISION in a database the old code made."""
    revision = database_revision(connection)
    if revision == PRE_MIGRATION_REVISION and "alembic_version" not in inspect(connection).get_table_names():
        command.stamp(alembic_config(connection), PRE_MIGRATION_REVISION)
        log.info("stamped the pre-migration database at %s as revision %s", _shown(connection), revision)
    return revision


def revision_problem(revision: str | None, where: str) -> str | None:
    """Why a database at `revision` cannot be used by this code (None: it is at the head), with the fix."""
    head = head_revision()
    if revision == head:
        return None
    scripts = _scripts()
    if revision is None:
        return f"the database at {where} has no schema yet: run `{UPGRADE_COMMAND}`"
    if revision not in {script.revision for script in scripts.walk_revisions()}:
        return (
            f"the database at {where} is at schema revision {revision}, which this version of rlaif does not know "
            f"(its newest is {head}): a newer rlaif migrated it. Install that version here; `{UPGRADE_COMMAND}` "
            "only moves a database forward, to the revisions the installed rlaif knows"
        )
    pending = [script.revision for script in scripts.iterate_revisions(head, revision)][::-1]
    return (
        f"the database at {where} is at schema revision {revision} and this version of rlaif needs {head} "
        f"(pending: {', '.join(pending)}): run `{UPGRADE_COMMAND}` (with RLAIF_DATABASE_URL set to this database)"
    )


def check_revision(engine: Engine) -> None:
    """SchemaError (naming `rlaif db upgrade`) unless the database is at the newest revision; reads only, so an
    app or a task never changes the schema: an empty database is refused like an old one."""
    with engine.execution_options(read_only=True).connect() as connection:
        revision = database_revision(connection)
        where = _shown(connection)
    problem = revision_problem(revision, where)
    if problem is not None:
        raise SchemaError(problem)


def prepare_schema(engine: Engine) -> None:
    """The explicit start-up check (`rlaif serve`, a worker's start, `rlaif demo`), under the schema lock: an empty
    database gets the schema (an upgrade to the newest revision), one made by the code before migrations is
    stamped 0001, and a database at any other revision than the newest raises SchemaError naming `rlaif db
    upgrade` (nothing is migrated behind the operator's back: a migration of a database holding runs is theirs
    to start)."""
    with schema_lock(engine) as connection:
        revision = _stamp_pre_migration(connection)
        if revision is None:
            command.upgrade(alembic_config(connection), "head")
            revision = head_revision()
            log.info("created the schema of %s at revision %s", _shown(connection), revision)
        where = _shown(connection)
    problem = revision_problem(revision, where)
    if problem is not None:
        raise SchemaError(problem)


def check_database(url: str) -> None:
    """`prepare_schema` on an engine of its own, closed after: a process about to fork (a Celery worker's main
    process) checks the database without keeping connections its children would inherit."""
    engine = make_engine(url)
    try:
        prepare_schema(engine)
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> str | None:
    """Migrate the database at `url` to `revision` (default: the newest), under the schema lock; a database the
    code before migrations made is stamped 0001 first, so it migrates in place. Returns the revision it is at.

        rlaif db upgrade        # the same, on RLAIF_DATABASE_URL
    """
    engine = make_engine(url)
    try:
        with schema_lock(engine) as connection:
            current = _stamp_pre_migration(connection)
            if current is not None and current not in {s.revision for s in _scripts().walk_revisions()}:
                raise SchemaError(revision_problem(current, _shown(connection)) or "")
            command.upgrade(alembic_config(connection), revision)
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The revision of the database at `url` (None: empty), without changing anything."""
    engine = make_engine(url)
    try:
        with engine.execution_options(read_only=True).connect() as connection:
            return database_revision(connection)
    finally:
        engine.dispose()


def session_factory(engine: Engine, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions on `engine`; `read_only` ones never take SQLite's write lock (they must not write)."""
    bind = engine.execution_options(read_only=True) if read_only else engine
    return sessionmaker(bind, expire_on_commit=False)


def insert_ignore(session: Session, model: type[Base], rows: list[dict[str, Any]], unique: list[str]) -> int:
    """INSERT rows, skipping those that collide on the `unique` columns; returns how many were inserted."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    build = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = build(model).values(rows).on_conflict_do_nothing(index_elements=unique)
    return session.execute(statement).rowcount or 0
