"""Fixtures of the service tests (API, workers, end to end): real Redis, real databases, real worker processes.

- `redis_server`: a private redis-server on a free port (session); `.restart()` for tests that need it.
- `silent_broker`: a TCP server that accepts connections and never answers (a broker that hangs, not one that is down).
- `database_factory`: fresh databases, SQLite files or PostgreSQL databases created on the server at
  RLAIF_TEST_POSTGRES_URL (default postgresql+psycopg2://postgres@127.0.0.1:5432/test) and dropped at the end:
  `.new(kind)` an empty one, `.migrated(kind)` one at the newest schema revision (as `rlaif db upgrade` leaves it).
- `make_service(kind)`: a `Service` = its own database (migrated; `schema=False`: empty), Redis db number, artifact
  root and home, with the Settings for an in-process API and the environment for subprocesses (API, workers, CLI).
- `Service.start_worker(...)`: `celery -A workers.app worker --pool solo` subprocess; every process a test starts
  is killed (its whole process group) at teardown, also when the test fails.

Registered as a plugin in tests/conftest.py, so tests/api, tests/workers and tests/test_end_to_end.py share one
Redis server and one PostgreSQL admin connection per session.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("RLAIF_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-9876543210"}

# Service timings for tests: a dead worker's lease lapses after 4 s and the sweep runs every 2 s.
TEST_TIMINGS = {"lease_ttl_s": 4.0, "heartbeat_s": 1.0, "visibility_timeout_s": 30, "sweep_interval_s": 2.0}

# A whole run on tiny-random-llama in well under a minute of compute (shards of 3 prompts).
TINY_RUN = {
    "policy_model": "tiny-random-llama",
    "shard_size": 3,
    "eval": {
        "holdout_fraction": 0.25,
        "sampling": {"max_new_tokens": 8},
        "principles_per_pair": 1,
        "bootstrap_resamples": 100,
        "samples_in_report": 2,
    },
    "critique": {"rounds": 1, "batch_size": 4, "sampling": {"max_new_tokens": 8}},
    "sft": {"batch_size": 2, "micro_batch_size": 2, "max_length": 128, "checkpoint_every": 1},
    "pairs": {"sampling": {"max_new_tokens": 8}},
    "judge": {"batch_size": 8, "dtype": "float32"},
    "reward_model": {"batch_size": 2, "micro_batch_size": 2, "max_length": 128, "checkpoint_every": 1},
    "ppo": {
        "total_episodes": 8,
        "prompts_per_step": 4,
        "num_minibatches": 2,
        "micro_batch_size": 2,
        "ppo_epochs": 1,
        "response_length": 8,
        "checkpoint_every": 1,
    },
}


def auth(owner: str = "alice") -> dict[str, str]:
    """Authorization header of a test API key."""
    return {"Authorization": f"Bearer {KEYS[owner]}"}


def error_of(response: Any) -> tuple[int, str, list[str]]:
    """(status, detail, errors) of an API error answer."""
    body = response.json()
    return response.status_code, body["detail"], body["errors"]


def v1_routes(app: Any) -> list[tuple[str, str]]:
    """(METHOD, path) of every /v1 operation in the app's OpenAPI schema, path parameters filled with ids that
    exist nowhere (and `config.json` for a checkpoint file)."""
    out = []
    for path, item in app.openapi()["paths"].items():
        if path.startswith("/v1/"):
            filled = path.replace("{path}", "config.json")
            for name in ("run_id", "checkpoint_id", "constitution_id", "prompt_set_id", "preference_set_id"):
                filled = filled.replace("{" + name + "}", "x-0000000000000000")
            out += [(method.upper(), filled) for method in item]
    return out


def register_checkpoint(service: Service, run_id: str, stage: str = "sft", owner: str = "alice") -> str:
    """A small model folder (config.json, manifest) under the run, registered as its `stage` checkpoint, as a
    training task records one; the checkpoint id."""
    from rlaif.service.db import CheckpointRow, get_engine, new_id, session_factory
    from rlaif.store import write_manifest

    folder = service.artifacts / "runs" / run_id / stage / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    manifest = write_manifest(folder)
    checkpoint_id = new_id("ckpt")
    with session_factory(get_engine(service.db_url)).begin() as session:
        session.add(
            CheckpointRow(
                id=checkpoint_id, run_id=run_id, owner=owner, stage=stage, step=1,
                path=folder.relative_to(service.artifacts).as_posix(), metrics={}, files=manifest["files"],
            )
        )  # fmt: skip
    return checkpoint_id


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Signal the process and everything it started (it runs in its own session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until `condition()` is truthy; its value, or an AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- redis


class RedisServer:
    """A redis-server of our own (no persistence), so tests can stop and restart it."""

    def __init__(self, folder: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: the service tests need it (apt-get install redis-server)"
            )
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        import redis

        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen([*argv, "--dir", str(self.folder)], stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, 20, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


class SilentServer:
    """A TCP server that accepts every connection and never sends a byte: a broker that hangs (a stalled host,
    a half-open connection behind a NAT), where a refused connection would fail at once."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.sock.settimeout(0.2)  # (so the accept loop sees `stop`)
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, name="silent-broker", daemon=True)
        self.thread.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections.append(connection)  # held open, read from never

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for connection in [*self.connections, self.sock]:
            connection.close()


@pytest.fixture
def silent_broker() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


# ---------------------------------------------------------------- databases


class DatabaseFactory:
    """Fresh SQLite files or PostgreSQL databases, dropped at the end of the session."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.created: list[str] = []
        self._admin: Any = None

    def _postgres_admin(self) -> Any:
        if self._admin is None:
            from sqlalchemy import create_engine

            engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
            try:
                engine.connect().close()
            except Exception as exc:
                raise RuntimeError(
                    f"PostgreSQL is not reachable at {POSTGRES_URL} (set RLAIF_TEST_POSTGRES_URL): {exc}"
                ) from exc
            self._admin = engine
        return self._admin

    def new(self, kind: str) -> str:
        name = f"rlaif_test_{secrets.token_hex(4)}"
        if kind == "sqlite":
            return f"sqlite:///{self.folder / name}.db"
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        with self._postgres_admin().connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)

    def migrated(self, kind: str) -> str:
        """A fresh database at the newest schema revision: what the API app and a task's engine need (they check
        the revision and create no tables), made the operator's way, by the migrations."""
        from rlaif.service import db

        url = self.new(kind)
        db.upgrade(url)
        return url

    def drop_all(self) -> None:
        if self._admin is None:
            return
        from sqlalchemy import text

        from rlaif.service import db

        for engine in db._ENGINES.values():  # our own pooled connections to the test databases
            engine.dispose()
        with self._admin.connect() as connection:
            for name in self.created:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self._admin.dispose()


@pytest.fixture(scope="session")
def database_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(tmp_path_factory.mktemp("databases"))
    yield factory
    factory.drop_all()


# ---------------------------------------------------------------- a service


@dataclass
class Service:
    """One isolated service: database, Redis db, artifact root, home; and the processes started for it."""

    root: Path
    db_url: str
    broker_url: str
    extra_settings: dict[str, Any] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def constitutions_dir(self) -> Path:
        return self.root / "constitutions"

    def settings_fields(self) -> dict[str, Any]:
        from rlaif.settings import settings as current

        return {
            "home": self.home,
            "database_url": self.db_url,
            "broker_url": self.broker_url,
            "artifact_root": self.artifacts,
            "model_cache": current.models_dir,  # the normal cache: models are converted once, not per test
            "constitutions_dir": self.constitutions_dir,
            "api_keys": ",".join(f"{key}:{owner}" for owner, key in KEYS.items()),
            **TEST_TIMINGS,
            "rate_limit": "100000/minute",  # (the limit itself is tested in tests/api/test_limits.py)
            **self.extra_settings,
        }

    def settings(self, **overrides: Any) -> Any:
        from rlaif.settings import Settings

        return Settings(**{**self.settings_fields(), **overrides})

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RLAIF_")}
        env.update({f"RLAIF_{k.upper()}": str(v) for k, v in self.settings_fields().items()})
        env.update(OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def spawn(self, name: str, argv: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv, cwd=REPO, env=self.env(**env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_worker(
        self,
        name: str,
        queues: str = "control,generate,judge,train",
        beat: bool = False,
        via_cli: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """A solo-pool Celery worker subprocess (`celery worker`, or `rlaif worker`); returns once it consumes.
        `env`: variables for this worker only (an endpoint's API key, which the API process never needs)."""
        if via_cli:
            argv = [sys.executable, "-m", "rlaif", "worker", "-Q", queues, "--pool", "solo", "--name", name]
            argv += ["--beat"] if beat else []
        else:
            argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queues, "--pool", "solo"]
            argv += ["-n", f"{name}@%h", "-l", "INFO", "--without-gossip", "--without-mingle"]
            argv += ["-B", "--schedule", str(self.root / f"{name}-beat-schedule")] if beat else []
        proc = self.spawn(name, argv, **(env or {}))

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"worker {name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            return " ready." in self.log(name)

        wait_for(ready, 120, f"worker {name} to start")
        return proc

    def start_api(self, via_cli: bool = False) -> str:
        """The API as a subprocess (`uvicorn`, or `rlaif serve`); returns its base URL once /healthz answers."""
        import httpx

        port = free_port()
        if via_cli:
            argv = [sys.executable, "-m", "rlaif", "serve", "--host", "127.0.0.1", "--port", str(port)]
        else:
            argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
        proc = self.spawn("api", argv)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the API exited with {proc.returncode}:\n{self.log('api')[-3000:]}")
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "the API to answer /healthz")
        return url

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            kill_group(proc)


class ServiceFactory:
    """Builds isolated Services on the session's Redis server and database server."""

    def __init__(self, folder: Path, redis_server: RedisServer, databases: DatabaseFactory):
        self.folder, self.redis_server, self.databases = folder, redis_server, databases
        self.count = 0
        self.made: list[Service] = []

    def new(self, kind: str, schema: bool = True, **extra_settings: Any) -> Service:
        """A Service on a database at the newest revision (`schema=False`: an empty database)."""
        import redis

        self.count += 1
        root = self.folder / f"service-{self.count}-{kind}"
        root.mkdir()
        shutil.copytree(REPO / "constitutions", root / "constitutions")
        broker = self.redis_server.url(self.count % 16)
        redis.Redis.from_url(broker).flushdb()  # no messages left over from an earlier service on this db number
        # Model folders the tests make (tiny random models under the session's temp folder) may be named by runs.
        extra_settings = {"model_roots": str(self.folder.parent), **extra_settings}
        database = self.databases.migrated(kind) if schema else self.databases.new(kind)
        self.made.append(Service(root, database, broker, extra_settings))
        return self.made[-1]

    def stop_all(self) -> None:
        for service in self.made:
            service.stop_all()


@pytest.fixture(scope="session")
def service_factory(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, database_factory: DatabaseFactory
) -> Iterator[ServiceFactory]:
    factory = ServiceFactory(tmp_path_factory.mktemp("services"), redis_server, database_factory)
    yield factory
    factory.stop_all()  # (processes of session- and module-scoped services; make_service stops its own sooner)


@pytest.fixture
def make_service(service_factory: ServiceFactory) -> Iterator[Callable[..., Service]]:
    """`make_service("sqlite"|"postgresql", schema=True, **settings)` -> a fresh Service; its processes die at
    teardown."""
    made: list[Service] = []

    def make(kind: str, schema: bool = True, **extra_settings: Any) -> Service:
        made.append(service_factory.new(kind, schema, **extra_settings))
        return made[-1]

    yield make
    for service in made:
        service.stop_all()


@pytest.fixture(scope="session")
def service_tiny_model() -> str:
    """tiny-random-llama prepared in the model cache before any worker needs it (workers would race to build it)."""
    from rlaif.modeling import prepare_model

    prepare_model("tiny-random-llama")
    return "tiny-random-llama"


# ---------------------------------------------------------------- checking a finished run

EXPORTS = {"critique": "records.jsonl", "pairs": "responses.jsonl", "judge": "labels.jsonl"}


def check_run_integrity(service: Service, run_id: str) -> dict[str, int]:
    """Every stage succeeded, and each sharded stage wrote each input item exactly once: in the database (no
    duplicates, no gaps) and in its exported JSONL (in id order, manifest valid). Returns {stage: items}."""
    from sqlalchemy import select

    from rlaif.service import execute, state
    from rlaif.service.db import ItemRow, RunRow, StageRunRow
    from rlaif.store import iter_jsonl_dicts, verify_manifest

    rt = state.Runtime.from_settings(service.settings())
    counts: dict[str, int] = {}
    with rt.sessions() as session:
        run = session.get(RunRow, run_id)
        assert run is not None and run.status == "succeeded", (run and run.status, run and run.error)
        stages = session.scalars(select(StageRunRow).where(StageRunRow.run_id == run_id)).all()
        written = {
            stage.name: list(
                session.scalars(select(ItemRow.item_id).where(ItemRow.run_id == run_id, ItemRow.stage == stage.name))
            )
            for stage in stages
        }  # every row, so a duplicate would show
    for stage in stages:
        assert stage.status == "succeeded", (stage.name, stage.status, stage.error)
        if stage.kind not in EXPORTS:
            continue
        ctx = execute.stage_context(rt, run_id, stage.name)
        expected = [item.id for item in execute.stage_module(ctx.spec).read_items(ctx)]
        assert sorted(written[stage.name]) == sorted(expected), (
            f"{stage.name}: items {sorted(written[stage.name])} != {sorted(expected)}"
        )
        assert stage.done == stage.total == len(expected) and stage.shards_done == stage.shards_total
        verify_manifest(ctx.out_dir)
        exported = [record["id"] for record in iter_jsonl_dicts(ctx.out_dir / EXPORTS[stage.kind])]
        # (in input order: the stage's own write, as run_<stage> writes it)
        assert exported == expected, f"{stage.name}: {EXPORTS[stage.kind]} is not the items in input order"
        counts[stage.name] = len(expected)
    return counts


# ---------------------------------------------------------------- a run without the API


def make_run(rt: Any, overrides: dict | None = None, n_prompts: int = 8) -> str:
    """A queued run of owner "alice" (rlaif.state.create_run, as the API does) on the first `n_prompts` demo
    prompts and the minimal constitution, with TINY_RUN and `overrides` as its config."""
    from api.crud import upsert_constitution
    from rlaif.config import RunConfig
    from rlaif.constitution import load_constitution
    from rlaif.prompts import load_prompts
    from rlaif.service import state
    from rlaif.service.db import PromptSetRow, new_id

    constitution = load_constitution(REPO / "constitutions" / "minimal.yaml")
    items = load_prompts(REPO / "examples" / "demo_prompts.jsonl")[:n_prompts]
    with rt.sessions.begin() as session:
        con, _ = upsert_constitution(session, "alice", constitution, source="upload")
        prompt_set = PromptSetRow(
            id=new_id("ps"), owner="alice", name="demo", sha256="-", count=len(items), duplicates=0,
            items=[item.model_dump() for item in items],
        )  # fmt: skip
        session.add(prompt_set)
        session.flush()
        cfg = RunConfig().with_overrides(TINY_RUN).with_overrides(overrides or {})
        run = state.create_run(session, rt.store, owner="alice", constitution=con, prompt_set=prompt_set, cfg=cfg)
        return run.id


# ---------------------------------------------------------------- leases, as a worker takes them (rlaif/service/claims.py)


def claim_shard(rt: Any, run_id: str, stage: str, index: int, owner: str) -> int | None:
    """The shard's row id once `owner` holds its lease; None when there is nothing to do (LeaseBusy if held)."""
    from rlaif.service import claims

    return claims.claim(rt.sessions, claims.Unit(run_id, stage, index), owner, rt.lease_ttl_s)


def claim_stage(rt: Any, run_id: str, stage: str, owner: str) -> bool:
    from rlaif.service import claims

    return claims.claim(rt.sessions, claims.Unit(run_id, stage), owner, rt.lease_ttl_s) is not None


def renew_stage(rt: Any, run_id: str, stage: str, owner: str) -> str:
    """ "ok", or why the holder must stop ("cancelled", "lost")."""
    from rlaif.service import claims
    from rlaif.service.db import StageRunRow

    with rt.sessions() as session:
        row_id = session.query(StageRunRow.id).filter_by(run_id=run_id, name=stage).scalar()
    return claims.renew(rt.sessions, claims.Unit(run_id, stage), row_id, owner) or "ok"


def renew_shard(rt: Any, run_id: str, shard_id: int, owner: str) -> str:
    from rlaif.service import claims

    return claims.renew(rt.sessions, claims.Unit(run_id, "?", 0), shard_id, owner) or "ok"


def release_shard(rt: Any, run_id: str, shard_id: int, owner: str) -> None:
    from rlaif.service import claims

    claims.release(rt.sessions, claims.Unit(run_id, "?", 0), shard_id, owner)
