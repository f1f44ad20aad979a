"""ReportGenerator: the pure decoder class behind the CLI and evaluation.

It validates a request before any compute (block size vs. the checkpoint's, S <= B, images present,
prompt + max_new_tokens within the model context) and builds the prompts, both through the row
factory the serving ingress uses too (`rows.py`), and decodes them on the
static-slot `DecodeEngine` (`decode.engine: static`, the default; one engine per generator, its
K/V slots allocated on first use) or on the reference decoders (`decode.engine: reference`, and
always for `cache: none`, the no-cache recompute check). It returns parsed reports with forward
counts (per row on the engine: its prefill plus the steps it took part in) and timings.
`stream()` yields each finished block for incremental output.

Usage:
    gen = ReportGenerator(load_checkpoint(path), DecodeConfig(mode="onestep"), PromptConfig())
    reports = gen.generate([[img_pa, img_lat], [img2]], language="en")
    run = gen.stream([[img]]); [ev for ev in run]; run.reports
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

from PIL import Image

from echo_ray.config import DecodeConfig, PromptConfig
from echo_ray.decode.ar import ARDecoder
from echo_ray.decode.batch import PromptBatch, collate_prompts
from echo_ray.decode.blockwise import BlockDecoder
from echo_ray.decode.events import BlockEvent
from echo_ray.decode.engine import DecodeEngine, RowMode
from echo_ray.decode.engine_batch import EngineBatch
from echo_ray.decode.rows import ModelSide, RowFactory
from echo_ray.decode.samplers import ConfidenceSampler, OneStepSampler, QuotaSampler
from echo_ray.decode.settings import resolve_decode  # noqa: F401 (re-exported: callers import it from here)
from echo_ray.model.checkpoint import Checkpoint
from echo_ray.model.prompt import StudyPrompt
from echo_ray.report import parse_report

log = logging.getLogger(__name__)


@dataclass
class GeneratedReport:
    text: str
    findings: str
    impression: str
    complete: bool
    tokens: list[int]
    hit_max_length: bool
    forward_passes: int
    prefill_s: float
    decode_s: float
    latency_s: float
    mode: str
    block_size: int

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_tokens(cls, tokenizer, tokens: list[int], **fields) -> "GeneratedReport":
        """Decode and parse a row's tokens; `fields` are the remaining (count and timing) fields."""
        text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        parsed = parse_report(text)
        return cls(text=text, findings=parsed.findings, impression=parsed.impression, complete=parsed.complete,
                   tokens=list(tokens), **fields)  # fmt: skip


def make_sampler(cfg: DecodeConfig):
    """The commit policy of a resolved block-decoding config (echo_ray.decode.samplers)."""
    if cfg.mode == "onestep":
        return OneStepSampler()
    if cfg.schedule == "quota":
        return QuotaSampler(int(cfg.block_size), cfg.steps, cfg.threshold)
    return ConfidenceSampler(steps=cfg.steps, threshold=cfg.threshold)


class ReferenceRun:
    """A reference decoder over a collated batch, with the same face as `EngineBatch`."""

    def __init__(self, decoder, batch: PromptBatch):
        self.decoder, self.batch = decoder, batch

    @property
    def stats(self):
        return self.decoder.stats

    @property
    def forwards(self) -> list[int]:
        return [self.decoder.stats.forwards] * self.batch.n_rows

    def events(self) -> Iterator[BlockEvent]:
        return self.decoder.stream(self.batch)


class Generation:
    """An in-progress decode: iterate for BlockEvents; `.reports` once exhausted."""

    def __init__(self, gen: "ReportGenerator", n_rows: int, run: EngineBatch | ReferenceRun, cfg: DecodeConfig,
                 t_start: float):  # fmt: skip
        self._gen, self._n, self._run, self._cfg, self._t0 = gen, n_rows, run, cfg, t_start
        self.tokens: list[list[int]] = [[] for _ in range(n_rows)]
        self.reports: list[GeneratedReport] | None = None

    def __iter__(self) -> Iterator[BlockEvent]:
        hit = [False] * self._n
        for ev in self._run.events():
            for i, toks in enumerate(ev.tokens):
                self.tokens[i].extend(toks)
            hit = ev.hit_max
            yield ev
        self.reports = [self._report(i, toks, h) for i, (toks, h) in enumerate(zip(self.tokens, hit))]

    def text(self, row: int) -> str:
        return self._gen.tokenizer.decode(self.tokens[row], skip_special_tokens=True)

    def _report(self, row: int, toks: list[int], hit: bool) -> GeneratedReport:
        st = self._run.stats
        return GeneratedReport.from_tokens(
            self._gen.tokenizer, toks, hit_max_length=hit, forward_passes=self._run.forwards[row],
            prefill_s=st.prefill_s, decode_s=st.decode_s, latency_s=time.perf_counter() - self._t0,
            mode=self._cfg.mode, block_size=int(self._cfg.block_size or 1),
        )  # fmt: skip


class ReportGenerator:
    """Checkpoint + decode settings -> reports for batches of studies."""

    def __init__(self, ckpt: Checkpoint, decode: DecodeConfig, prompt: PromptConfig, override_block: bool = False):
        self.ckpt, self.prompt_cfg, self.override_block = ckpt, prompt, override_block
        self.rows = RowFactory(ModelSide.of(ckpt), decode, prompt, override_block)  # prompts and their checks
        self.cfg = self.rows.cfg
        self.tokenizer = ckpt.tokenizer
        self.max_context = self.rows.side.max_context
        self._engine: DecodeEngine | None = None

    @property
    def engine(self) -> DecodeEngine:
        """The generator's decode engine (slots allocated on first use)."""
        if self._engine is None:
            slots = replace(self.cfg.slots, max_len=min(self.cfg.slots.max_len, self.max_context))
            self._engine = DecodeEngine(self.ckpt.model, self.ckpt.mask_id, self.ckpt.eos_id, slots)
        return self._engine

    def prompts(self, studies: list[list[Image.Image]], language: str) -> list[StudyPrompt]:
        return self.rows.prompts(studies, language)

    def _decoder(self, cfg: DecodeConfig):
        m, c = self.ckpt.model, self.ckpt
        if cfg.mode == "ar":
            return ARDecoder(m, c.eos_id, cfg.max_new_tokens)
        return BlockDecoder(m, c.mask_id, c.eos_id, int(cfg.block_size), make_sampler(cfg), cfg.cache, cfg.max_new_tokens)

    def check_fits(self, prompt_len: int, max_new_tokens: int, cfg: DecodeConfig) -> None:
        """Refuse prompt + budget beyond the model context, or the engine's slots when it decodes."""
        self.rows.check_fits(prompt_len, max_new_tokens, cfg)

    def _settings(self, overrides: dict) -> DecodeConfig:
        """The generator's decode settings with per-call overrides applied and resolved."""
        return self.rows.settings(**overrides)

    def stream(self, studies: list[list[Image.Image]], language: str | None = None, **overrides) -> Generation:
        """Start decoding; overrides are DecodeConfig fields (mode, max_new_tokens, cache, ...)."""
        t0 = time.perf_counter()
        cfg = self._settings(overrides)
        language = language or cfg.language
        prompts = self.prompts(studies, language)
        self.check_fits(max(p.length for p in prompts), cfg.max_new_tokens, cfg)
        if cfg.engine == "static" and cfg.cache != "none":
            run = EngineBatch(self.engine, prompts, RowMode.from_decode(cfg), cfg.max_new_tokens)
            return Generation(self, len(prompts), run, cfg, t0)
        block = 1 if cfg.mode == "ar" else int(cfg.block_size)
        mask_id = self.ckpt.mask_id if self.ckpt.mask_id is not None else self.ckpt.pad_id
        batch = collate_prompts(self.ckpt.model, prompts, block, self.ckpt.pad_id, mask_id)
        return Generation(self, batch.n_rows, ReferenceRun(self._decoder(cfg), batch), cfg, t0)

    def generate(self, studies: list[list[Image.Image]], language: str | None = None, **overrides) -> list[GeneratedReport]:
        """Reports for all studies. On the engine, a traced mode (multi-step) needs its rows in slots
        at once, so more studies than `decode.slots.max_rows` are decoded in consecutive batches."""
        size = len(studies) or 1
        cfg = self._settings(overrides)
        if cfg.engine == "static" and cfg.cache != "none" and EngineBatch.needs_all_rows(RowMode.from_decode(cfg)):
            size = min(size, self.cfg.slots.max_rows)
        reports: list[GeneratedReport] = []
        for i in range(0, max(1, len(studies)), size):
            run = self.stream(studies[i : i + size], language, **overrides)
            for _ in run:
                pass
            assert run.reports is not None
            reports += run.reports
        return reports
