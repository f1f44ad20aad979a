"""Request-body deadline for the Serve HTTP proxy: slow or stalled uploads get 408, never a replica slot.

Ray Serve's proxy (uvicorn) forwards a request to a replica as soon as its headers arrive; the
replica then pulls the body from the proxy message by message, and a body that never arrives holds
one of the replica's `max_ongoing_requests` slots with no read timeout. Enough stalled clients
freeze the whole app, `/healthz` included (issue 12). `BodyGuard` is an ASGI middleware that runs
*in the proxy*: it reads the whole body first, within `body_deadline_s(content_length)`, answers
408 (or 413 over `max_body_bytes`) itself, and only then hands the request, body in memory, to
Serve's router. Requests without a body (GET /healthz) pass straight through.

Serve loads proxy middlewares from the import path in `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`,
read by the proxy process, so the variables below must be in the environment of the Ray node
(`ray start`, or the process that calls `ray.init`) before Serve starts. `echo-ray serve` sets them
when it starts Ray itself; `proxy_env(cfg)` returns them for `ray start` (see README).

Usage:
    env = proxy_env(cfg.serve)          # {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": ..., "ECHO_BODY_TIMEOUT_S": ...}
    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=echo_ray.serve.body_guard:proxy_middlewares ray start --head
    body_deadline_s(5_000_000, base_s=5, per_mb_s=2, max_s=60)   # 15.0
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

CALLBACK_VAR = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "echo_ray.serve.body_guard:proxy_middlewares"
ENV = {  # variable -> ServeConfig field
    "ECHO_BODY_TIMEOUT_S": "body_timeout_s",
    "ECHO_BODY_TIMEOUT_PER_MB_S": "body_timeout_per_mb_s",
    "ECHO_BODY_TIMEOUT_MAX_S": "body_timeout_max_s",
    "ECHO_PROXY_MAX_BODY_BYTES": "max_body_bytes",
}
DEFAULTS = {"ECHO_BODY_TIMEOUT_S": 5.0, "ECHO_BODY_TIMEOUT_PER_MB_S": 2.0, "ECHO_BODY_TIMEOUT_MAX_S": 60.0,
            "ECHO_PROXY_MAX_BODY_BYTES": 64 * 1024 * 1024}  # fmt: skip

logger = logging.getLogger("ray.serve")


def body_deadline_s(content_length: int | None, base_s: float, per_mb_s: float, max_s: float) -> float:
    """Seconds a body of `content_length` bytes may take to arrive: base + per MB, at most `max_s`.

    An unknown length (chunked upload) gets `max_s`.
    """
    if content_length is None:
        return max_s
    return min(max_s, base_s + per_mb_s * content_length / 1e6)


def proxy_env(serve_cfg: Any) -> dict[str, str]:
    """Environment for a Ray node whose Serve proxy should run `BodyGuard` with `serve_cfg`'s limits."""
    env = {CALLBACK_VAR: CALLBACK}
    for var, attr in ENV.items():
        env[var] = str(getattr(serve_cfg, attr))
    return env


def _env_float(name: str) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else float(DEFAULTS[name])
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


class BodyGuard:
    """Pure ASGI middleware: buffer the request body within its deadline, else answer 408/413."""

    def __init__(self, app, base_s: float = 5.0, per_mb_s: float = 2.0, max_s: float = 60.0,
                 max_body_bytes: int = DEFAULTS["ECHO_PROXY_MAX_BODY_BYTES"]):  # fmt: skip
        self.app, self.base_s, self.per_mb_s, self.max_s = app, base_s, per_mb_s, max_s
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        try:
            length = int(headers["content-length"]) if "content-length" in headers else None
        except ValueError:
            return await _answer(send, 400, "Content-Length header is not a number")
        if not chunked and not length:
            return await self.app(scope, receive, send)  # no body: health checks, GETs
        if length is not None and length > self.max_body_bytes:
            return await _answer(send, 413, f"request body of {length} bytes exceeds the limit of {self.max_body_bytes} bytes")
        deadline = body_deadline_s(length, self.base_s, self.per_mb_s, self.max_s)
        try:
            async with asyncio.timeout(deadline):
                body = await self._read(receive)
        except TimeoutError:
            logger.info("body_guard path=%s status=408 body not received within %.1f s", _path(scope), deadline)
            return await _answer(send, 408, f"request body did not arrive within {deadline:.1f} s")
        except _TooLarge:
            return await _answer(send, 413, f"request body exceeds the limit of {self.max_body_bytes} bytes")
        if body is None:
            logger.info("body_guard path=%s client disconnected while sending the body", _path(scope))
            return None
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive) -> bytes | None:
        """The whole body, or None when the client disconnected first."""
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks)


class _TooLarge(Exception):
    pass


def _path(scope) -> str:
    return repr(scope.get("path", ""))[:80]  # repr: a path cannot forge a log line


def _replay(body: bytes, receive):
    """A receive() that yields the buffered body once, then waits on the client (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send, status: int, message: str) -> None:
    payload = json.dumps({"error": message, "status": status, "request_id": ""}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
               (b"connection", b"close")]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def proxy_middlewares() -> list:
    """Serve's proxy callback (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`): `BodyGuard` from the env."""
    from starlette.middleware import Middleware

    return [Middleware(BodyGuard, base_s=_env_float("ECHO_BODY_TIMEOUT_S"),
                       per_mb_s=_env_float("ECHO_BODY_TIMEOUT_PER_MB_S"), max_s=_env_float("ECHO_BODY_TIMEOUT_MAX_S"),
                       max_body_bytes=int(_env_float("ECHO_PROXY_MAX_BODY_BYTES")))]  # fmt: skip
