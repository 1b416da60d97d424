"""The run store: SQLAlchemy 2.0 models of constitutions, prompt sets, runs, stages, shards, items, events, checkpoints.

SQLite by default (`settings.db_url`, WAL mode, a busy timeout and `BEGIN IMMEDIATE`, so the API and several
worker processes can share one file), PostgreSQL by URL (`postgresql+psycopg2://...`). Rows that belong to
an API key carry its `owner`. Time stamps are stored as naive UTC and read back as aware UTC on both databases.

Idempotency lives here: an item is `UNIQUE(run_id, stage, item_id)` and written with "insert, ignore if present",
so a redelivered shard never duplicates work; a shard is `UNIQUE(stage_run_id, index)`.

    python -c "from rlaif.db import init_db, make_engine; init_db(make_engine('sqlite:///rlaif.db'))"
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
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
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

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
            raise ValueError("naive datetime given to a UTC column; use rlaif.db.utcnow()")
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


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    constitution_id: Mapped[str] = mapped_column(ForeignKey("constitutions.id"))
    constitution_sha256: Mapped[str] = mapped_column(String(64))
    prompt_set_id: Mapped[str] = mapped_column(ForeignKey("prompt_sets.id"))
    config_json: Mapped[str] = mapped_column(
        Text, doc="RunConfig as JSON; workers re-read it with model_validate_json."
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
    """A per-process engine for `url` (default: settings.db_url), tables created on first use.

    Keyed by the process id too: a Celery prefork child must not share its parent's connections.
    """
    if url is None:
        from rlaif.settings import settings

        url = settings.db_url
    key = (os.getpid(), url)
    if key not in _ENGINES:
        engine = make_engine(url)
        init_db(engine)
        _ENGINES[key] = engine
    return _ENGINES[key]


def init_db(engine: Engine) -> None:
    """Create missing tables. On PostgreSQL an advisory lock keeps concurrent starters from racing."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(724201)"))
            Base.metadata.create_all(connection)
    else:
        Base.metadata.create_all(engine)


def session_factory(engine: Engine, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions on `engine`; `read_only` ones never take SQLite's write lock (they must not write)."""
    bind = engine.execution_options(read_only=True) if read_only else engine
    return sessionmaker(bind, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any exception."""
    with factory.begin() as session:
        yield session


def insert_ignore(session: Session, model: type[Base], rows: list[dict[str, Any]], unique: list[str]) -> int:
    """INSERT rows, skipping those that collide on the `unique` columns; returns how many were inserted."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    build = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = build(model).values(rows).on_conflict_do_nothing(index_elements=unique)
    return session.execute(statement).rowcount or 0
