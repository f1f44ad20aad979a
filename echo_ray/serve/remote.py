"""The ingress's side of a row: send it to the engine deployment, turn its block updates into answers.

`RemoteRow` calls the engine through its `DeploymentHandle`s (`EngineHandles`): a streamed request
as a handle stream (`stream.decode.remote(row, timeout_s)`: Accepted, then block updates), a plain
one as a single answer (`unary.decode_whole.remote(row, timeout_s)`: every update at once, one
reply instead of a stream's per-item reports). Rows up to `row_by_value_max_bytes` travel by value
over the replicas' gRPC channel, larger ones through the object store. It accumulates the row's
tokens and builds the same `GeneratedReport` the local decoder returns. The engine's refusals
become `ApiError` 422 / `Overloaded` 429 (with Retry-After), its failures the statuses the old
single-deployment service used (deadline 503, invalid 422, internal 500). An engine replica that
dies mid-request surfaces as `EngineGone` (503); `decode_plain` retries a plain request once, on
whichever replica Serve's router picks next (decoding is deterministic, so a retry gives the same
report). A stream cannot be retried (blocks already went out): it ends with an `error` event.

Usage:
    handles = EngineHandles.of(engine_handle, cfg.row_by_value_max_bytes)
    report, row = await decode_plain(handles, req, deadline, tokenizer, mode, block_size)
    row = RemoteRow(handles, req, deadline, tokenizer, mode, block_size, streaming=True); await row.open()
    while (ev := await row.next_block()) is not None: ...
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from ray.exceptions import ActorUnavailableError, RayActorError

from echo_ray.decode.engine import RowEvent, RowRequest
from echo_ray.decode.generator import GeneratedReport
from echo_ray.decode.scheduler import BlockUpdate, Failure
from echo_ray.serve.continuous import Accepted, Refused
from echo_ray.serve.schemas import ApiError

logger = logging.getLogger("ray.serve")
FAILURE_STATUS = {"deadline": 503, "invalid": 422, "internal": 500, "shutdown": 503}
ENGINE_FAULTS = (RayActorError, ActorUnavailableError)  # the engine replica died or cannot be reached


class Overloaded(ApiError):
    """429: the engine's admission queue is full; `retry_after_s` goes out as the Retry-After header."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(429, message)
        self.retry_after_s = retry_after_s


class EngineGone(ApiError):
    """503: the engine replica decoding this row failed (plain requests are retried once first)."""

    def __init__(self, what: str):
        super().__init__(503, f"the decode engine replica failed ({what}); retry the request")


def _refusal(r: Refused) -> ApiError:
    return Overloaded(r.message, r.retry_after_s) if r.status == 429 else ApiError(r.status, r.message)


def row_bytes(row: RowRequest) -> int:
    p = row.prompt
    return sum(int(t.numel() * t.element_size()) for t in (p.input_ids, p.pixel_values, p.image_grid_thw))


@dataclass(frozen=True)
class EngineHandles:
    """The engine deployment's handle four ways: unary (plain requests) or streaming, by value or by reference.

    Rows up to `by_value_max_bytes` (ServeConfig.row_by_value_max_bytes) go by value, over the
    replicas' own gRPC channel (Serve's `_by_reference=False`): no object-store round trip, measured
    at ~5 ms less CPU per request over ingress, engine and raylet with a tiny-preset row. Larger rows
    (many or large images) go through the object store, which is built for them, and stay under the
    replicas' 4 MiB gRPC message limit."""

    unary: object  # ray.serve.handle.DeploymentHandle, by value
    stream: object
    unary_ref: object  # through the object store
    stream_ref: object
    by_value_max_bytes: int

    @classmethod
    def of(cls, handle, by_value_max_bytes: int) -> "EngineHandles":
        by_value = handle.options(_by_reference=False)
        return cls(by_value, by_value.options(stream=True), handle, handle.options(stream=True), by_value_max_bytes)

    def pick(self, row: RowRequest, streaming: bool):
        small = row_bytes(row) <= self.by_value_max_bytes
        if streaming:
            return self.stream if small else self.stream_ref
        return self.unary if small else self.unary_ref


class RemoteRow:
    """One request's row on the engine deployment (see the module docstring)."""

    def __init__(self, handles: EngineHandles, row: RowRequest, deadline: float, tokenizer, mode: str, block_size: int,
                 streaming: bool):  # fmt: skip
        self.handles, self.row, self.deadline, self.tokenizer = handles, row, deadline, tokenizer
        self.mode, self.block_size, self.streaming = mode, block_size, streaming
        self.t0 = time.perf_counter()
        self.prompt_tokens = row.prompt.length
        self._call = None  # the handle stream (streamed) or the unary response (plain)
        self._answered = False  # plain: the unary response was read
        self._ready: deque = deque()
        self.tokens: list[int] = []
        self.forwards = 1  # the prefill
        self.blocks = 0
        self.rows_in_step = 0  # the most rows that shared a step with this one
        self.hit_max = self.finished = False

    async def open(self) -> None:
        """Send the row; a stream waits for the engine's Accepted (422 / 429 before any 200 goes out)."""
        timeout_s = max(0.0, self.deadline - time.monotonic())
        if not self.streaming:
            self._call = self.handles.pick(self.row, False).decode_whole.remote(self.row, timeout_s)
            return
        self._call = self.handles.pick(self.row, True).decode.remote(self.row, timeout_s)
        first = await self._recv()
        if isinstance(first, Refused):
            self.finished = True
            raise _refusal(first)
        assert isinstance(first, Accepted), type(first)

    async def _recv(self):
        try:
            if self.streaming:
                return await self._call.__anext__()
            if self._answered:
                raise StopAsyncIteration
            self._answered = True
            return await self._call
        except StopAsyncIteration:
            raise EngineGone("its stream ended without a last block") from None
        except ENGINE_FAULTS as e:
            self.finished = True
            raise EngineGone(e.__class__.__name__) from None

    @property
    def buffered(self) -> bool:
        """Block events already received and not yet taken: `next_block` returns without waiting."""
        return bool(self._ready)

    async def next_block(self) -> RowEvent | None:
        """The next block event; None after the last; ApiError on a refusal, deadline or failure."""
        if self.finished:
            return None
        if not self._ready:
            msg = await self._recv()
            if isinstance(msg, Refused):
                self.finished = True
                raise _refusal(msg)
            self._ready.extend(msg)
        update = self._ready.popleft()
        if isinstance(update, Failure):
            self.finished = True
            if update.reason == "deadline":
                raise ApiError(503, f"decode did not finish within the time limit ({update.message}); lower max_new_tokens")
            raise ApiError(FAILURE_STATUS[update.reason], update.message)
        assert isinstance(update, BlockUpdate)
        ev = update.event
        self.tokens.extend(ev.tokens)
        self.forwards += ev.steps
        self.blocks += 1
        self.rows_in_step = max(self.rows_in_step, update.rows_in_step)
        self.hit_max, self.finished = ev.hit_max, ev.finished
        return ev

    def cancel(self) -> None:
        """The client went away: stop the engine's work for this row (slot freed at its next block edge)."""
        if self._call is not None and not self.finished:
            self._call.cancel()
        self.finished = True

    def text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def report(self) -> GeneratedReport:
        latency = time.perf_counter() - self.t0
        return GeneratedReport.from_tokens(
            self.tokenizer, self.tokens, hit_max_length=self.hit_max, forward_passes=self.forwards,
            prefill_s=0.0, decode_s=latency, latency_s=latency, mode=self.mode, block_size=self.block_size,
        )  # fmt: skip


async def decode_plain(handles: EngineHandles, row: RowRequest, deadline: float, tokenizer, mode: str, block_size: int,
                       tag: str = "") -> RemoteRow:  # fmt: skip
    """Decode a plain (non-streaming) request to its end, retrying once if its engine replica dies."""
    for attempt in (1, 2):
        remote = RemoteRow(handles, row, deadline, tokenizer, mode, block_size, streaming=False)
        try:
            await remote.open()
            while await remote.next_block() is not None:
                pass
            return remote
        except EngineGone as e:
            if attempt == 2 or time.monotonic() >= deadline:
                raise
            logger.warning("request_id=%s engine replica failed (%s); retrying once", tag, e.message)
        finally:  # cancelled (client gone) or failed: free the engine's slot
            remote.cancel()
    raise AssertionError("unreachable")
