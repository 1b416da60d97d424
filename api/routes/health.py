"""/healthz: is the database reachable, is the broker reachable (no auth; for load balancers and `rlaif demo`).

The route needs no key, so anyone can call it as often as they like: it must cost next to nothing. The checks
run at most once per `CACHE_S`, one at a time, on one Redis connection (`HealthProbe`); every other call gets
the last answer without a thread, a database session or a broker connection of its own.
"""

from __future__ import annotations

import threading
import time
from typing import Annotated

import anyio
import redis
from fastapi import APIRouter, Depends, Request, Response, status
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.schemas import HealthPublic
from rlaif.settings import Settings

router = APIRouter(tags=["health"])

CACHE_S = 2.0  # how old an answer may be; load balancers poll every few seconds


class HealthProbe:
    """The checks behind /healthz, run by at most one request at a time and at most once per CACHE_S."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        # One client, so one connection pool: a check reuses the connection of the previous one.
        timeout = settings.broker_timeout_s
        self.broker = redis.Redis.from_url(settings.broker_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.checking = threading.Lock()  # (only ever tried, never waited on)
        self.last: tuple[float, HealthPublic] | None = None  # (monotonic time of the check, its answer)

    async def answer(self) -> HealthPublic:
        while True:
            last = self.last
            if last is not None and time.monotonic() - last[0] < CACHE_S:
                return last[1]
            if self.checking.acquire(blocking=False):
                try:
                    body = await run_in_threadpool(self._check)
                    self.last = (time.monotonic(), body)
                    return body
                finally:
                    self.checking.release()
            if last is not None:
                return last[1]  # another request is checking now: the previous answer, one check old
            await anyio.sleep(0.05)  # the process's first check is running: wait for it, holding no thread

    def _check(self) -> HealthPublic:
        database = broker = "ok"
        try:
            with self.sessions() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:
            database = f"unreachable: {type(exc).__name__}"
        try:
            self.broker.ping()
        except Exception as exc:
            broker = f"unreachable: {type(exc).__name__}"
        return HealthPublic(
            status="ok" if database == broker == "ok" else "unavailable", database=database, broker=broker
        )


async def get_probe(request: Request) -> HealthProbe:  # (async: a plain def dependency runs on a pool thread)
    return request.app.state.health


ProbeDep = Annotated[HealthProbe, Depends(get_probe)]


@router.get("/healthz", responses={503: {"model": HealthPublic}})
async def healthz(probe: ProbeDep, response: Response) -> HealthPublic:
    # async: a cached answer takes no thread from the pool that the /v1 routes run in.
    body = await probe.answer()
    if body.status != "ok":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return body
