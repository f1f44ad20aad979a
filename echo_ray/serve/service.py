"""The Ray Serve deployment: a FastAPI ingress over the decode engine, batched continuously.

The replica holds no decoding logic: it parses and checks requests (`inputs.py`) and hands them to
one of two batching paths (`ServeConfig.batching`):
- `continuous` (default): a `Scheduler` (scheduler.py) on its own thread owns a `DecodeEngine` and
  admits waiting requests into free slots at every block edge; plain and streaming requests are rows
  of the same steps, whatever their language or budget (continuous.py). A client that goes away
  frees its slot at the next block edge; a full admission queue answers 429 with Retry-After.
- `static` (the benchmark's baseline): `@serve.batch` fixes a batch when it starts, one
  `ReportGenerator` call per (mode, language, budget) group (`batching.py`); streams decode alone,
  block by block, on the same single worker thread.
Either way the event loop keeps answering /healthz while decoding runs. Logs carry the Serve
request id, sizes and timings, never report text or image bytes (patient data).

Routes: POST /v1/reports, POST /v1/reports/stream, GET /healthz, /readyz, /v1/models, / (web page),
/openapi.json and /docs (`openapi.py`). Errors are JSON ``{"error", "status", "request_id"}``.
Hardening (issue 12): body deadline (408, `inputs.read_body`; `body_guard.py` does it in the proxy),
pixel limits from image headers and a per-replica pixel budget (`pixel_budget.py`), the token from
a private file or the node's environment (`auth.py`), log text escaped (`logsafe.py`), a client
disconnect logged as one INFO line.

Usage (see app.py for the import-path entry):
    serve.run(ReportService.bind(ServeConfig(model="runs/dcd/final"), DecodeConfig(), PromptConfig()))
"""

# No `from __future__ import annotations`: FastAPI must resolve `Request` on the methods Serve rewraps.
import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import PurePosixPath

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from ray import serve
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from echo_ray.config import DecodeConfig, PromptConfig, ServeConfig
from echo_ray.decode.generator import ReportGenerator
from echo_ray.errors import InputError
from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.serve.batching import BatchStats, DecodeJob, Outcome, decode_jobs, group_jobs, start_generation
from echo_ray.serve.auth import check_bearer, load_token
from echo_ray.serve.body_guard import body_deadline_s
from echo_ray.serve.continuous import ContinuousDecoder, Overloaded, RowHandle
from echo_ray.serve.inputs import Limits, ReportRequest, decode_images, inspect_images, parse_body, read_body
from echo_ray.serve.logsafe import clean
from echo_ray.serve.metrics import SchedulerMetrics
from echo_ray.serve.openapi import service_openapi
from echo_ray.serve.pixel_budget import PixelBudget, trim_heap
from echo_ray.serve.schemas import ERROR_RESPONSES, ApiError, ErrorResponse, ReportResponse, report_response
from echo_ray.serve.sse import block_payload, row_block_payload, sse_event

logger = logging.getLogger("ray.serve")  # Serve's replica logger stamps request ids and writes replica logs

api = FastAPI(
    title="ECHO chest X-ray report service",
    description="Block-diffusion report generation (one forward per block). Upload 1-4 images, get a report.",
    version="0.1.0",
    openapi_url=None,  # served by the replica with its configured limits (see `openapi_json`)
    docs_url=None,
    redoc_url=None,
)
TRIM_AFTER_PIXELS = 4_000_000  # hand freed heap back to the OS after decoding images this large


def request_id(request: Request) -> str:
    """Serve's id for this request (the proxy also returns it as X-Request-ID)."""
    try:
        rid = serve.context._get_serve_request_context().request_id  # no public accessor in Ray 2.60
    except Exception:
        rid = ""
    return rid or clean(request.headers.get("x-request-id", ""), 64)


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    rid = request_id(request)
    logger.info("request_id=%s path=%s status=%d refused: %s", rid, clean(request.url.path, 80), exc.status,
                clean(exc.log_message))  # fmt: skip
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return JSONResponse({"error": exc.message, "status": exc.status, "request_id": rid}, exc.status, headers=headers)


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
    rid = request_id(request)
    logger.exception("request_id=%s path=%s internal error %s", rid, clean(request.url.path, 80), exc.__class__.__name__)
    return JSONResponse({"error": f"internal error ({exc.__class__.__name__})", "status": 500, "request_id": rid}, 500)


def _pick_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


MIN_REDUCE_PIXELS = 4_000_000  # images up to this reach the processor untouched (same input as offline decoding)


def _processor_pixels(processor) -> int:
    """Pixels large images are reduced to on decode: 4x what the processor resizes to, at least 4 M."""
    most = getattr(processor, "max_pixels", None) or (getattr(processor, "size", None) or {}).get("longest_edge")
    return max(4 * int(most or 0), MIN_REDUCE_PIXELS)


def _model_name(path: str) -> str:
    return PurePosixPath(path.rstrip("/")).name or path


def _static(name: str) -> str:
    return resources.files("echo_ray.serve").joinpath("static", name).read_text(encoding="utf-8")


STATIC_TYPES = {"app.js": "text/javascript", "style.css": "text/css"}
ROUTE_ERRORS = {**ERROR_RESPONSES, 429: {"model": ErrorResponse, "description": "admission queue full; see Retry-After"}}


@serve.deployment(
    name="ReportService",
    # Local default (echo-ray serve, tests): a fraction of a CPU. serve_config.yaml sets num_gpus: 1 on a cluster.
    ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},
    max_ongoing_requests=32,  # build_app sets it from the slots and queue (app.py: max_ongoing_requests)
    health_check_period_s=10,
)
@serve.ingress(api)
class ReportService:
    def __init__(self, cfg: ServeConfig, decode: DecodeConfig, prompt: PromptConfig):
        t0 = time.perf_counter()
        self.cfg, self.ready = cfg, False
        ckpt = load_checkpoint(cfg.model, dtype=cfg.dtype, device=_pick_device(cfg.device),
                               max_pixels=cfg.image_max_pixels, min_pixels=cfg.image_min_pixels)  # fmt: skip
        self.gen = ReportGenerator(ckpt, decode, prompt)
        self.model_name = _model_name(cfg.model)
        self.limits = Limits(cfg.max_body_bytes, cfg.max_images, cfg.max_pixels, cfg.max_new_tokens_limit,
                             cfg.max_request_pixels, _processor_pixels(ckpt.image_processor))  # fmt: skip
        self.token = load_token(cfg)
        self.pixels = PixelBudget(cfg.max_replica_pixels)
        self._openapi: dict | None = None
        self.cont: ContinuousDecoder | None = None
        if cfg.batching == "continuous":
            engine = self.gen.engine  # the replica's one set of K/V slots; the scheduler is its only user
            metrics = SchedulerMetrics(engine.free_slots)
            self.cont = ContinuousDecoder(self.gen, engine, cfg.max_queue, cfg.decode_timeout_s, metrics)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="echo-decode")  # static path
        self.stats = BatchStats()
        self._decode_batch.set_max_batch_size(cfg.max_batch_size)
        self._decode_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.warmup_ms = self._warmup()
        if self.cont is not None:
            self.cont.start()
        self.ready = True
        logger.info("model %s loaded and warmed up in %.0f ms (auth %s)", self.model_name,
                    (time.perf_counter() - t0) * 1000, "on" if self.token else "off")  # fmt: skip

    def _warmup(self) -> float:
        """One one-block decode of a blank image: proves the model runs before /readyz says so."""
        t0 = time.perf_counter()
        blank = Image.new("RGB", (224, 224))
        if self.cont is not None:
            self.cont.warmup([blank], int(self.gen.cfg.block_size or 1))
        else:
            self.gen.generate([[blank]], "en", max_new_tokens=int(self.gen.cfg.block_size or 1))
        return round((time.perf_counter() - t0) * 1000, 1)

    def __del__(self):
        if getattr(self, "cont", None) is not None:
            self.cont.close()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom autoscaling metrics (Ray Serve calls this on the replica) for a custom policy."""
        if self.cont is None:
            return {}
        snap = self.cont.scheduler.snapshot()
        return {k: float(snap[k]) for k in ("slots_in_use", "queue_length", "mean_rows_per_step")}

    def check_health(self) -> None:  # Serve's replica health probe
        if not self.ready:
            raise RuntimeError("report service replica is not ready")

    def _authorize(self, request: Request) -> None:
        check_bearer(request.headers.get("authorization", ""), self.token)

    def _body_deadline(self, request: Request) -> float:
        c = self.cfg
        length = request.headers.get("content-length")
        n = int(length) if length and length.isdigit() else None
        return body_deadline_s(n, c.body_timeout_s, c.body_timeout_per_mb_s, c.body_timeout_max_s)

    async def _parse(self, request: Request) -> ReportRequest:
        self._authorize(request)
        length = request.headers.get("content-length")
        body = await read_body(request.stream(), length, self.limits.max_body_bytes, self._body_deadline(request))
        parsed = await parse_body(request.headers, body, self.limits)
        del body
        pixels = inspect_images(parsed, self.limits)  # headers only: 413 before any pixel is decoded
        async with self.pixels.hold(pixels):
            # Image decoding is CPU work: keep it off the event loop (and off the model's worker thread).
            req = await asyncio.to_thread(decode_images, parsed, self.limits)
        if pixels > TRIM_AFTER_PIXELS:
            trim_heap()
        return req

    def _job(self, req: ReportRequest) -> DecodeJob:
        f = req.fields
        budget = f.max_new_tokens or int(self.gen.cfg.max_new_tokens)
        return DecodeJob(req.images, f.language, f.mode, budget, time.monotonic() + self.cfg.decode_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)  # reset from ServeConfig in __init__
    async def _decode_batch(self, jobs: list[DecodeJob]) -> list[Outcome]:
        self.stats.record(len(jobs), [len(ix) for ix in group_jobs(jobs).values()])
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, decode_jobs, self.gen, jobs, self.cfg.decode_timeout_s)

    @api.post("/v1/reports", response_model=ReportResponse, responses=ROUTE_ERRORS)
    async def create_report(self, request: Request) -> dict:
        """Generate one report for 1-4 images (multipart upload or JSON with base64 images)."""
        t0 = time.perf_counter()
        req = await self._parse(request)
        job = self._job(req)
        if self.cont is None:
            outcome: Outcome = await self._decode_batch(job)
            if outcome.error is not None:
                raise outcome.error
            r, batch = outcome.report, outcome.batch_size
        else:
            handle = await self._open(request, job, streaming=False)
            try:
                r = await handle.wait()
            finally:  # cancelled (client gone) or failed: free the slot at the next block edge
                handle.cancel()
            batch = handle.rows_in_step
        latency = time.perf_counter() - t0
        logger.info("request_id=%s POST /v1/reports 200 images=%d bytes=%d mode=%s lang=%s batch=%d tokens=%d "
                    "forwards=%d latency_ms=%.1f", request_id(request), len(req.images), req.n_bytes, job.mode,
                    job.language, batch, len(r.tokens), r.forward_passes, latency * 1000)  # fmt: skip
        return report_response(r, job.language, self.model_name, latency, batch)

    async def _open(self, request: Request, job: DecodeJob, streaming: bool = True) -> RowHandle:
        assert self.cont is not None
        return await self.cont.open(job.images, job.language, job.mode, job.max_new_tokens, job.deadline,
                                    tag=request_id(request), streaming=streaming)  # fmt: skip

    @api.post("/v1/reports/stream", responses=ROUTE_ERRORS)
    async def stream_report(self, request: Request) -> StreamingResponse:
        """The same request, answered as server-sent events: `block` per finished block, then `final`."""
        t0 = time.perf_counter()
        req = await self._parse(request)
        job = self._job(req)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if self.cont is not None:  # 422 / 429 before the 200 status line goes out
            handle = await self._open(request, job)
            events = self._row_events(request, handle, job, req, t0)
            # The generator's `finally` frees the row once it runs; a client that leaves before the
            # first block is sent may never start it, so the response's background task does it too.
            return StreamingResponse(events, media_type="text/event-stream", headers=headers,
                                     background=BackgroundTask(handle.cancel))  # fmt: skip
        loop = asyncio.get_running_loop()
        try:  # validate (context length) before the 200 status line goes out
            run = await loop.run_in_executor(self.pool, start_generation, self.gen, [job])
        except InputError as e:
            raise ApiError(422, str(e)) from None
        return StreamingResponse(self._events(request, run, job, req, t0), media_type="text/event-stream", headers=headers)

    async def _events(self, request: Request, run, job: DecodeJob, req: ReportRequest, t0: float) -> AsyncIterator[bytes]:
        loop, it, text, blocks = asyncio.get_running_loop(), iter(run), "", 0
        rid = request_id(request)
        while True:
            ev = await loop.run_in_executor(self.pool, next, it, None)  # one block per turn on the worker
            if ev is None:
                break
            blocks += 1
            payload = block_payload(ev, run, text, t0)
            text = payload["text"]
            yield sse_event("block", payload)
            if time.monotonic() > job.deadline and not ev.finished[0]:
                msg = f"decode did not finish within the limit of {self.cfg.decode_timeout_s:g} s; lower max_new_tokens"
                logger.info("request_id=%s stream stopped after %d blocks: time limit", rid, blocks)
                yield sse_event("error", {"error": msg, "status": 503, "request_id": rid})
                return
        latency = time.perf_counter() - t0
        r = run.reports[0]
        logger.info("request_id=%s POST /v1/reports/stream 200 images=%d bytes=%d mode=%s lang=%s blocks=%d "
                    "tokens=%d latency_ms=%.1f", rid, len(req.images), req.n_bytes, job.mode, job.language, blocks,
                    len(r.tokens), latency * 1000)  # fmt: skip
        final = report_response(r, job.language, self.model_name, latency, 1)
        yield sse_event("final", {**final, "blocks": blocks})

    async def _row_events(self, request: Request, handle: RowHandle, job: DecodeJob, req: ReportRequest,
                          t0: float) -> AsyncIterator[bytes]:  # fmt: skip
        """Continuous path: one SSE block per row event; the row shares its steps with other requests."""
        rid, text = request_id(request), ""
        try:
            while True:
                try:
                    ev = await handle.next_block()
                except ApiError as e:
                    logger.info("request_id=%s stream stopped after %d blocks: %s", rid, handle.blocks, e.status)
                    yield sse_event("error", {"error": e.message, "status": e.status, "request_id": rid})
                    return
                if ev is None:
                    break
                payload = row_block_payload(ev, handle.text(), len(handle.tokens), text, t0)
                text = payload["text"]
                yield sse_event("block", payload)
        finally:  # the client closed the stream (generator closed / task cancelled): stop decoding for it
            handle.cancel()
        latency = time.perf_counter() - t0
        r = handle.report()
        logger.info("request_id=%s POST /v1/reports/stream 200 images=%d bytes=%d mode=%s lang=%s blocks=%d "
                    "tokens=%d batch=%d latency_ms=%.1f", rid, len(req.images), req.n_bytes, job.mode, job.language,
                    handle.blocks, len(r.tokens), handle.rows_in_step, latency * 1000)  # fmt: skip
        final = report_response(r, job.language, self.model_name, latency, handle.rows_in_step)
        yield sse_event("final", {**final, "blocks": handle.blocks})

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> Response:
        ok = self.ready
        body = {"ready": ok, "model": self.model_name, "warmup_ms": self.warmup_ms}
        return JSONResponse(body, 200 if ok else 503)

    @api.get("/v1/models", responses={401: ERROR_RESPONSES[401]})
    async def models(self, request: Request) -> dict:
        """The served model, its decode settings and limits, and this replica's observed batch sizes."""
        self._authorize(request)
        g, c = self.gen, self.cfg
        ctx = serve.get_replica_context()
        replica = getattr(getattr(ctx, "replica_id", None), "unique_id", "") or ""
        model = {
            "id": self.model_name, "object": "model", "block_size": g.cfg.block_size, "modes": ["onestep", "multistep", "ar"],
            "default_mode": g.cfg.mode, "cache": g.cfg.cache, "languages": ["en", "zh"],
            "default_max_new_tokens": g.cfg.max_new_tokens, "max_new_tokens_limit": c.max_new_tokens_limit,
            "limits": {"max_body_bytes": c.max_body_bytes, "max_images": c.max_images, "max_pixels": c.max_pixels,
                       "decode_timeout_s": c.decode_timeout_s},
            "batching": self._batching_settings(),
        }  # fmt: skip
        return {"object": "list", "data": [model], "replica": replica, "batching": self._batching_state()}

    def _batching_settings(self) -> dict:
        c = self.cfg
        if self.cont is None:
            return {"mode": "static", "max_batch_size": c.max_batch_size, "batch_wait_timeout_s": c.batch_wait_timeout_s}
        return {"mode": "continuous", "slots": self.cont.scheduler.slots, "max_queue": c.max_queue}

    def _batching_state(self) -> dict:
        """Observed batching: slots in use, queue length, rows per step (continuous) or batch sizes."""
        if self.cont is None:
            return {"mode": "static", **self.stats.as_dict()}
        return {"mode": "continuous", **self.cont.scheduler.snapshot()}

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi_json(self, request: Request) -> JSONResponse:
        if self._openapi is None:
            self._openapi = service_openapi(request.app, self.limits, auth_on=bool(self.token))
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
