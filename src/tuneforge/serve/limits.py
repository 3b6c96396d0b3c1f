"""Request size limits and the upload's key check, applied at the ASGI level — before any route reads a body.

FastAPI reads a route's whole body (and spools a multipart upload to a temporary file) before it resolves the
route's dependencies, authentication among them; a size check on `Content-Length` alone misses a chunked body. So
this middleware, wrapped around the whole app:

- checks the API key of `POST /v1/files` before a byte of the body is read: without a valid key, 401 at once;
- refuses a declared `Content-Length` over the limit with 413 before reading;
- counts the bytes of every body as they arrive (chunked or not) and answers 413 as soon as the count passes the
  limit (to the app, the client has gone); the rest of the body is never handed to the app. uvicorn reads what
  the client still sends and drops it, so the client gets its answer instead of a reset connection, and nothing
  is written anywhere.

Uploads are limited by TUNEFORGE_MAX_UPLOAD_BYTES (the files route also counts the file's own bytes exactly),
every other body by TUNEFORGE_MAX_JSON_BYTES.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneforge.serve.auth import tenant_only
from tuneforge.serve.errors import APIError
from tuneforge.settings import Settings

# The multipart framing around the file: boundaries, part headers (a file name of up to a few KB) and the purpose
# field. The body may exceed the file's limit by this much; the files route holds the file itself to the limit.
MULTIPART_OVERHEAD = 64 * 1024


def is_upload(scope: Scope) -> bool:
    return scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files"


def file_too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"File too large: the limit is {limit:,} bytes (TUNEFORGE_MAX_UPLOAD_BYTES). Split the file into "
        "smaller ones, or raise TUNEFORGE_MAX_UPLOAD_BYTES on the server.",
        param="file",
        code="file_too_large",
    )


def body_too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"Request body too large: the limit for JSON bodies is {limit:,} bytes (TUNEFORGE_MAX_JSON_BYTES). "
        "Send a shorter request (fewer or shorter messages or prompts), or raise TUNEFORGE_MAX_JSON_BYTES on "
        "the server.",
        code="request_too_large",
    )


class BodyLimits:
    """ASGI middleware: the key check of uploads, and the size limits of every request body (see the module)."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if is_upload(scope):
            refused = await self._key_error(scope)
            if refused is not None:
                await _answer(refused, scope, receive, send)
                return
            limit = self.settings.max_upload_bytes + MULTIPART_OVERHEAD
            too_large = file_too_large(self.settings.max_upload_bytes)
        else:
            limit = self.settings.max_json_bytes
            too_large = body_too_large(limit)

        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _answer(too_large, scope, receive, send)
            return

        received = 0
        started = cut = False

        async def counted_receive() -> Message:
            nonlocal received, cut
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # To the app the client has gone: it stops reading and cleans up (a partial upload is
                    # deleted), its answer to that is dropped, and the 413 goes out as soon as it returns.
                    cut = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if cut and not started:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not cut or started:
                raise
            # The app failed on the cut-off body; the client's answer is the 413 all the same.
        if cut and not started:
            await _answer(too_large, scope, receive, send)

    async def _key_error(self, scope: Scope) -> APIError | None:
        """The routes' own key check (serve/auth.py), run here before the body: None when the key is valid."""
        header = Headers(scope=scope).get("authorization")
        scheme, key = get_authorization_scheme_param(header)
        # As HTTPBearer(auto_error=False) reads the header: anything but "Bearer <key>" is no key at all.
        credentials = (
            HTTPAuthorizationCredentials(scheme=scheme, credentials=key)
            if scheme.lower() == "bearer" and key
            else None
        )
        try:
            # In a session of its own, closed once the key is looked up (the upload can take minutes), and in a
            # thread: a database query must not hold up the event loop.
            await run_in_threadpool(tenant_only, Request(scope), credentials)
        except APIError as e:
            return e
        except Exception:
            # No answer about the key (the database is down ...): the route checks the key again, still before
            # it reads the body, and answers through the app's error handlers (503 for a database that is down).
            return None
        return None


async def _answer(err: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse(err.body(), status_code=err.status, headers=err.headers)(scope, receive, send)
