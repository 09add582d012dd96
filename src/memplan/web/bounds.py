"""The limits every web request is held to: body size and CPU time.

- :class:`BodyLimit`: an ASGI middleware that refuses a request body over
  :data:`MAX_BODY_BYTES` with 413 before the application sees it (by its Content-Length, or
  while it arrives when there is none).
- :func:`cpu_time_limit`: a CPU-time budget for one computation, enforced with the process's
  profiling timer (``setitimer(ITIMER_PROF)``, which counts user + system CPU time) and a
  SIGPROF handler that raises :class:`CpuTimeExceeded` in the computation. Signals reach only
  the main thread: ``memplan serve`` runs its endpoints there (they are ``async`` and compute
  in the event loop, which uvicorn runs in the main thread). Elsewhere (FastAPI's test client
  runs the app in a worker thread) the budget is checked when the computation ends, and so it
  is in the main thread too: the timer ticks with the scheduler (a few ms), and a computation
  that ends between two ticks would otherwise pass any budget.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

__all__ = [
    "FEWER_POINTS",
    "MAX_BODY_BYTES",
    "PLAN_CPU_SECONDS",
    "REPORT_CPU_SECONDS",
    "SMALLER_SEARCH",
    "SWEEP_CPU_SECONDS",
    "BodyLimit",
    "CpuTimeExceeded",
    "cpu_time_limit",
]

MAX_BODY_BYTES = 1 << 20
"""Largest request body (1 MiB): a config.json of the largest catalog model is about 10 KiB."""
REPORT_CPU_SECONDS = 5.0
"""CPU time for one report (a training estimate with its fit search takes milliseconds)."""
SWEEP_CPU_SECONDS = 30.0
"""CPU time for one sweep (at most 256 reports)."""
PLAN_CPU_SECONDS = 120.0
"""CPU time for one plan search (Llama-3.1-70B on 64 GPUs, about 50,000 plans evaluated,
takes seconds to tens of seconds on one core; the search runs in the server's one process)."""
SMALLER_SEARCH = (
    "narrow the search (only, max-tp, max-pp, max-micro-batch) or run `memplan plan --jobs N`"
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class CpuTimeExceeded(BaseException):
    """A request used more CPU time than its budget.

    A BaseException, as KeyboardInterrupt is: raised from a signal handler at any point of the
    computation, it must not be taken for an input error by an ``except MemplanError`` (a sweep
    records those per point) or an ``except Exception`` on its way out."""


FEWER_POINTS = "ask for fewer points"


def _exceeded(seconds: float, advice: str) -> CpuTimeExceeded:
    return CpuTimeExceeded(f"the request used more than {seconds:g} s of CPU time; {advice}")


_armed: list[tuple[float, str]] = []
"""The budget (and the advice) of the computation running now in the main thread (empty:
none)."""


def _on_timer(signum: int, frame: Any) -> None:
    if _armed:  # a signal that arrives after the computation ended is ignored
        raise _exceeded(*_armed[0])


@contextmanager
def cpu_time_limit(seconds: float, advice: str = FEWER_POINTS) -> Iterator[None]:
    """Run the body with at most ``seconds`` of CPU time (see the module docstring); past it,
    the error says ``advice``."""
    start = time.process_time()
    enforce = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not enforce or _armed:
        yield
        if time.process_time() - start > seconds:
            raise _exceeded(seconds, advice)
        return
    if signal.getsignal(signal.SIGPROF) is not _on_timer:
        signal.signal(signal.SIGPROF, _on_timer)  # stays installed: late signals are ignored
    _armed.append((seconds, advice))
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        _armed.clear()
    # the profiling timer ticks with the scheduler (a few ms): a body that ends between ticks
    # is held to the budget here
    if time.process_time() - start > seconds:
        raise _exceeded(seconds, advice)


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``; the body reaches the app whole."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        body = _error_body(
            f"memplan: error: the request body is larger than {self.max_bytes // 1024} KiB"
        )
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
