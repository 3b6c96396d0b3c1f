"""API keys: `Authorization: Bearer <key>`. The key's owner is the tenant; every query is scoped to it, so another
tenant's ids answer 404 exactly like ids that do not exist.

`Tenant` checks the key in the request's session (the one the route's own queries use). `TenantOnly` checks it in
a session of its own, closed before the route runs: for routes that generate, which must not hold a database
connection for the length of a generation.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from tuneforge.jobs.store import key_hint, owner_of_key
from tuneforge.serve.deps import SessionDep, db_session
from tuneforge.serve.errors import APIError

bearer = HTTPBearer(auto_error=False, description="An API key of this server: Authorization: Bearer <key>.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def owner_of(session: Session, credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise APIError(
            401,
            "You didn't provide an API key. Provide it in an Authorization header using Bearer auth "
            "(Authorization: Bearer YOUR_KEY), or as api_key / OPENAI_API_KEY in the OpenAI client.",
            code="missing_api_key",
        )
    owner = owner_of_key(session, credentials.credentials)
    if owner is None:
        raise APIError(
            401, f"Incorrect API key provided: {key_hint(credentials.credentials)}.", code="invalid_api_key"
        )
    return owner


def current_tenant(session: SessionDep, credentials: Credentials) -> str:
    return owner_of(session, credentials)


def tenant_only(request: Request, credentials: Credentials) -> str:
    # A plain (not yield) dependency: its session is closed when it returns, before the route body runs.
    with db_session(request) as session:
        return owner_of(session, credentials)


Tenant = Annotated[str, Depends(current_tenant)]
TenantOnly = Annotated[str, Depends(tenant_only)]
