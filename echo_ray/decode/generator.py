"""ReportGenerator: the pure decoder class behind the CLI, evaluation and the Serve deployment.

It validates a request before any compute (block size vs. the checkpoint's, S <= B, images present,
prompt + max_new_tokens within the model context), builds the prompts, and decodes them on the
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
from echo_ray.decode.blockwise import BlockDecoder, BlockEvent
from echo_ray.decode.engine import DecodeEngine, RowMode
from echo_ray.decode.engine_batch import EngineBatch
from echo_ray.decode.samplers import ConfidenceSampler, OneStepSampler, QuotaSampler
from echo_ray.errors import InputError
from echo_ray.model.checkpoint import Checkpoint
from echo_ray.model.published import missing_mask_message
from echo_ray.model.prompt import StudyPrompt, build_prompt
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


def resolve_block_size(ckpt: Checkpoint, cfg: DecodeConfig, override_block: bool) -> int:
    """Block size: the checkpoint's metadata, else `cfg.block_size`, else its `_block4/8` name."""
    trained = ckpt.block_size
    named = getattr(ckpt, "name_block_size", None)
    if trained is None and cfg.block_size is None and named is not None:
        log.info("checkpoint %s records no block size; using %d from its name", ckpt.path, named)
        return named
    block = cfg.block_size or trained
    if block is None:
        raise InputError(f"checkpoint {ckpt.path} records no block size; pass --block-size (or decode.block_size)")
    if block < 1:
        raise InputError(f"block size must be >= 1, got {block}")
    if trained is not None and block != trained and not override_block:
        raise InputError(
            f"block size {block} differs from the checkpoint's trained block size {trained} "
            "(pass --override-block-size to decode with it anyway)"
        )
    return block


def _ignored_steps(cfg: DecodeConfig) -> str:
    """Why `cfg.steps` would have no effect ('' when it is used)."""
    if cfg.steps is None:
        return ""
    if cfg.mode == "ar":
        return "the AR decoder has no steps"
    if cfg.mode == "onestep":
        return "" if cfg.steps == 1 else "one-step decoding takes exactly one step per block"
    if cfg.schedule == "confidence" and cfg.threshold is not None:
        return "the dynamic confidence schedule (threshold set) ignores steps; use schedule 'quota' for both"
    return ""


def resolve_decode(ckpt: Checkpoint, cfg: DecodeConfig, override_block: bool = False) -> DecodeConfig:
    """Fill the block size from the checkpoint and check the combination; errors before compute.

    A `steps` value the chosen mode / schedule would ignore is refused, never dropped.
    """
    why = _ignored_steps(cfg)
    if why:
        raise InputError(f"steps={cfg.steps} given but {why} (mode {cfg.mode}, schedule {cfg.schedule})")
    if cfg.mode == "ar":
        return replace(cfg, block_size=cfg.block_size or 1)
    if ckpt.mask_id is None:
        raise InputError(missing_mask_message(ckpt.path))
    block = resolve_block_size(ckpt, cfg, override_block)
    steps = None
    if cfg.mode == "multistep" and (cfg.threshold is None or cfg.schedule == "quota"):
        steps = cfg.steps or block
        if steps > block:
            raise InputError(f"steps per block S={steps} exceeds the block size B={block}")
        if steps < 1:
            raise InputError(f"steps per block S={steps} must be >= 1")
    if cfg.threshold is not None and not 0.0 < cfg.threshold <= 1.0:
        raise InputError(f"threshold tau={cfg.threshold} must be in (0, 1]")
    return replace(cfg, block_size=block, steps=steps)


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
        self.cfg = resolve_decode(ckpt, decode, override_block)
        self.tokenizer = ckpt.tokenizer
        self.max_context = int(ckpt.model.config.get_text_config().max_position_embeddings)
        self._engine: DecodeEngine | None = None

    @property
    def engine(self) -> DecodeEngine:
        """The generator's decode engine (slots allocated on first use)."""
        if self._engine is None:
            slots = replace(self.cfg.slots, max_len=min(self.cfg.slots.max_len, self.max_context))
            self._engine = DecodeEngine(self.ckpt.model, self.ckpt.mask_id, self.ckpt.eos_id, slots)
        return self._engine

    def prompts(self, studies: list[list[Image.Image]], language: str) -> list[StudyPrompt]:
        if not studies:
            raise InputError("no studies to decode")
        return [build_prompt(self.tokenizer, self.ckpt.image_processor, imgs, language, self.prompt_cfg) for imgs in studies]

    def _decoder(self, cfg: DecodeConfig):
        m, c = self.ckpt.model, self.ckpt
        if cfg.mode == "ar":
            return ARDecoder(m, c.eos_id, cfg.max_new_tokens)
        return BlockDecoder(m, c.mask_id, c.eos_id, int(cfg.block_size), make_sampler(cfg), cfg.cache, cfg.max_new_tokens)

    def check_fits(self, prompt_len: int, max_new_tokens: int, cfg: DecodeConfig) -> None:
        """Refuse prompt + budget beyond the model context, or the engine's slots when it decodes."""
        on_engine = cfg.engine == "static" and cfg.cache != "none"
        limit = min(self.max_context, cfg.slots.max_len) if on_engine else self.max_context
        if prompt_len + max_new_tokens > limit:
            where = "the model context" if limit == self.max_context else "the decode engine's slot context"
            raise InputError(
                f"prompt of {prompt_len} tokens + max_new_tokens {max_new_tokens} exceeds {where} of {limit} "
                f"tokens (model context {self.max_context}, decode.slots.max_len {cfg.slots.max_len})"
            )

    def _settings(self, overrides: dict) -> DecodeConfig:
        """The generator's decode settings with per-call overrides applied and resolved."""
        return resolve_decode(self.ckpt, replace(self.cfg, **overrides), self.override_block) if overrides else self.cfg

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
