"""The FastAPI app: `/v1` routers (one per resource), `/healthz`, OpenAPI docs at `/docs` (served offline, api/docs.py).

uvicorn api.main:app --port 8000        # or: rlaif serve
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from api.deps import AppState
from api.docs import install_docs
from api.errors import declare_error_bodies, install_handlers
from api.headers import SecurityHeaders
from api.limits import RequestLimits
from api.routes import checkpoints, constitutions, health, preference_sets, prompt_sets, reports, runs, usage
from api.schemas import ErrorPublic
from rlaif import __version__
from rlaif.service.db import SchemaError, get_engine, session_factory
from rlaif.settings import Settings, settings
from rlaif.store import ArtifactStore
from workers.app import create_celery


def create_app(cfg: Settings | None = None) -> FastAPI:
    """An app on the database, artifact root and broker of `cfg` (default: the RLAIF_* environment). Creating it
    makes no tables: a database at another schema revision than this code's, an empty one included, raises
    SchemaError naming `rlaif db upgrade` (rlaif/service/db.py; `rlaif serve` gives an empty database the schema first)."""
    cfg = cfg or settings
    app = FastAPI(
        title="rlaif",
        version=__version__,
        description="Constitutional AI / RLAIF as a service: upload a constitution and prompts, start a run, "
        "watch its stages, download the aligned model. Authenticate with `Authorization: Bearer <API key>`.",
        docs_url=None,  # (both pages come from install_docs, with their assets served here instead of a CDN)
        redoc_url=None,
    )
    app.state.rlaif = AppState(
        settings=cfg,
        sessions=session_factory(get_engine(cfg.db_url)),
        read_sessions=session_factory(get_engine(cfg.db_url), read_only=True),
        store=ArtifactStore(cfg.artifacts_dir),
        celery=create_celery(cfg),
    )
    app.state.health = health.HealthProbe(app.state.rlaif.read_sessions, cfg)
    install_handlers(app)
    declare_error_bodies(app)
    app.add_middleware(RequestLimits, settings=cfg)
    app.add_middleware(SecurityHeaders)  # (added last, so outermost: the front door's 401/413/429 get them too)
    v1 = APIRouter(
        prefix="/v1",
        responses={  # (every /v1 route: api/deps.py get_owner, api/limits.py)
            401: {"model": ErrorPublic, "description": "Missing or unknown API key."},
            429: {"model": ErrorPublic, "description": "Rate limit exceeded (with Retry-After)."},
        },
    )
    for module in (constitutions, prompt_sets, preference_sets, runs, checkpoints, usage):
        v1.include_router(module.router)
    v1.include_router(reports.router)
    app.include_router(v1)
    app.include_router(health.router)
    install_docs(app)
    return app


def _app_or_exit() -> FastAPI:
    """The app of the RLAIF_* environment; the process exits with the reason (and the command that fixes it)
    when the database is at a schema revision this code does not run on, instead of failing every query."""
    try:
        return create_app()
    except SchemaError as exc:
        raise SystemExit(f"rlaif API: {exc}") from None


def __getattr__(name: str) -> FastAPI:
    """`api.main.app` (what `uvicorn api.main:app` loads) is built on first access, not at import, so importing
    this module for `create_app` (tests, tools) neither opens the environment's database nor exits on its schema."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    global app
    app = _app_or_exit()
    return app
