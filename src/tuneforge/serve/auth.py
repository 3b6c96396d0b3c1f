"""API keys: `Authorization: Bearer <key>`. The key's owner is the tenant; every query is scoped to it, so another
tenant's ids answer 404 exactly like ids that do not exist."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tuneforge.jobs.store import key_hint, owner_of_key
from tuneforge.serve.deps import SessionDep
from tuneforge.serve.errors import APIError

bearer = HTTPBearer(auto_error=False, description="An API key of this server: Authorization: Bearer <key>.")


def current_tenant(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
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


Tenant = Annotated[str, Depends(current_tenant)]
