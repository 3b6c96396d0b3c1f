"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with the matching HTTP status.

Every failure a client can cause ends here — a bad key, an unknown id, a malformed body, an overloaded server —
so that the official client raises its usual exception classes (AuthenticationError, NotFoundError,
BadRequestError, UnprocessableEntityError, RateLimitError ...).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from tuneforge.errors import TuneforgeError
from tuneforge.serve.schemas import ErrorResponse, shown

log = logging.getLogger("tuneforge.serve")


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def not_found(kind: str, object_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"No such {kind}: {object_id}", param=param, code="not_found")


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def busy(message: str, retry_after: int, code: str = "server_overloaded") -> APIError:
    """429 with Retry-After: the server's capacity, not the request, is the problem."""
    return APIError(
        429, message, type="rate_limit_error", code=code, headers={"Retry-After": str(retry_after)}
    )


def overloaded(retry_after: int) -> APIError:
    return busy(
        f"The server is busy with other generations and its queue is full. Retry after {retry_after} s.",
        retry_after,
    )


def _response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


# Every route may answer these, all in the same shape (ErrorResponse): the OpenAPI document says so, so that
# clients and schema checkers (schemathesis) know them. 422 replaces FastAPI's own HTTPValidationError, which this
# server never sends.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad request: the message says what is wrong and what to send instead."},
    401: {"description": "No API key, or one this server does not know."},
    403: {"description": "Not allowed (for example: deleting a base model)."},
    404: {"description": "No such object for this tenant (another tenant's ids answer the same)."},
    409: {"description": "The object is in a state that does not allow this."},
    413: {"description": "The upload or the request body is over the server's limit."},
    422: {"description": "A field is missing, unknown, of the wrong type or out of its documented bounds."},
    429: {
        "description": "The server is busy: retry after Retry-After seconds.",
        "headers": {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
        },
    },
    503: {
        "description": "The database does not answer: retry after Retry-After seconds.",
        "headers": {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
        },
    },
}
DATABASE_RETRY_S = 5

# The parts pydantic adds to an error's location for the member of a union it tried ("literal['auto']",
# "constrained-int", "str", "list[TextPart]"): not request fields, so not part of `param`.
_UNION_TAG = re.compile(
    r"(?:str|int|float|bool|none|bytes|list|dict|(?:constrained|function)-[\w-]+|[a-z][\w-]*\[.*\])"
)
_PLACES = ("body", "query", "path", "header", "cookie")
# every method a route may declare, for the Allow header of a 405
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _fields(loc: tuple) -> list[str]:
    """The request fields of an error's location: without the place (body, query ...) and the union members."""
    parts = list(loc[1:] if loc and loc[0] in _PLACES else loc)
    return [str(p) for p in parts if not (isinstance(p, str) and _UNION_TAG.fullmatch(p))]


def _loc(loc: tuple) -> str | None:
    return ".".join(_fields(loc)) or None


def _field(loc: tuple) -> tuple:
    """The location up to the first union member: the errors of one union's members share it."""
    out = []
    for p in loc:
        if isinstance(p, str) and _UNION_TAG.fullmatch(p):
            break
        out.append(p)
    return tuple(out)


def _validation_error(errors: list[dict]) -> APIError:
    if not errors:
        return APIError(422, "The request is invalid.", code="invalid_value")
    first = errors[0]
    loc, kind = tuple(first.get("loc", ())), first.get("type")
    if kind == "json_invalid":
        return APIError(
            400, f"We could not parse the JSON body of your request: {first.get('msg')}", code="invalid_json"
        )
    if loc in ((), ("body",)):  # the body as a whole: absent, or not an object
        if kind == "missing":
            return APIError(
                400,
                'The request needs a JSON body: an object such as {"model": ...}, sent with Content-Type: '
                "application/json.",
                code="invalid_body",
            )
        return APIError(
            400,
            f"The request body must be a JSON object ({{...}} with the documented fields), not "
            f"{_json_kind(first.get('input'))}.",
            code="invalid_body",
        )
    # A union's members each report an error; the deepest one is the most specific (the part of a list that was
    # wrong, not "Input should be a valid string"). Problems are counted once per field.
    field = _field(loc)
    first = max((e for e in errors if _field(tuple(e.get("loc", ()))) == field), key=lambda e: len(e["loc"]))
    loc, kind = tuple(first["loc"]), first.get("type")
    param = _loc(loc)
    if kind == "missing":
        msg, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
    elif kind == "extra_forbidden":  # the unknown name as sent, whatever it looks like
        param = ".".join(str(p) for p in loc[1:]) if loc and loc[0] in _PLACES else param
        msg, code = f"Unrecognized request argument supplied: {param}", "unknown_parameter"
    else:
        msg = f"Invalid value for '{param}': {first.get('msg', '').removeprefix('Value error, ')}"
        code = "invalid_value"
    more = len({_field(tuple(e.get("loc", ()))) for e in errors}) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return APIError(422, msg, param=param, code=code)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return f"a JSON string ({shown(value)})"
    if isinstance(value, bool) or value is None:
        return shown(value)
    if isinstance(value, int | float):
        return f"a JSON number ({shown(value)})"
    return "this"


def allowed_methods(request: Request) -> list[str]:
    """The methods the URL answers to, for a 405's Allow header. Starlette's own header names the methods of the
    first route whose path matched, so for /v1/files (GET and POST are two routes) it said only POST. Asked of
    the same top-level route that refused the method: a `{model:path}` route elsewhere that would also take the
    URL is another resource."""
    routes = request.app.router.routes
    refusing = next((r for r in routes if r.matches(request.scope)[0] == Match.PARTIAL), None)
    if refusing is None:
        return []
    return [m for m in _METHODS if refusing.matches({**request.scope, "method": m})[0] == Match.FULL]


def install(app: FastAPI) -> None:
    # Routes included after this carry the error responses in the OpenAPI document (include_router merges the
    # app router's `responses` into each route's): install() runs before create_app includes the routers.
    app.router.responses = {
        **{code: {**spec, "model": ErrorResponse} for code, spec in ERROR_RESPONSES.items()},
        **app.router.responses,
    }

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return _response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _response(_validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large"}.get(exc.status_code)
        message = str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 404 and message == "Not Found":
            message = f"Unknown request URL: {request.method} {request.url.path}."
        if exc.status_code == 405:
            allowed = allowed_methods(request) or [
                m.strip() for m in headers.get("Allow", "").split(",") if m
            ]
            headers["Allow"] = ", ".join(allowed)
            message = (
                f"{request.method} is not allowed on {request.url.path}; it answers {', '.join(allowed)}."
                if allowed
                else f"{request.method} is not allowed on {request.url.path}."
            )
        return _response(APIError(exc.status_code, message, code=code, headers=headers or None))

    @app.exception_handler(TuneforgeError)
    async def _tuneforge(_request: Request, exc: TuneforgeError) -> JSONResponse:
        return _response(APIError(400, str(exc), code="invalid_request"))

    @app.exception_handler(OperationalError)
    async def _database(_request: Request, exc: OperationalError) -> JSONResponse:
        # The database went away or is locked: the request may succeed later, so 503 + Retry-After (readiness
        # says the same), not a 500 that reads as a bug of the request.
        log.exception("database error", exc_info=exc)
        return _response(
            APIError(
                503,
                f"The database is not answering ({type(exc.orig).__name__ if exc.orig else 'error'}). Retry after "
                f"{DATABASE_RETRY_S} s.",
                type="server_error",
                code="database_unavailable",
                headers={"Retry-After": str(DATABASE_RETRY_S)},
            )
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _response(
            APIError(
                500,
                f"The server had an error while processing your request ({type(exc).__name__}).",
                type="server_error",
                code="internal_error",
            )
        )
