"""FastAPI dependencies: settings, a database session per request, the engine.

A session holds a pooled connection from its first query until it closes, and a dependency with `yield` closes
only after the response is sent — for a streamed answer, after its last event. Routes that generate text must not
hold one across the generation (the pool would run dry under load and every route of every tenant would wait for
it): they do their database work in `db_session(request)` blocks that close before generating.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from tuneforge.serve.engine import Engine
from tuneforge.serve.errors import APIError
from tuneforge.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


@contextmanager
def db_session(request: Request) -> Iterator[Session]:
    """A session of the app's pool. No free connection within the pool timeout is overload, not a fault of the
    request: 429 with Retry-After, like a full generation queue, instead of a 500."""
    try:
        with request.app.state.sessions() as session:
            yield session
    except PoolTimeout:
        raise pool_exhausted(request.app.state.settings) from None


def pool_exhausted(settings: Settings) -> APIError:
    wait = settings.retry_after_s
    return APIError(
        429,
        f"The server is busy: no database connection came free within {settings.db_pool_timeout_s:g} s. "
        f"Retry after {wait} s.",
        type="rate_limit_error",
        code="server_overloaded",
        headers={"Retry-After": str(wait)},
    )


def get_session(request: Request) -> Iterator[Session]:
    with db_session(request) as session:
        yield session


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
EngineDep = Annotated[Engine, Depends(get_engine)]
