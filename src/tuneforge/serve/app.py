"""The FastAPI application: `create_app(settings)`.

uvicorn --factory tuneforge.serve.app:app_from_env     # settings from TUNEFORGE_* variables
tuneforge serve                                         # the same, plus worker processes
"""

from __future__ import annotations

import contextlib

from fastapi import FastAPI

from tuneforge import __version__
from tuneforge.jobs import store
from tuneforge.serve import console, errors
from tuneforge.serve.engine import Engine
from tuneforge.serve.limits import BodyLimits
from tuneforge.serve.routes import (
    chat,
    deployments,
    estimates,
    exports,
    feedback,
    file_reports,
    files,
    fine_tuning,
    health,
    job_reports,
    metrics,
    models,
    stored,
)
from tuneforge.settings import Settings

DESCRIPTION = """OpenAI-compatible fine-tuning and inference on your own machine.

Point the official `openai` client at `http://HOST:PORT/v1` with one of the server's API keys: files, fine-tuning
jobs (with events and checkpoints), models, chat and text completions work as on OpenAI's API. tuneforge extensions
are marked as such in the schemas (job `training_type`, extra hyperparameters such as `lora_rank`), and exports of
fine-tuned models (merged, GGUF, GGUF LoRA, Ollama) are tuneforge's own routes."""


def create_app(settings: Settings) -> FastAPI:
    settings.ensure_dirs()
    db = store.engine_for(settings)
    store.init_db(db)
    sessions = store.session_factory(db)
    with store.transaction(sessions) as s:
        store.sync_api_keys(s, settings.api_keys)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        app.state.engine.close()  # the vLLM servers it started, the schedulers' threads

    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from serve/console, with their scripts from the package, not a CDN
        redoc_url=None,
        title="tuneforge",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "files", "description": "Training and validation data, and results files."},
            {"name": "fine-tuning", "description": "Fine-tuning jobs, run by worker processes."},
            {"name": "models", "description": "Base models and your fine-tuned models."},
            {
                "name": "exports",
                "description": "tuneforge: fine-tuned models written for other runtimes (a merged Hugging Face "
                "folder, GGUF for llama.cpp, a GGUF LoRA, an Ollama folder), checked against the tuned model "
                "by a worker, then downloaded.",
            },
            {"name": "inference", "description": "Chat and text completions, streamed or whole."},
            {
                "name": "stored completions",
                "description": "Chat completions kept with `store: true` (or by a deployment that stores), as "
                "OpenAI's stored-completions API has them.",
            },
            {
                "name": "feedback",
                "description": "tuneforge: thumbs, scores, corrections and comments on stored completions, and "
                "KTO / DPO / SFT training files made from them.",
            },
            {
                "name": "deployments",
                "description": "tuneforge: a named alias that splits traffic between model versions (sticky per "
                "user, with an optional shadow), and its per-arm figures.",
            },
            {"name": "health", "description": "Liveness (no key) and readiness (per tenant)."},
        ],
    )
    app.state.settings = settings
    app.state.db = db
    app.state.sessions = sessions
    app.state.engine = Engine(settings)
    errors.install(app)
    console.install(app)  # the web console at /, its assets, and the offline API docs
    # exports before models: POST /v1/models/{model}/exports must not reach the models router's {model:path}
    for r in (
        files.router,
        file_reports.router,
        estimates.router,  # before fine_tuning: /estimate is not a job id
        fine_tuning.router,
        job_reports.router,
        exports.router,
        models.router,
        chat.router,
        stored.router,
        feedback.router,
        deployments.router,
        health.router,
        metrics.router,
    ):
        app.include_router(r)
    # Around every route: the upload's key check and the body limits come before any body is read.
    app.add_middleware(BodyLimits, settings=settings)
    _document_streams(app)
    return app


def _document_streams(app: FastAPI) -> None:
    """Add the schemas of streamed events (referenced by the text/event-stream responses) to the document."""
    from fastapi.openapi.utils import get_openapi

    from tuneforge.serve.schemas import ChatCompletionChunk

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            chunk = ChatCompletionChunk.model_json_schema(
                ref_template="#/components/schemas/{model}", mode="serialization"
            )
            for name, sub in chunk.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas["ChatCompletionChunk"] = chunk
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    return create_app(Settings())
