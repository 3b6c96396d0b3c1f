"""What an operator watches: the engine's load and latencies in Prometheus' text format (`GET /metrics`).

Each Engine has its own registry (tests start many apps in one process). No label carries a model or tenant
name: the page is for the operator of the whole server and says nothing about any tenant's models.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128)


@contextlib.contextmanager
def counted(owner: Any, attr: str, lock: threading.Lock) -> Iterator[None]:
    """owner.<attr> counts this generation while the block runs (the engine's counts that /metrics and
    /health/ready read, a vLLM server's generations in flight)."""
    with lock:
        setattr(owner, attr, getattr(owner, attr) + 1)
    try:
        yield
    finally:
        with lock:
            setattr(owner, attr, getattr(owner, attr) - 1)


class Metrics:
    WINDOW_S = 10.0  # tokens/s is measured over the last 10 seconds

    def __init__(self, load: Callable[[], tuple[int, int]]) -> None:
        """load(): the sequences (or serial generations) running and waiting now, read at each scrape."""
        self.registry = r = CollectorRegistry()
        running = Gauge("tuneforge_sequences_running", "Sequences being decoded now.", registry=r)
        running.set_function(lambda: load()[0])
        waiting = Gauge(
            "tuneforge_sequences_waiting", "Sequences admitted, waiting to be decoded.", registry=r
        )
        waiting.set_function(lambda: load()[1])
        self.requests = Counter("tuneforge_generation_requests", "Generation requests admitted.", registry=r)
        self.refused = Counter(
            "tuneforge_generation_refused", "Generation requests refused (429).", registry=r
        )
        self.batch = Histogram(
            "tuneforge_batch_size",
            "Sequences given a new token per decoding step.",
            buckets=_BATCH,
            registry=r,
        )
        self.prompt_tokens = Counter("tuneforge_prompt_tokens", "Prompt tokens prefilled.", registry=r)
        self.completion_tokens = Counter("tuneforge_completion_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram(
            "tuneforge_time_to_first_token_seconds",
            "From admission to a sequence's first token.",
            buckets=_LATENCY,
            registry=r,
        )
        self.itl = Histogram(
            "tuneforge_inter_token_latency_seconds",
            "Between two tokens of one sequence.",
            buckets=_LATENCY,
            registry=r,
        )
        Gauge(
            "tuneforge_tokens_per_second", "Tokens generated per second, last 10 s.", registry=r
        ).set_function(self.tokens_per_second)
        self._recent: deque[tuple[float, int]] = deque()  # (when, tokens)
        self._lock = threading.Lock()

    def step(self, rows: int, prefilled: int) -> None:
        """A decoding step gave `rows` sequences a token and fed `prefilled` prompt tokens."""
        if rows:
            self.batch.observe(rows)
        self.prompt_tokens.inc(prefilled)

    def latency(self, seconds: float, first: bool) -> None:
        (self.ttft if first else self.itl).observe(seconds)

    def generated(self, tokens: int) -> None:
        self.completion_tokens.inc(tokens)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, tokens))
            self._trim(now)

    def tokens_per_second(self) -> float:
        with self._lock:
            self._trim(time.monotonic())
            return sum(n for _, n in self._recent) / self.WINDOW_S

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self.WINDOW_S:
            self._recent.popleft()
