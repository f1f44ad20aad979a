"""The ingress's side of a row: send it to the engine deployment, turn its block updates into answers.

`RemoteRow` calls the engine through its `DeploymentHandle` as a handle stream (`handle` is
`engine_handle.options(stream=True)`: `handle.decode.remote(row, timeout_s, streaming)`), accumulates the row's
tokens, and builds the same `GeneratedReport` the local decoder returns. The engine's refusals
become `ApiError` 422 / `Overloaded` 429 (with Retry-After), its failures the statuses the old
single-deployment service used (deadline 503, invalid 422, internal 500). An engine replica that
dies mid-request surfaces as `EngineGone` (503); `decode_plain` retries a plain request once, on
whichever replica Serve's router picks next (decoding is deterministic, so a retry gives the same
report). A stream cannot be retried (blocks already went out): it ends with an `error` event.

Usage:
    report, row = await decode_plain(handle, req, deadline, tokenizer, mode, block_size)
    row = RemoteRow(handle, req, deadline, tokenizer, mode, block_size, streaming=True); await row.open()
    while (ev := await row.next_block()) is not None: ...
"""

from __future__ import annotations

import logging
import time
from collections import deque

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


class RemoteRow:
    """One request's row on the engine deployment (see the module docstring)."""

    def __init__(self, handle, row: RowRequest, deadline: float, tokenizer, mode: str, block_size: int,
                 streaming: bool):  # fmt: skip
        self.handle, self.row, self.deadline, self.tokenizer = handle, row, deadline, tokenizer
        self.mode, self.block_size, self.streaming = mode, block_size, streaming
        self.t0 = time.perf_counter()
        self.prompt_tokens = row.prompt.length
        self._gen = None
        self._ready: deque = deque()
        self.tokens: list[int] = []
        self.forwards = 1  # the prefill
        self.blocks = 0
        self.rows_in_step = 0  # the most rows that shared a step with this one
        self.hit_max = self.finished = False

    async def open(self) -> None:
        """Send the row; a stream waits for the engine's Accepted (422 / 429 before any 200 goes out)."""
        timeout_s = max(0.0, self.deadline - time.monotonic())
        self._gen = self.handle.decode.remote(self.row, timeout_s, self.streaming)
        if self.streaming:
            first = await self._recv()
            if isinstance(first, Refused):
                self.finished = True
                raise _refusal(first)
            assert isinstance(first, Accepted), type(first)

    async def _recv(self):
        try:
            return await self._gen.__anext__()
        except StopAsyncIteration:
            raise EngineGone("its stream ended without a last block") from None
        except ENGINE_FAULTS as e:
            self.finished = True
            raise EngineGone(e.__class__.__name__) from None

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
        if self._gen is not None and not self.finished:
            self._gen.cancel()
        self.finished = True

    def text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def report(self) -> GeneratedReport:
        latency = time.perf_counter() - self.t0
        return GeneratedReport.from_tokens(
            self.tokenizer, self.tokens, hit_max_length=self.hit_max, forward_passes=self.forwards,
            prefill_s=0.0, decode_s=latency, latency_s=latency, mode=self.mode, block_size=self.block_size,
        )  # fmt: skip


async def decode_plain(handle, row: RowRequest, deadline: float, tokenizer, mode: str, block_size: int,
                       tag: str = "") -> RemoteRow:  # fmt: skip
    """Decode a plain (non-streaming) request to its end, retrying once if its engine replica dies."""
    for attempt in (1, 2):
        remote = RemoteRow(handle, row, deadline, tokenizer, mode, block_size, streaming=False)
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
