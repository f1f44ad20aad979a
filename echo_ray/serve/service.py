"""The ingress deployment: HTTP in (our API and OpenAI's), ready rows out to the engine deployment.

Everything before the model runs here, on CPU, autoscaled apart from the engine: auth (`auth.py`),
body limits and deadlines (`inputs.read_body`; `body_guard.py` in the proxy), parsing, image header
checks and pixel budgets (`pixel_budget.py`), image decoding, the image processor and prompt
building (`decode.rows.RowFactory`, the same rows the local decoder builds), and the protocol
adapters (SSE for `/v1/reports/stream`, `openai_api.py` for `/v1/chat/completions`). Each request
becomes one `RowRequest` (token ids, pixel tensors, grid, mode, budget) handed to the engine
deployment (`engine.py`) through a `DeploymentHandle`; its block updates come back as a handle
stream (`remote.py`). A plain request whose engine replica dies is retried once; a stream gets a
terminal `error` event. Logs carry the Serve request id, sizes and timings, never report text,
image bytes or file names (patient data; `logsafe.py`).

Routes: POST /v1/reports, /v1/reports/stream, /v1/chat/completions; GET /v1/models (OpenAI list),
/v1/status (slots, queue, rows per step of one engine replica), /healthz, /readyz, / (web page),
/openapi.json and /docs (`openapi.py`). Errors are ``{"error", "status", "request_id"}`` on our
routes and OpenAI's ``{"error": {"message", "type", "code", "param"}}`` on the OpenAI ones.

Usage (app.py builds the two-deployment application):
    serve.run(ReportService.bind(ReportEngine.bind(cfg, decode, prompt, model), cfg, decode, prompt, model))
"""

# No `from __future__ import annotations`: FastAPI must resolve `Request` on the methods Serve rewraps.
import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import PurePosixPath

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from echo_ray.config import DecodeConfig, ModelConfig, PromptConfig, ServeConfig
from echo_ray.decode.engine import RowEvent, RowRequest
from echo_ray.decode.rows import ModelSide, RowFactory
from echo_ray.errors import InputError
from echo_ray.interop.formats import dicom_sources, negotiate, render_report
from echo_ray.interop.identity import ModelIdentity
from echo_ray.serve import openai_api as oai
from echo_ray.serve.auth import check_bearer, load_token
from echo_ray.serve.body_guard import body_deadline_s
from echo_ray.serve.inputs import (
    Limits,
    ParsedBody,
    ReportRequest,
    decode_images,
    inspect_images,
    parse_body,
    read_body,
)
from echo_ray.serve.logsafe import clean
from echo_ray.serve.openapi import service_openapi
from echo_ray.serve.pixel_budget import PixelBudget, trim_heap
from echo_ray.serve.remote import EngineHandles, Overloaded, RemoteRow, decode_plain
from echo_ray.serve.schemas import (
    ERROR_RESPONSES,
    ApiError,
    ErrorResponse,
    ReportResponse,
    report_response,
)
from echo_ray.serve.sse import row_block_payload, sse_event

logger = logging.getLogger("ray.serve")  # Serve's replica logger stamps request ids and writes replica logs

api = FastAPI(
    title="ECHO chest X-ray report service",
    description="Block-diffusion report generation (one forward per block). Upload 1-4 images, get a report. "
    "OpenAI-compatible: POST /v1/chat/completions with the images as image_url data: URLs; message text and "
    "system messages do not change the prompt (the model was trained on one instruction per language).",
    version="0.2.0",
    openapi_url=None,  # served by the replica with its configured limits (see `openapi_json`)
    docs_url=None,
    redoc_url=None,
)
TRIM_AFTER_PIXELS = 4_000_000  # hand freed heap back to the OS after decoding images this large
MIN_REDUCE_PIXELS = 4_000_000  # images up to this reach the processor untouched (same input as offline decoding)
STATIC_TYPES = {"app.js": "text/javascript", "style.css": "text/css"}
ROUTE_ERRORS = {**ERROR_RESPONSES, 429: {"model": ErrorResponse, "description": "admission queue full; see Retry-After"}}


def request_id(request: Request) -> str:
    """Serve's id for this request (the proxy also returns it as X-Request-ID)."""
    try:
        rid = serve.context._get_serve_request_context().request_id  # no public accessor in Ray 2.60
    except Exception:
        rid = ""
    return rid or clean(request.headers.get("x-request-id", ""), 64)


def _openai_route(request: Request) -> bool:
    return request.url.path.endswith(oai.OPENAI_PATHS)


def _error(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    if _openai_route(request):  # OpenAI clients expect 400 for a request they got wrong
        status = 400 if status == 422 else status
        return JSONResponse(oai.error_body(status, message), status, headers=headers)
    return JSONResponse({"error": message, "status": status, "request_id": request_id(request)}, status, headers=headers)


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    logger.info("request_id=%s path=%s status=%d refused: %s", request_id(request), clean(request.url.path, 80),
                exc.status, clean(exc.log_message))  # fmt: skip
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return _error(request, exc.status, exc.message, headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = (exc.errors() or [{}])[0]  # never the input value: it is the client's data
    where = ".".join(str(p) for p in first.get("loc", ()))[:80]
    return await _api_error(request, ApiError(422, f"{where}: {first.get('msg', 'invalid')}", "request validation failed"))


@api.exception_handler(ClientDisconnect)
async def _client_left(request: Request, exc: ClientDisconnect) -> Response:
    """Not a server error: one INFO line, no traceback; nobody reads the response."""
    logger.info("request_id=%s path=%s client disconnected", request_id(request), clean(request.url.path, 80))
    return Response(status_code=499)


@api.exception_handler(Exception)
async def _bug(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("request_id=%s path=%s internal error %s", request_id(request), clean(request.url.path, 80),
                     exc.__class__.__name__)  # fmt: skip
    return _error(request, 500, f"internal error ({exc.__class__.__name__})")


def _processor_pixels(processor) -> int:
    """Pixels large images are reduced to on decode: 4x what the processor resizes to, at least 4 M."""
    most = getattr(processor, "max_pixels", None) or (getattr(processor, "size", None) or {}).get("longest_edge")
    return max(4 * int(most or 0), MIN_REDUCE_PIXELS)


async def _blocks(remote: RemoteRow, rid: str) -> AsyncIterator[RowEvent | ApiError]:
    """A stream's block events, then nothing; a refusal, deadline or engine failure as one last ApiError.

    Closing it (the consumer holds it in `aclosing`: the client left, its generator was closed or
    cancelled) stops the engine's work for the row, as does the end of the stream."""
    try:
        while (ev := await _next_or_error(remote)) is not None:
            yield ev
            if isinstance(ev, ApiError):
                logger.info("request_id=%s stream stopped after %d blocks: %s", rid, remote.blocks, ev.status)
                return
    finally:
        remote.cancel()


async def coalesced(chunks: AsyncIterator[bytes], remote: RemoteRow) -> AsyncIterator[bytes]:
    """A stream's SSE chunks, joined while more are ready without waiting on the engine.

    Each write is one message from the ingress to the proxy and one to the client: blocks that
    arrived together (a loaded engine sends them in one message) and the last block with its
    `final` / usage / [DONE] go out in one write. Events and their order are unchanged."""
    pending: list[bytes] = []
    async with aclosing(chunks) as events:  # closing this closes the events: the row stops
        async for chunk in events:
            pending.append(chunk)
            if not remote.buffered and not remote.finished:  # the next event waits on the engine
                yield b"".join(pending)
                pending = []
    if pending:
        yield b"".join(pending)


async def _next_or_error(remote: RemoteRow) -> RowEvent | ApiError | None:
    try:
        return await remote.next_block()
    except ApiError as e:
        return e


def output_format(accept: str | None, field: str | None) -> str:
    """json | dicom-sr | fhir for POST /v1/reports (the `format` field wins over Accept); 406 otherwise."""
    try:
        return negotiate(accept, field)
    except InputError as e:  # NotAcceptable (406); an unknown `format` value was already 422 in the schema
        raise ApiError(getattr(e, "status", 422), str(e)) from None


def _model_name(path: str) -> str:
    return PurePosixPath(path.rstrip("/")).name or path


def _static(name: str) -> str:
    return resources.files("echo_ray.serve").joinpath("static", name).read_text(encoding="utf-8")


@dataclass
class Job:
    """One request's decode settings on the ingress (the row itself goes to the engine)."""

    language: str
    mode: str
    block_size: int
    deadline: float  # time.monotonic() by which the decode must be done


@serve.deployment(
    name="ReportService",
    ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},  # CPU only, here and on a cluster (serve_config.yaml)
    max_ongoing_requests=128,  # app.py sets it (ingress_max_ongoing)
    health_check_period_s=10,
)
@serve.ingress(api)
class ReportService:
    def __init__(self, engine, cfg: ServeConfig, decode: DecodeConfig, prompt: PromptConfig,
                 model: ModelConfig | None = None):  # fmt: skip
        self.engine = engine  # DeploymentHandle of the ReportEngine deployment (/v1/status)
        self.rows_out = EngineHandles.of(engine, cfg.row_by_value_max_bytes)  # rows out; block events back (a stream, or one answer if plain)
        self.cfg, self.ready = cfg, False
        side = ModelSide.load(cfg.model, model)  # tokenizer, image processor, metadata: no weights here
        self.rows = RowFactory(side, decode, prompt)
        self.tokenizer = side.tokenizer
        self.model_name, self.created = _model_name(cfg.model), int(time.time())
        # The observing device of DICOM SR / FHIR answers; mode and block size are each request's.
        self.identity = ModelIdentity.for_checkpoint(side.path, decode.mode, side.block_size)
        self.limits = Limits(cfg.max_body_bytes, cfg.max_images, cfg.max_pixels, cfg.max_new_tokens_limit,
                             cfg.max_request_pixels, _processor_pixels(side.image_processor))  # fmt: skip
        self.token = load_token(cfg)
        self.pixels = PixelBudget(cfg.max_replica_pixels)
        self._openapi: dict | None = None
        self.ready = True
        logger.info("ingress for model %s ready (auth %s)", self.model_name, "on" if self.token else "off")

    def check_health(self) -> None:  # Serve's replica health probe
        if not self.ready:
            raise RuntimeError("report service ingress is not ready")

    # ---- request preparation (everything before the model) --------------------------------------------
    def _authorize(self, request: Request) -> None:
        check_bearer(request.headers.get("authorization", ""), self.token)

    async def _body(self, request: Request) -> bytes:
        self._authorize(request)
        c, length = self.cfg, request.headers.get("content-length")
        n = int(length) if length and length.isdigit() else None
        deadline = body_deadline_s(n, c.body_timeout_s, c.body_timeout_per_mb_s, c.body_timeout_max_s)
        return await read_body(request.stream(), length, self.limits.max_body_bytes, deadline)

    def _build(self, parsed: ParsedBody, rid: str, steps: int | None) -> tuple[ReportRequest, RowRequest]:
        """Decode the images and build the checked row (CPU work: runs off the event loop)."""
        req = decode_images(parsed, self.limits)
        f = req.fields
        budget = f.max_new_tokens or int(self.rows.cfg.max_new_tokens)
        try:
            row = self.rows.row(req.images, f.language, f.mode, budget, steps=steps, tag=rid)
        except InputError as e:
            raise ApiError(422, str(e)) from None
        return req, row

    async def _study(self, parsed: ParsedBody, rid: str, steps: int | None = None) -> tuple[ReportRequest, RowRequest, Job]:
        pixels = inspect_images(parsed, self.limits)  # headers only: 413 before any pixel is decoded
        async with self.pixels.hold(pixels):
            req, row = await asyncio.to_thread(self._build, parsed, rid, steps)
        if pixels > TRIM_AFTER_PIXELS:
            trim_heap()
        f = req.fields
        job = Job(f.language, f.mode, row.mode.block_size, time.monotonic() + self.cfg.decode_timeout_s)
        return req, row, job

    async def _parse(self, request: Request) -> ParsedBody:
        body = await self._body(request)
        return await parse_body(request.headers, body, self.limits)

    async def _prepare(self, request: Request) -> tuple[ReportRequest, RowRequest, Job]:
        return await self._study(await self._parse(request), request_id(request))

    def _remote(self, row: RowRequest, job: Job, streaming: bool) -> RemoteRow:
        return RemoteRow(self.rows_out, row, job.deadline, self.tokenizer, job.mode, job.block_size, streaming)

    def _log(self, rid: str, route: str, req: ReportRequest, job: Job, remote: RemoteRow, t0: float) -> None:
        logger.info("request_id=%s POST %s 200 images=%d bytes=%d mode=%s lang=%s blocks=%d tokens=%d batch=%d "
                    "latency_ms=%.1f", rid, route, len(req.images), req.n_bytes, job.mode, job.language, remote.blocks,
                    len(remote.tokens), remote.rows_in_step, (time.perf_counter() - t0) * 1000)  # fmt: skip

    # ---- our API ----------------------------------------------------------------------------------------
    @api.post("/v1/reports", response_model=ReportResponse, responses=ROUTE_ERRORS)
    async def create_report(self, request: Request) -> dict:
        """Generate one report for 1-4 images (multipart upload or JSON with base64 images)."""
        t0, rid = time.perf_counter(), request_id(request)
        parsed = await self._parse(request)
        fmt = output_format(request.headers.get("accept"), parsed.fields.format)  # 406 before any pixel is decoded
        req, row, job = await self._study(parsed, rid)  # req keeps the uploaded DICOM files (req.dicom)
        remote = await decode_plain(self.rows_out, row, job.deadline, self.tokenizer, job.mode, job.block_size, rid)
        self._log(rid, "/v1/reports", req, job, remote, t0)
        body = report_response(remote.report(), job.language, self.model_name, time.perf_counter() - t0,
                               remote.rows_in_step)  # fmt: skip
        if fmt == "json":
            return body
        identity = replace(self.identity, mode=job.mode, block_size=job.block_size)
        data, media_type = await asyncio.to_thread(render_report, body, fmt, identity, dicom_sources(req.dicom))
        return Response(data, media_type=media_type)

    @api.post("/v1/reports/stream", responses=ROUTE_ERRORS)
    async def stream_report(self, request: Request) -> StreamingResponse:
        """The same request, answered as server-sent events: `block` per finished block, then `final`."""
        t0 = time.perf_counter()
        req, row, job = await self._prepare(request)
        if req.fields.format not in (None, "json"):
            raise ApiError(422, "field 'format': this route answers server-sent events; POST /v1/reports answers "
                           "dicom-sr and fhir")  # fmt: skip
        remote = self._remote(row, job, streaming=True)
        await remote.open()  # 422 / 429 before the 200 status line goes out
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        # The generator's `finally` frees the row once it runs; a client that leaves before the first
        # block is sent may never start it, so the response's background task does it too.
        events = coalesced(self._row_events(request, remote, job, req, t0), remote)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers=headers, background=BackgroundTask(remote.cancel))  # fmt: skip

    async def _row_events(self, request: Request, remote: RemoteRow, job: Job, req: ReportRequest,
                          t0: float) -> AsyncIterator[bytes]:  # fmt: skip
        """One SSE block per row event; the row shares its steps with other requests on the engine."""
        rid, text = request_id(request), ""
        async with aclosing(_blocks(remote, rid)) as blocks:  # closed with this generator: the row stops
            async for ev in blocks:
                if isinstance(ev, ApiError):
                    yield sse_event("error", {"error": ev.message, "status": ev.status, "request_id": rid})
                    return
                payload = row_block_payload(ev, remote.text(), len(remote.tokens), text, t0)
                text = payload["text"]
                yield sse_event("block", payload)
        self._log(rid, "/v1/reports/stream", req, job, remote, t0)
        final = report_response(remote.report(), job.language, self.model_name, time.perf_counter() - t0,
                                remote.rows_in_step)  # fmt: skip
        yield sse_event("final", {**final, "blocks": remote.blocks})

    # ---- OpenAI's API -------------------------------------------------------------------------------------
    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        """OpenAI chat completion: images as image_url data: URLs; see openai_api.py."""
        t0, rid = time.perf_counter(), request_id(request)
        body = await self._body(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, f"request content type {ctype[:60] or '(none)'!r} is not supported; send application/json",
                           "request content type is not supported")  # fmt: skip
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"request body is not valid JSON ({e.__class__.__name__})") from None
        chat = oai.validate_chat(data)
        parsed, opts = oai.chat_upload(chat, self.limits, self.model_name, self.rows.cfg.block_size, len(body))
        del body, data
        req, row, job = await self._study(parsed, rid, opts.steps)
        if not opts.stream:
            remote = await decode_plain(self.rows_out, row, job.deadline, self.tokenizer, job.mode, job.block_size, rid)
            self._log(rid, "/v1/chat/completions", req, job, remote, t0)
            r = remote.report()
            return JSONResponse(oai.completion(rid, self.model_name, r.text, r.hit_max_length, remote.prompt_tokens,
                                               len(r.tokens)))  # fmt: skip
        remote = self._remote(row, job, streaming=True)
        await remote.open()
        chunks = coalesced(self._chat_chunks(rid, remote, opts, req, job, t0), remote)
        return StreamingResponse(chunks, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"}, background=BackgroundTask(remote.cancel))  # fmt: skip

    async def _chat_chunks(self, rid: str, remote: RemoteRow, opts: oai.ChatOptions, req: ReportRequest, job: Job,
                           t0: float) -> AsyncIterator[bytes]:  # fmt: skip
        """One chat.completion.chunk per block (finish_reason on the last), usage chunk, [DONE]."""
        created, sent, role = int(time.time()), "", {"role": "assistant"}
        async with aclosing(_blocks(remote, rid)) as blocks:
            async for ev in blocks:
                if isinstance(ev, ApiError):
                    yield oai.sse_data(oai.error_body(ev.status, ev.message))
                    return
                text = remote.text().strip() if ev.finished else remote.text().lstrip()
                delta = text[len(sent) :] if ev.finished else oai.stable_delta(text, sent)
                sent += delta
                finish = oai.finish_reason(ev.hit_max) if ev.finished else None
                yield oai.chunk(rid, self.model_name, created, {**role, "content": delta}, finish, opts.include_usage)
                role = {}
        self._log(rid, "/v1/chat/completions", req, job, remote, t0)
        if opts.include_usage:
            yield oai.usage_chunk(rid, self.model_name, created, remote.prompt_tokens, len(remote.tokens))
        yield oai.DONE

    @api.get("/v1/models", responses={401: ERROR_RESPONSES[401]})
    async def models(self, request: Request) -> dict:
        """The served model, in OpenAI's list shape."""
        self._authorize(request)
        return oai.models_list(self.model_name, self.created, self.rows.cfg.block_size)

    # ---- operations ---------------------------------------------------------------------------------------
    @api.get("/v1/status", responses={401: ERROR_RESPONSES[401]})
    async def status(self, request: Request) -> dict:
        """Decode settings and limits, and one engine replica's slots, queue and rows per step."""
        self._authorize(request)
        g, c = self.rows.cfg, self.cfg
        engine = await self.engine.stats.remote()
        model = {
            "id": self.model_name, "block_size": g.block_size, "modes": ["onestep", "multistep", "ar"],
            "default_mode": g.mode, "cache": g.cache, "languages": ["en", "zh"],
            "default_max_new_tokens": g.max_new_tokens, "max_new_tokens_limit": c.max_new_tokens_limit,
            "limits": {"max_body_bytes": c.max_body_bytes, "max_images": c.max_images, "max_pixels": c.max_pixels,
                       "decode_timeout_s": c.decode_timeout_s},
        }  # fmt: skip
        replica = engine.pop("replica")
        return {"model": model, "replica": replica, "batching": {"mode": "continuous", **engine}}

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> Response:
        return JSONResponse({"ready": self.ready, "model": self.model_name}, 200 if self.ready else 503)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi_json(self, request: Request) -> JSONResponse:
        if self._openapi is None:
            self._openapi = service_openapi(request.app, self.limits, auth_on=bool(self.token), model=self.model_name)
        return JSONResponse(self._openapi)

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=api.title)

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(self, request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return HTMLResponse(_static("index.html").replace("{{ROOT}}", root))

    @api.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> Response:
        if name not in STATIC_TYPES:
            raise ApiError(404, f"no static file {name!r}")
        return Response(_static(name), media_type=STATIC_TYPES[name])
