"""/v1/chat/completions and /v1/completions, streamed as server-sent events or answered whole.

Generation runs in its own thread (the event loop keeps serving other requests) and hands pieces of text to the
response through a queue. A streaming client that goes away cancels its generation at the next token.

A request holds no database connection while it generates: the key and the model are looked up in short sessions
that close first. Then it takes its place in the generation queue (or gets 429 at once), and only then renders
and tokenises its prompt, in a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tuneforge.data.schema import Message
from tuneforge.data.tokenize import prompt_text
from tuneforge.eval.generate import Piece, SamplingParams, TokenLogprob
from tuneforge.jobs import feedback as fb
from tuneforge.serve.auth import TenantOnly
from tuneforge.serve.deps import EngineDep, SettingsDep, db_session
from tuneforge.serve.engine import DONE, Engine, Prepared, Target, Ticket
from tuneforge.serve.errors import APIError, bad_request
from tuneforge.serve.routes.models import resolve_target
from tuneforge.serve.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    SamplingIn,
)
from tuneforge.settings import Settings

router = APIRouter(prefix="/v1", tags=["inference"])
log = logging.getLogger("tuneforge.serve")
_BACKGROUND: set[asyncio.Task] = set()  # shadow generations under way (a task nobody holds may be collected)


def _sse_doc(model: type) -> dict:
    return {
        200: {
            "description": "The whole answer as JSON, or with `stream: true` server-sent events: one "
            f"`data: <{model.__name__}>` per piece, ending with `data: [DONE]`.",
            "content": {"text/event-stream": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


# ------------------------------------------------------------------------------------------ chat
@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses=_sse_doc(ChatCompletionChunk),
    summary="Create a chat completion",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, settings: SettingsDep, engine: EngineDep, owner: TenantOnly
):
    _check_choices(settings, body.n, 1)
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs: true.", "top_logprobs", "invalid_value")
    started = time.monotonic()
    gen = await _start(request, body, settings, engine, owner, _chat_prompt)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    after = _Afterwards(request, body, settings, engine, owner, gen, rid, created, started, chat=True)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return _sse(_chat_chunks(gen, rid, created, after.model, usage, after))
    texts, finish, logprobs, usage_ = await gen.collect()
    await after.done(texts, finish, usage_)
    return {
        "id": rid,
        "created": created,
        "model": after.model,
        "metadata": body.metadata if after.stores else None,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": t},
                "logprobs": gen.chat_logprobs(lp),
                "finish_reason": f,
            }
            for i, (t, f, lp) in enumerate(zip(texts, finish, logprobs, strict=True))
        ],
        "usage": usage_,
    }


async def _chat_chunks(
    gen: _Generation, rid: str, created: int, model: str, include_usage: bool, after: _Afterwards
):
    def chunk(choices: list[dict], usage: dict | None = None) -> dict:
        return {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": choices,
            "usage": usage,
        }

    texts, finish = [""] * gen.n_choices, ["length"] * gen.n_choices
    for i in range(gen.n_choices):
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    async for piece in gen.pieces():
        texts[piece.index] += piece.text
        finish[piece.index] = piece.finish_reason or finish[piece.index]
        if piece.text or piece.logprobs:
            delta = {"index": piece.index, "delta": {"content": piece.text}, "finish_reason": None}
            if gen.logprobs:
                delta["logprobs"] = gen.chat_logprobs(piece.logprobs)
            yield chunk([delta])
        if piece.finish_reason:
            yield chunk([{"index": piece.index, "delta": {}, "finish_reason": piece.finish_reason}])
    await after.done(texts, finish, gen.usage())
    if include_usage:
        yield chunk([], gen.usage())


# ------------------------------------------------------------------------------------- completions
@router.post(
    "/completions",
    response_model=Completion,
    responses=_sse_doc(Completion),
    summary="Create a text completion (no chat template)",
)
async def completions(
    body: CompletionRequest, request: Request, settings: SettingsDep, engine: EngineDep, owner: TenantOnly
):
    prompts = _prompts(body)
    if not prompts or any(not p for p in prompts):
        raise bad_request("The prompt is empty.", "prompt")
    _check_choices(settings, body.n, len(prompts))
    started = time.monotonic()
    gen = await _start(request, body, settings, engine, owner, _completion_prompts)
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    after = _Afterwards(request, body, settings, engine, owner, gen, rid, created, started, chat=False)
    echo = [prompts[i // body.n] if body.echo else "" for i in range(gen.n_choices)]
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return _sse(_completion_chunks(gen, rid, created, after.model, usage, echo, after))
    texts, finish, logprobs, usage_ = await gen.collect()
    await after.done(texts, finish, usage_)
    return {
        "id": rid,
        "created": created,
        "model": after.model,
        "choices": [
            {
                "index": i,
                "text": echo[i] + t,
                "logprobs": gen.completion_logprobs(lp, len(echo[i])),
                "finish_reason": f,
            }
            for i, (t, f, lp) in enumerate(zip(texts, finish, logprobs, strict=True))
        ],
        "usage": usage_,
    }


async def _completion_chunks(
    gen: _Generation, rid: str, created: int, model: str, include_usage: bool, echo, after: _Afterwards
):
    def chunk(choices: list[dict], usage: dict | None = None) -> dict:
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage,
        }

    offsets = [len(text) for text in echo]  # where each choice's next token starts in its text
    for i, text in enumerate(echo):
        if text:
            yield chunk([{"index": i, "text": text, "logprobs": None, "finish_reason": None}])
    async for piece in gen.pieces():
        if piece.text or piece.finish_reason or piece.logprobs:
            logprobs = gen.completion_logprobs(piece.logprobs, offsets[piece.index])
            if logprobs is not None:
                offsets[piece.index] += sum(map(len, logprobs["tokens"]))
            yield chunk(
                [
                    {
                        "index": piece.index,
                        "text": piece.text,
                        "logprobs": logprobs,
                        "finish_reason": piece.finish_reason,
                    }
                ]
            )
    await after.done([], [], gen.usage())
    if include_usage:
        yield chunk([], gen.usage())


# ------------------------------------------------------------------------------------------- shared
def _check_choices(settings: Settings, n: int, prompts: int) -> None:
    """max_n bounds the choices one request generates; each prompt of a completion gets n of them."""
    limit = settings.max_n
    if n > limit:
        raise bad_request(f"n={n} is more than this server allows ({limit}).", "n", "invalid_value")
    if prompts > limit:
        raise bad_request(
            f"{prompts} prompts in one request are more than this server allows ({limit}, the most choices "
            "per request). Send fewer prompts per request.",
            "prompt",
            "invalid_value",
        )
    if prompts * n > limit:
        raise bad_request(
            f"{prompts} prompts with n={n} ask for {prompts * n} choices, more than this server allows per "
            f"request ({limit}). Lower n or send fewer prompts per request.",
            "n",
            "invalid_value",
        )


# The CPU work of a request (run by Engine.cpu_work, off the event loop): its prompts as token ids, and how to
# sample, after the context-length check.
Work = Callable[[Any, Prepared, Settings], tuple[list[list[int]], SamplingParams]]


async def _start(
    request: Request,
    body: SamplingIn,
    settings: Settings,
    engine: Engine,
    owner: str,
    work: Work,
    target: Target | None = None,
) -> _Generation:
    """Look the model up (a deployment picks one of its versions), take a place in the queue, then load it and
    render and tokenise the prompt — in that order, so that an overloaded server refuses at once, before it does
    a request's expensive work."""
    route = None
    if target is None:
        target, route = await run_in_threadpool(_lookup, request, settings, owner, body.model, body.user)
    ticket = engine.admit()
    try:
        prep = await run_in_threadpool(engine.prepare, target)
        prompts, params = await engine.cpu_work(work, body, prep, settings)
        return _Generation(engine, prep, ticket, prompts, params, body.n, route)
    except BaseException:  # refused (context length, template) or cancelled: give the place back
        ticket.close()
        raise


def _lookup(
    request: Request, settings: Settings, owner: str, model: str, user: str | None
) -> tuple[Target, fb.Route | None]:
    with db_session(request) as session:  # closed before the generation starts
        deployment = None if model in settings.base_models else fb.get_deployment(session, owner, model)
        if deployment is None:
            return resolve_target(session, settings, owner, model), None
        route = fb.route(deployment, user)
        try:
            return resolve_target(session, settings, owner, route.model), route
        except APIError:
            raise APIError(
                404,
                f"Deployment {model!r} routes to {route.model!r}, which no longer exists: change its arms "
                f"(POST /v1/deployments/{model}).",
                param="model",
                code="model_not_found",
            ) from None


class _Afterwards:
    """What happens once a request's answer is complete: the routing log (for a deployment's figures), the
    stored completion (`store: true`, or a deployment that stores), and the shadow model's answer."""

    def __init__(self, request, body, settings, engine, owner, gen, rid, created, started, *, chat: bool):
        self.request, self.body, self.settings, self.engine, self.owner = (
            request,
            body,
            settings,
            engine,
            owner,
        )
        self.route: fb.Route | None = gen.route
        self.rid, self.created, self.started, self.chat = rid, created, started, chat
        # a deployment answers under the version's own id, so the client knows which one answered
        self.model = gen.target.id if self.route else body.model
        self.stores = chat and (body.store or bool(self.route and self.route.store))

    async def done(self, texts: list[str], finish: list[str], usage: dict) -> None:
        latency = (time.monotonic() - self.started) * 1000
        if self.stores or self.route:
            await run_in_threadpool(self._write, self.rid, self.model, texts, finish, usage, latency, None)
        shadow = self.route.shadow if self.route and self.chat else None
        if shadow and shadow != self.model:
            task = asyncio.create_task(self._shadow(shadow))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    def _write(self, rid, model, texts, finish, usage, latency, shadow_of) -> None:
        body = self.body
        with db_session(self.request) as s:
            if self.stores or shadow_of:
                s.add(
                    fb.StoredCompletion(
                        id=rid,
                        owner=self.owner,
                        model=model,
                        requested=body.model,
                        deployment=self.route.deployment if self.route else None,
                        shadow_of=shadow_of,
                        user=body.user,
                        messages=[m.model_dump(exclude_none=True) for m in body.messages],
                        params=body.model_dump(
                            exclude={"model", "messages", "metadata", "store", "user"}, exclude_none=True
                        ),
                        choices=[
                            {"message": {"role": "assistant", "content": t}, "finish_reason": f}
                            for t, f in zip(texts, finish, strict=True)
                        ],
                        usage=usage,
                        metadata_=body.metadata,
                        latency_ms=latency,
                        created_at=self.created,
                    )
                )
            if self.route:
                stored = rid if (self.stores or shadow_of) else None
                fb.record_request(
                    s, self.owner, self.route, model, shadow_of is not None, body.user, stored, latency, usage
                )
            s.commit()

    async def _shadow(self, model: str) -> None:
        """The candidate answers the same request; its answer is stored beside the primary one, never sent."""
        started = time.monotonic()
        body = self.body.model_copy(update={"stream": False, "logprobs": False, "top_logprobs": None})
        try:
            target, _ = await run_in_threadpool(_lookup, self.request, self.settings, self.owner, model, None)
            gen = await _start(
                self.request, body, self.settings, self.engine, self.owner, _chat_prompt, target
            )
            texts, finish, _, usage = await gen.collect()
            latency = (time.monotonic() - started) * 1000
            rid = f"chatcmpl-{uuid.uuid4().hex}"
            await run_in_threadpool(self._write, rid, model, texts, finish, usage, latency, self.rid)
        except (
            APIError
        ) as e:  # overloaded (429), the shadow model gone, its context too short: no shadow answer
            log.warning("shadow answer of %s by %s skipped: %s", self.rid, model, e.message)
        except Exception:
            log.exception("shadow answer of %s by %s failed", self.rid, model)


def _chat_prompt(
    body: ChatCompletionRequest, prep: Prepared, settings: Settings
) -> tuple[list[list[int]], SamplingParams]:
    messages = [_message(m, i) for i, m in enumerate(body.messages)]
    try:
        prompt = prompt_text(prep.tokenizer, messages)
    except Exception as e:  # a template that refuses these roles or this order
        raise bad_request(
            f"The model's chat template cannot render these messages: {e}", "messages"
        ) from None
    ids = prep.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    max_tokens = body.max_completion_tokens or body.max_tokens
    return [ids], _params(body, [ids], max_tokens, prep, settings, "messages")


def _completion_prompts(
    body: CompletionRequest, prep: Prepared, settings: Settings
) -> tuple[list[list[int]], SamplingParams]:
    ids = [prep.tokenizer(p, add_special_tokens=True)["input_ids"] for p in _prompts(body)]
    return ids, _params(body, ids, body.max_tokens, prep, settings, "prompt")


def _prompts(body: CompletionRequest) -> list[str]:
    return [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)


def _message(m, i: int) -> Message:
    role = "system" if m.role == "developer" else m.role
    if m.role == "assistant" and m.content is None and not m.tool_calls:
        raise bad_request("An assistant message needs content or tool_calls.", f"messages.{i}.content")
    return Message(
        role=role, content=m.text(), tool_calls=m.tool_calls, name=m.name, tool_call_id=m.tool_call_id
    )


def _params(
    body: SamplingIn,
    prompts: Sequence[Sequence[int]],
    max_tokens: int | None,
    prep: Prepared,
    settings: Settings,
    what: str,
) -> SamplingParams:
    longest = max(len(p) for p in prompts)
    ctx = prep.context_length
    if max_tokens is None:
        max_tokens = (
            settings.default_max_tokens if ctx is None else min(settings.default_max_tokens, ctx - longest)
        )
    if ctx is not None and (longest + max_tokens > ctx or max_tokens < 1):
        part = "messages" if what == "messages" else "prompt"
        raise APIError(
            400,
            f"This model's maximum context length is {ctx} tokens. However, you requested {longest + max_tokens} "
            f"tokens ({longest} in the {part}, {max(max_tokens, 0)} in the completion). Please reduce the length "
            f"of the {part} or of the completion (max_tokens).",
            param=what,
            code="context_length_exceeded",
        )
    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stops(),
        logprobs=body.logprob_count(),
    )


def _sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def body():
        try:
            async for e in events:
                yield f"data: {json.dumps(e, ensure_ascii=False)}\n\n"
        except APIError as err:  # after the headers went out, an error travels as an event
            yield f"data: {json.dumps(err.body())}\n\n"
        except Exception as err:
            yield (
                "data: "
                + json.dumps(
                    {
                        "error": {
                            "message": f"generation failed: {type(err).__name__}: {err}",
                            "type": "server_error",
                            "param": None,
                            "code": "internal_error",
                        }
                    }
                )
                + "\n\n"
            )
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _Generation:
    """One admitted request: the engine generates its choices and hands their pieces to this queue."""

    def __init__(
        self,
        engine: Engine,
        prep: Prepared,
        ticket: Ticket,
        prompts: list[list[int]],
        params: SamplingParams,
        n: int,
        route: fb.Route | None = None,
    ):
        self.target, self.route = prep.target, route
        self.prompts = prompts
        self.n_choices = len(prompts) * n
        self.tokenizer = prep.tokenizer
        self.logprobs = params.logprobs is not None
        self.cancel = threading.Event()
        self._queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def put(item: Any) -> None:  # called from the engine's threads
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # the server is shutting down
                self.cancel.set()

        # Started at once, so that the ticket is given back even if the response is never read.
        self.run = engine.start(prep, ticket, prompts, params, n, put, self.cancel)

    async def pieces(self) -> AsyncIterator[Piece]:
        try:
            while True:
                item = await self._queue.get()
                if item is DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel.set()  # a client that went away stops the generation at the next token

    async def collect(self) -> tuple[list[str], list[str], list[list[TokenLogprob]], dict]:
        texts = [""] * self.n_choices
        finish = ["length"] * self.n_choices
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(self.n_choices)]
        async for p in self.pieces():
            texts[p.index] += p.text
            logprobs[p.index] += p.logprobs
            if p.finish_reason:
                finish[p.index] = p.finish_reason
        return texts, finish, logprobs, self.usage()

    # The logprobs in OpenAI's two shapes (None when the request asked for none). A token is shown as its own
    # decoded text; a token that is half of a multi-byte character shows as U+FFFD, as it does on OpenAI's API.
    def _text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def chat_logprobs(self, lps: list[TokenLogprob]) -> dict | None:
        if not self.logprobs:
            return None

        def entry(token: int, logprob: float) -> dict:
            text = self._text(token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        content = [entry(x.token, x.logprob) | {"top_logprobs": [entry(*t) for t in x.top]} for x in lps]
        return {"content": content, "refusal": None}

    def completion_logprobs(self, lps: list[TokenLogprob], offset: int) -> dict | None:
        if not self.logprobs:
            return None
        tokens = [self._text(x.token) for x in lps]
        starts = []
        for t in tokens:
            starts.append(offset)
            offset += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": [x.logprob for x in lps],
            "top_logprobs": [{self._text(t): v for t, v in x.top} for x in lps],
            "text_offset": starts,
        }

    def usage(self) -> dict:
        prompt = sum(len(p) for p in self.prompts)
        completion = self.run.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
