"""Dependencies of the routes: the service context and the caller's API key id."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from ..context import ServiceContext
from ..errors import ServiceError

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key (or Authorization: Bearer).")
bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token (or X-API-Key).")


async def get_context(request: Request) -> ServiceContext:
    return request.app.state.context


async def require_key(
    context: Annotated[ServiceContext, Depends(get_context)],
    header_key: Annotated[str | None, Depends(api_key_header)] = None,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> str:
    """The id of the caller's API key, or 401.

    Both dependencies are coroutines because FastAPI runs a plain ``def`` dependency on the thread pool: every
    status poll paid two more thread hand-offs for a dictionary lookup and a salted SHA-256, each one more chance
    to wait for the GIL while another thread holds it."""
    key = header_key or (credentials.credentials if credentials is not None else None)
    if not key:
        raise ServiceError(
            401, "UNAUTHORIZED", "an API key is required (X-API-Key header)", headers={"WWW-Authenticate": "Bearer"}
        )
    key_id = context.api_keys.identify(key)
    if key_id is None:
        raise ServiceError(401, "UNAUTHORIZED", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})
    return key_id


Context = Annotated[ServiceContext, Depends(get_context)]
Owner = Annotated[str, Depends(require_key)]
