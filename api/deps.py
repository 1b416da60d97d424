"""Typed dependencies of the routes: settings, a database session, the artifact store, the caller's owner name.

The app keeps one engine, session factory, artifact store and Celery client on `app.state` (built by
`api.main.create_app` from its Settings), so tests can build an app against their own database and broker.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from rlaif.settings import Settings
from rlaif.store import ArtifactStore


@dataclass(frozen=True)
class AppState:
    settings: Settings
    sessions: sessionmaker[Session]
    read_sessions: sessionmaker[Session]
    store: ArtifactStore
    celery: Celery


def get_state(request: Request) -> AppState:
    return request.app.state.rlaif


StateDep = Annotated[AppState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_session(state: StateDep) -> Iterator[Session]:
    """A session per request; committed by the route when it writes, rolled back otherwise."""
    with state.sessions() as session:
        yield session


def get_read_session(state: StateDep) -> Iterator[Session]:
    """A session for routes that only read: on SQLite it reads a snapshot without queueing for the write lock."""
    with state.read_sessions() as session:
        yield session


def get_store(state: StateDep) -> ArtifactStore:
    return state.store


def get_celery(state: StateDep) -> Celery:
    return state.celery


_bearer = HTTPBearer(
    auto_error=False, description="An API key from RLAIF_API_KEYS, sent as `Authorization: Bearer <key>`."
)


def owner_of_key(settings: Settings, presented_key: str) -> str | None:
    """The owner of an API key, or None. Keys are compared in constant time, every one of them, so timing
    tells nothing about which key (or how much of one) matched."""
    presented = presented_key.encode("utf-8")
    owner = None
    for key, who in settings.api_key_owners().items():
        if hmac.compare_digest(key.encode("utf-8"), presented):
            owner = who
    return owner


MISSING_KEY = "missing API key: send 'Authorization: Bearer <key>'"
INVALID_KEY = "invalid API key"


def get_owner(request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The owner of the request's API key, found once by the front door (api/limits.py), which has already
    answered 401 to any /v1 request without a valid key. (`_credentials` only declares the bearer scheme in the
    OpenAPI schema.)"""
    owner = getattr(request.state, "owner", None)
    if owner is None:  # (a route outside the front door's /v1 prefix: refuse rather than guess)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, MISSING_KEY, {"WWW-Authenticate": "Bearer"})
    return owner


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
OwnerDep = Annotated[str, Depends(get_owner)]
