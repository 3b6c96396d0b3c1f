"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with the matching HTTP status.

Every failure a client can cause ends here — a bad key, an unknown id, a malformed body, an overloaded server —
so that the official client raises its usual exception classes (AuthenticationError, NotFoundError,
BadRequestError, UnprocessableEntityError, RateLimitError ...).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.errors import TuneforgeError

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


def overloaded(retry_after: int) -> APIError:
    return APIError(
        429,
        f"The server is busy with other generations and its queue is full. Retry after {retry_after} s.",
        type="rate_limit_error",
        code="server_overloaded",
        headers={"Retry-After": str(retry_after)},
    )


def _response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _loc(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return _response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
        if first.get("type") == "json_invalid":
            return _response(
                APIError(
                    400,
                    f"We could not parse the JSON body of your request: {first.get('msg')}",
                    code="invalid_json",
                )
            )
        param = _loc(tuple(first.get("loc", ())))
        kind = first.get("type")
        if kind == "missing":
            msg, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
        elif kind == "extra_forbidden":
            msg, code = f"Unrecognized request argument supplied: {param}", "unknown_parameter"
        else:
            msg = f"Invalid value for '{param}': {first.get('msg', '').removeprefix('Value error, ')}"
            code = "invalid_value"
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return _response(APIError(422, msg, param=param, code=code))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large"}.get(exc.status_code)
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"Unknown request URL: {_request.method} {_request.url.path}."
        return _response(APIError(exc.status_code, message, code=code, headers=getattr(exc, "headers", None)))

    @app.exception_handler(TuneforgeError)
    async def _tuneforge(_request: Request, exc: TuneforgeError) -> JSONResponse:
        return _response(APIError(400, str(exc), code="invalid_request"))

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
