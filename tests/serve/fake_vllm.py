"""A stand-in for `vllm serve` at its boundary (the command line and the HTTP routes tuneforge uses), for the tests
of the vLLM engine where vLLM itself is not installed. It answers like vLLM's OpenAI server: bearer key, /health,
/v1/load_lora_adapter and /v1/unload_lora_adapter (refusing an adapter of a rank above --max-lora-rank, as vLLM
does), and /v1/completions streamed with `return_token_ids`. Its tokens are a function of the request
(`fake_tokens`) so that a test knows the text to expect. Every request it gets, and every stream a client
abandons, is appended to the `--record` file as one JSON line.

    python tests/serve/fake_vllm.py --model MODEL --port P --api-key K ... --record FILE [--exit-at-start]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import zlib
from pathlib import Path


def fake_tokens(prompt: list[int], model: str, choice: int, count: int) -> list[int]:
    """What the fake generates: ordinary tokens (ids 200-1199 of SmolLM2's vocabulary), different per model and
    choice."""
    salt = zlib.crc32(model.encode()) % 97
    return [200 + (prompt[-1] * 31 + salt * 7 + choice * 13 + k * 17) % 1000 for k in range(count)]


def fake_logprobs(token: int, k: int, step: int) -> dict:
    """vLLM's completions logprobs for one token, tokens named "token_id:N" (return_tokens_as_token_ids): the chosen
    token is the second most likely, and its entry comes on top of the k most likely, as vLLM sends it."""
    chosen = -1.0 - step / 100
    top = {f"token_id:{token + 1 + i}": chosen + 0.5 - i for i in range(k)}
    top[f"token_id:{token}"] = chosen
    return {"tokens": [f"token_id:{token}"], "token_logprobs": [chosen], "top_logprobs": [top]}


def main(argv: list[str]) -> None:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int)
    p.add_argument("--api-key")
    p.add_argument("--served-model-name")
    p.add_argument("--max-lora-rank", type=int, default=16)
    p.add_argument("--record", required=True)
    p.add_argument("--exit-at-start", action="store_true")
    args, _ = p.parse_known_args(argv)
    record = Path(args.record)

    def note(kind: str, **kw) -> None:
        with record.open("a") as f:
            f.write(json.dumps({"kind": kind, "model_path": args.model, **kw}) + "\n")

    note("start", argv=argv)
    if args.exit_at_start:
        print("fake vLLM: refusing to start (--exit-at-start)", flush=True)
        sys.exit(3)
    app = FastAPI()
    loras: set[str] = set()

    @app.middleware("http")
    async def key(request: Request, call_next):
        if request.url.path != "/health" and request.headers.get("authorization") != f"Bearer {args.api_key}":
            return JSONResponse({"error": {"message": "Unauthorized"}}, status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {}

    @app.post("/v1/load_lora_adapter")
    async def load(body: dict):
        note("load_lora", **body)
        cfg = json.loads((Path(body["lora_path"]) / "adapter_config.json").read_text())
        if cfg["r"] > args.max_lora_rank:
            return JSONResponse(
                {
                    "error": {
                        "message": f"LoRA rank {cfg['r']} is greater than max_lora_rank {args.max_lora_rank}."
                    }
                },
                status_code=400,
            )
        loras.add(body["lora_name"])
        return "Success"

    @app.post("/v1/unload_lora_adapter")
    async def unload(body: dict):
        note("unload_lora", **body)
        loras.discard(body["lora_name"])
        return "Success"

    @app.post("/v1/completions")
    async def completions(body: dict):
        note("completions", body=body)
        if body["model"] != args.served_model_name and body["model"] not in loras:
            return JSONResponse({"error": {"message": f"The model `{body['model']}` does not exist."}}, 404)
        if body["max_tokens"] > 200:
            return JSONResponse(
                {"error": {"message": "This model's maximum context length is 256 tokens."}}, status_code=400
            )
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]

        async def stream():
            try:
                for k in range(body["max_tokens"]):
                    for pi, prompt in enumerate(prompts):
                        for j in range(body["n"]):
                            token = fake_tokens(prompt, body["model"], j, k + 1)[-1]
                            last = k + 1 == body["max_tokens"]
                            choice = {
                                "index": pi * body["n"] + j,
                                "text": "?",  # tuneforge decodes the token ids itself
                                "token_ids": [token],
                                "finish_reason": "length" if last else None,
                            }
                            if body.get("logprobs") is not None:
                                choice["logprobs"] = fake_logprobs(token, body["logprobs"], k)
                            yield f"data: {json.dumps({'choices': [choice]})}\n\n"
                    await asyncio.sleep(0.01)
                yield "data: [DONE]\n\n"
            except (asyncio.CancelledError, GeneratorExit):  # the client closed the stream
                note("aborted", model=body["model"])
                raise

        return StreamingResponse(stream(), media_type="text/event-stream")

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
