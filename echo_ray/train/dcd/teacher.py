"""TeacherWorker: the body of one DCD teacher actor (frozen ECHO_Base, multi-step decoding).

Each call decodes a batch of `PromptTask`s with the static confidence sampler (S steps per block,
method.md "Decoding") and the fused block KV cache, recording the top-K at every commit, on the
static-slot `DecodeEngine` (`engine="static"`, the default; slots for one batch, allocated once per
actor) or on the reference `BlockDecoder(record_topk=K)` (`engine="reference"`; same tokens and
traces), and returns one `TrajectoryRecord` per prompt. With `spec.student` (on-policy DCD) the
rounds' prompts are first decoded one step per block by that student and the teacher labels its
reports (`on_policy`); held-out prompts (round -1) stay the teacher's own decodes. A study whose images
cannot be read is returned as a failure (uid, one-line reason) instead of a record, so the pool can
account for it; anything else is a bug and propagates. The class is plain Python; `TeacherPool`
wraps it with `ray.remote` (1 GPU per actor on a cluster, a CPU fraction locally).

Usage:
    w = TeacherWorker(TeacherSpec(path="runs/rad/final", steps=4, top_k=64, max_new_tokens=160, model=cfg.model))
    result = w.decode(tasks, round_index=0)        # TeacherResult(records, failures, seconds, tokens)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from echo_ray.config import ModelConfig, PromptConfig, SlotsConfig
from echo_ray.decode.batch import collate_prompts
from echo_ray.decode.blockwise import BlockDecoder
from echo_ray.decode.engine import DecodeEngine, RowMode
from echo_ray.decode.engine_batch import EngineBatch
from echo_ray.decode.samplers import ConfidenceSampler
from echo_ray.errors import InputError
from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.train.dcd.on_policy import label_blocks, on_policy_records, report_context, student_reports
from echo_ray.train.dcd.trajectory import PromptTask, TrajectoryRecord, records_from_events
from echo_ray.train.examples import read_prompt


@dataclass
class TeacherSpec:
    """Everything an actor needs to load the teacher and decode (picklable)."""

    path: str
    steps: int | None = None  # None = block size
    top_k: int = 64
    max_new_tokens: int = 160
    # The run's `model` section, as the student's stage loads it: the same image bounds give the same prompts.
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    device: str = "auto"  # echo_ray.model.checkpoint.resolve_device: cuda when the actor was given a GPU
    threads: int = 1  # torch CPU threads (the actor's CPU share, rounded up)
    engine: str = "static"  # static = DecodeEngine; reference = BlockDecoder
    batch_size: int = 4  # engine slots: the most prompts one decode call holds
    student: str = ""  # on-policy rounds: the teacher labels this checkpoint's one-step reports


@dataclass
class TeacherResult:
    records: list[TrajectoryRecord]
    failures: list[tuple[str, str]]  # (uid, reason) of tasks that produced no record
    seconds: float
    tokens: int
    teacher: str
    round_index: int = 0
    stored: bool = False  # the records are already in the trajectory store (a review pass): not written again


class TeacherWorker:
    """Loads the frozen teacher once; `decode` turns task batches into trajectory records."""

    def __init__(self, spec: TeacherSpec, name: str = ""):
        torch.set_num_threads(max(1, spec.threads))
        self.spec, self.name = spec, name or f"teacher-{os.getpid()}"
        self.ckpt = load_checkpoint(spec.path, spec.model, spec.device)
        for p in self.ckpt.model.parameters():
            p.requires_grad_(False)
        self.block_size = int(self.ckpt.trained_block_size)  # published teachers: from the _blockN name
        self.steps = int(spec.steps or self.block_size)
        if spec.engine not in ("static", "reference"):
            raise InputError(f"teacher engine must be 'static' or 'reference', got {spec.engine!r}")
        self._engines: dict[str, DecodeEngine] = {}
        self.student = None
        if spec.student:
            self.student = load_checkpoint(spec.student, spec.model, spec.device)
            self.student.model.requires_grad_(False)

    def _engine_for(self, prompts, ckpt=None, key: str = "teacher") -> DecodeEngine:
        """One engine per model and actor, regrown only if a call brings more or longer prompts than it holds."""
        rows = max(len(prompts), self.spec.batch_size)
        length = max(p.length for p in prompts) + self.spec.max_new_tokens
        e = self._engines.get(key)
        if e is None or e.cfg.max_rows < rows or e.cfg.max_len < length:
            c = ckpt or self.ckpt
            slots = SlotsConfig(max_rows=rows, max_len=max(length, e.cfg.max_len if e else 0))
            self._engines[key] = DecodeEngine(c.model, c.mask_id, c.eos_id, slots)
        return self._engines[key]

    def _prompt(self, task: PromptTask):
        if not task.images:
            raise InputError(f"study {task.study_id}: no images")
        paths = [im["path"] for im in task.images]
        return read_prompt(paths, task.language, self.ckpt.tokenizer, self.ckpt.image_processor, self.spec.prompt)

    def decode(self, tasks: list[PromptTask], round_index: int = 0) -> TeacherResult:
        t0 = time.perf_counter()
        ok, prompts, failures = [], [], []
        for task in tasks:
            try:
                prompts.append(self._prompt(task))
                ok.append(task)
            except InputError as e:
                failures.append((task.uid, str(e)))
        records: list[TrajectoryRecord] = []
        if ok and self.student is not None and round_index >= 0:
            records = self._on_policy(ok, prompts, round_index)
        elif ok:
            events = self._events(prompts)
            c = self.ckpt
            records = records_from_events(events, ok, [p.input_ids for p in prompts], self.block_size, self.steps,
                                          c.eos_id, teacher=self.name, round_index=round_index)  # fmt: skip
        tokens = sum(r.response_len for r in records)
        return TeacherResult(records, failures, time.perf_counter() - t0, tokens, self.name, round_index)

    def _on_policy(self, tasks: list[PromptTask], prompts, round_index: int) -> list[TrajectoryRecord]:
        """The student's one-step reports, labelled block by block by the teacher (`on_policy`)."""
        c, B = self.ckpt, self.block_size
        reports = student_reports(self._engine_for(prompts, self.student, "student"), prompts, B, self.spec.max_new_tokens)
        contexts = [report_context(toks, p.length, B, c.eos_id) for (toks, _), p in zip(reports, prompts)]
        labels = label_blocks(c.model, prompts, contexts, B, self.steps, self.spec.top_k, c.mask_id, c.pad_id)
        return on_policy_records(tasks, prompts, reports, labels, contexts, B, self.steps, c.eos_id,
                                 teacher=self.name, round_index=round_index)  # fmt: skip

    def _events(self, prompts) -> list:
        c, spec = self.ckpt, self.spec
        if spec.engine == "static":
            mode = RowMode("multistep", self.block_size, steps=self.steps, record_topk=spec.top_k)
            return list(EngineBatch(self._engine_for(prompts), prompts, mode, spec.max_new_tokens).events())
        batch = collate_prompts(c.model, prompts, self.block_size, c.pad_id, c.mask_id)
        dec = BlockDecoder(c.model, c.mask_id, c.eos_id, self.block_size, ConfidenceSampler(steps=self.steps),
                           cache="fused", max_new_tokens=spec.max_new_tokens, record_topk=spec.top_k)  # fmt: skip
        return list(dec.stream(batch))

    def ping(self) -> str:
        return self.name
