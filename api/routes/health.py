"""/healthz: is the database reachable, is the broker reachable (no auth; for load balancers and `rlaif demo`)."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Response, status
from sqlalchemy import text

from api.deps import SettingsDep, StateDep
from api.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/healthz", responses={503: {"model": HealthPublic}})
def healthz(state: StateDep, settings: SettingsDep, response: Response) -> HealthPublic:
    database = broker = "ok"
    try:
        with state.sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        database = f"unreachable: {type(exc).__name__}"
    try:
        redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2).ping()
    except Exception as exc:
        broker = f"unreachable: {type(exc).__name__}"
    body = HealthPublic(status="ok" if database == broker == "ok" else "unavailable", database=database, broker=broker)
    if body.status != "ok":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return body
