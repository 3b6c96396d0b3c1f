"""GET /metrics: the engine's load and latencies in Prometheus' text format, for an operator's scraper.

Aggregates only (no model, tenant or prompt in any label). Open by default as Prometheus expects; with
`metrics_token` set it needs `Authorization: Bearer <metrics_token>`.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tuneforge.serve.deps import EngineDep, SettingsDep
from tuneforge.serve.errors import APIError

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Engine metrics (Prometheus text format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus exposition format."}},
)
def metrics(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    if settings.metrics_token:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), settings.metrics_token.encode()):
            raise APIError(
                401, "GET /metrics needs Authorization: Bearer <metrics_token>.", code="invalid_api_key"
            )
    return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)
