"""The bridge between the synchronous engines and the asyncio server.

    asyncio (gRPC handlers)                       engine thread (owns every engine)
    ───────────────────────                       ─────────────────────────────────
    generate() ── _Add ──▶ command queue ──▶      engine.add_request(...)
    (cancel)   ── _Abort ─▶ command queue ──▶      engine.abort(...)
    per-request asyncio.Queue ◀── call_soon_threadsafe ◀── engine.step() outputs

Only the engine thread touches an engine, so engines need no locks. It steps every engine that
has unfinished requests once per turn and blocks on the command queue when none has work.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from backends.engine_stats import EngineStats
from backends.outputs import StepOutput
from backends.sampling_params import SamplingParams
from gateway.errors import EngineRequestError, NotReadyError, RequestIdInUseError, UnknownBackendError

logger = logging.getLogger(__name__)


class _Engine(Protocol):
    def add_request(
        self, prompt_token_ids: list[int], sampling_params: SamplingParams, request_id: str | None = None
    ) -> str: ...
    def step(self) -> list[StepOutput]: ...
    def abort(self, request_id: str) -> None: ...
    def has_unfinished_requests(self) -> bool: ...
    def stats(self) -> EngineStats: ...


class LoopMetrics(Protocol):
    """What the engine thread reports (gateway.metrics.GatewayMetrics implements it)."""

    def observe_queue_time(self, backend: str, seconds: float) -> None: ...
    def update_engine_stats(self, backend: str, stats: EngineStats) -> None: ...


STATS_INTERVAL_S = 0.5  # how often a busy engine thread refreshes the metrics snapshots


@dataclass(frozen=True)
class _Add:
    backend: str
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    stream: _Stream
    added_at: float  # time.perf_counter() when the caller queued it (queue time starts here)


@dataclass(frozen=True)
class _Abort:
    request_id: str


_STOP = object()  # command: finish the thread


@dataclass(frozen=True)
class _Stream:
    """Where one request's outputs go: an asyncio.Queue read on its own event loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[StepOutput | BaseException]

    def put(self, item: StepOutput | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            pass  # the caller's event loop is closed: nobody is left to read this


class EngineLoop:
    """Runs all engines on one background thread and streams their outputs to asyncio."""

    def __init__(self, engines: Mapping[str, _Engine], metrics: LoopMetrics | None = None) -> None:
        self._engines = dict(engines)
        self._metrics = metrics
        self._unscheduled: dict[str, float] = {}  # request_id -> added_at, until its first output
        self._stats_due = 0.0
        self._commands: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._streams: dict[str, tuple[str, _Stream]] = {}  # request_id -> (backend, stream); engine thread only
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        # NOTE: _stopped is set and checked under the lock together with the enqueue, so every
        # _Add is queued before _STOP and gets an answer; none waits forever.
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Abort every request in flight and join the thread."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                self._commands.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    async def generate(
        self,
        backend: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        request_id: str,
    ) -> AsyncIterator[StepOutput]:
        """Yield the request's outputs until the one with a finish_reason.

        If the consumer stops early (client cancel, deadline, closed generator) the request is
        aborted in its engine. Errors of ``add_request`` (a prompt that is too long) are raised
        here.
        """
        if backend not in self._engines:
            raise UnknownBackendError(f"unknown backend {backend!r}; known: {', '.join(self._engines)}")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if self._stopped:
                raise NotReadyError("the gateway is shutting down")
            self._commands.put(
                _Add(backend, request_id, list(prompt_token_ids), sampling_params, stream, time.perf_counter())
            )
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True  # the engine thread has already forgotten the request
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._commands.put(_Abort(request_id))

    # -- engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            busy = any(engine.has_unfinished_requests() for engine in self._engines.values())
            if self._metrics is not None and (not busy or time.perf_counter() >= self._stats_due):
                self._report_stats()
            if not self._drain_commands(block=not busy):
                break
            for backend, engine in self._engines.items():
                if engine.has_unfinished_requests():
                    self._step(backend, engine)
        self._shutdown()

    def _drain_commands(self, block: bool) -> bool:
        """Apply every queued command (waiting for one if ``block``); False once told to stop."""
        while True:
            try:
                command = self._commands.get(block=block)
            except queue.Empty:
                return True
            block = False
            if command is _STOP:
                return False
            if isinstance(command, _Add):
                self._add(command)
            elif isinstance(command, _Abort):
                self._abort(command.request_id)

    def _add(self, command: _Add) -> None:
        if command.request_id in self._streams:
            command.stream.put(RequestIdInUseError(f"request_id {command.request_id!r} is already in flight"))
            return
        try:
            self._engines[command.backend].add_request(
                command.prompt_token_ids, command.sampling_params, command.request_id
            )
        except Exception as exc:  # noqa: BLE001 - handed to the caller, which maps it to a status
            command.stream.put(exc)
            return
        self._streams[command.request_id] = (command.backend, command.stream)
        self._unscheduled[command.request_id] = command.added_at

    def _abort(self, request_id: str) -> None:
        self._unscheduled.pop(request_id, None)
        entry = self._streams.pop(request_id, None)
        if entry is not None:
            self._engines[entry[0]].abort(request_id)

    def _report_stats(self) -> None:
        for backend, engine in self._engines.items():
            self._metrics.update_engine_stats(backend, engine.stats())
        self._stats_due = time.perf_counter() + STATS_INTERVAL_S

    def _step(self, backend: str, engine: _Engine) -> None:
        started = time.perf_counter()
        try:
            outputs = engine.step()
        except Exception as exc:  # noqa: BLE001 - fail this engine's requests, keep the others
            logger.exception("engine %r failed a step; failing its requests", backend)
            self._fail_backend(backend, exc)
            return
        for output in outputs:
            entry = self._streams.get(output.request_id)
            if entry is None:
                continue  # aborted by its caller since this step was scheduled
            added_at = self._unscheduled.pop(output.request_id, None)
            if added_at is not None and self._metrics is not None:
                # Every scheduled request has an output in its step, prefill chunks included.
                self._metrics.observe_queue_time(backend, max(0.0, started - added_at))
            if output.error is not None:  # the engine failed this request alone; INTERNAL
                del self._streams[output.request_id]
                logger.error("backend %r failed request %r: %s", backend, output.request_id, output.error)
                entry[1].put(EngineRequestError(f"backend {backend!r} failed the request"))
                continue
            entry[1].put(output)
            if output.finished:
                del self._streams[output.request_id]

    def _fail_backend(self, backend: str, exc: Exception) -> None:
        engine = self._engines[backend]
        for request_id in [rid for rid, (name, _) in self._streams.items() if name == backend]:
            _, stream = self._streams.pop(request_id)
            self._unscheduled.pop(request_id, None)
            stream.put(exc)
            try:
                engine.abort(request_id)
            except Exception:  # noqa: BLE001 - the engine is already broken; log and go on
                logger.exception("engine %r failed to abort %r", backend, request_id)

    def _shutdown(self) -> None:
        for request_id in list(self._streams):
            backend, stream = self._streams.pop(request_id)
            self._engines[backend].abort(request_id)
            stream.put(NotReadyError("the gateway is shutting down"))
