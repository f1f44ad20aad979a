"""The DCD row source inside each Ray Train worker: teacher stream in, rows for the shared loop out.

The shared loop (echo_ray.train.loop) asks its row source for micro-batches of rows; for DCD that
source is `StreamRows`, which reads this worker's queue (see `stream` for the packet protocol):
a step packet is one micro-batch of trajectory rows for `DcdStage.build_batch`; a round_end packet
triggers the round's bookkeeping on rank 0: the student's one-step agreement with the teacher on
the held-out prompts (`agreement`), the trainer's idle fraction so far, and the teacher metrics the
feeder attached, appended to `<output_dir>/dcd_rounds.jsonl` and TensorBoard (`dcd/*`). Rank 0
also measures agreement once before the first step (round -1: the teacher's own one-step score,
since the student starts as the teacher). After the last step the loop calls `finish`, which
reads the last round_end, evaluates the final model, and averages the idle time over ranks.

Idle fraction = seconds blocked on the queue / seconds in the loop (agreement evaluation time
excluded). The wait for the very first packet (trainer and teacher start-up) is included in
`idle_fraction` and left out of `idle_fraction_steady`.

With ZeRO-3 the weights are partitioned and a plain forward outside the engine is impossible, so
the in-loop agreement is skipped (the driver still scores the final model).

Usage (the driver hands the factory to the loop through train_loop_config["row_source"]):
    source = DcdRowSource(queues, heldout_rows, max_new_tokens=160, output_dir="runs/dcd")
    rows_iter = source(job, parts, rank, position); rows, pos = next(rows_iter); rows_iter.finish(state)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from echo_ray.errors import InputError
from echo_ray.model.prompt import build_prompt
from echo_ray.storage import is_s3, join, read_image, write_text
from echo_ray.train.data import DataPosition
from echo_ray.train.dcd.agreement import onestep_agreement
from echo_ray.train.dcd.store import from_row
from echo_ray.train.dcd.stream import PacketReader
from echo_ray.train.metrics import worker_line

ROUNDS_FILE = "dcd_rounds.jsonl"


@dataclass
class DcdRowSource:
    """Picklable factory: (job, parts, rank, position) -> this worker's `StreamRows`."""

    queues: list
    heldout: list[dict]  # held-out teacher trajectories as `store.to_row` dicts
    max_new_tokens: int
    output_dir: str

    def __call__(self, job, parts, rank: int, position: DataPosition) -> "StreamRows":
        if position.batches:
            raise RuntimeError("a DCD run cannot resume mid-stream; rerun it (or replay its trajectories)")
        evaluate = job.dist.backend == "ddp" or job.dist.zero_stage < 3
        return StreamRows(self.queues[rank], self.heldout if evaluate else [], parts, rank, self)


class StreamRows:
    """Iterator of (rows, DataPosition) for the loop, plus round bookkeeping."""

    def __init__(self, queue, heldout: list[dict], parts, rank: int, source: DcdRowSource):
        self.reader = PacketReader(queue)
        self._packets = iter(self.reader)
        self.parts, self.rank, self.source = parts, rank, source
        self.heldout = [from_row(r) for r in heldout]
        self._prompts = None
        self.t0 = time.perf_counter()
        self.eval_s = 0.0
        self.rounds: list[dict] = []
        self.steps = 0
        self.first_step_at: float | None = None
        self._started = False

    def __iter__(self) -> "StreamRows":
        return self

    def __next__(self) -> tuple[list[dict], DataPosition]:
        if not self._started:
            self._started = True
            self._round_record(-1, {})
        for packet in self._packets:
            if packet["kind"] == "round_end":
                self._round_record(packet["round"], packet["stats"])
                continue
            self.steps += 1
            if self.first_step_at is None:
                self.first_step_at = time.time()
            return packet["rows"], DataPosition(epoch=int(packet["round"]), batches=int(packet["step"]))
        raise StopIteration

    # --- bookkeeping -------------------------------------------------------------------------
    def idle(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.t0 - self.eval_s, 1e-9)
        first = self.reader.first_wait_s or 0.0
        return {
            "idle_fraction": (self.reader.wait_s + first) / wall,
            "idle_fraction_steady": self.reader.wait_s / max(wall - first, 1e-9),
            "wait_s": self.reader.wait_s + first,
            "first_wait_s": first,
            "wall_s": wall,
        }

    def _heldout_prompts(self):
        if self._prompts is None:
            p = self.parts
            self._prompts = []
            for rec in self.heldout:
                pil = [read_image(im["path"]) for im in rec.task.images]
                prompt = build_prompt(p.tokenizer, p.image_processor, pil, rec.task.language, p.prompt)
                if not np.array_equal(prompt.input_ids.numpy(), rec.prompt_ids):
                    raise InputError(f"held-out study {rec.task.study_id}: the student's prompt differs from the teacher's")
                self._prompts.append(prompt)
        return self._prompts

    def _agreement(self) -> dict[str, float]:
        if not self.heldout:
            return {}
        t0 = time.perf_counter()
        p = self.parts
        out = onestep_agreement(p.model, self._heldout_prompts(), [r.tokens.tolist() for r in self.heldout],
                                p.mask_id, p.eos_id, p.pad_id, p.block_size, self.source.max_new_tokens)  # fmt: skip
        self.eval_s += time.perf_counter() - t0
        return {"agreement": out["agreement"], "exact": out["exact"], "eval_s": time.perf_counter() - t0}

    def _round_record(self, r: int, teacher_stats: dict) -> None:
        if self.rank != 0:
            return
        rec = {"round": r, "time": time.time(), "steps": self.steps, "first_step_at": self.first_step_at,
               **self._agreement(), **self.idle(), **{f"teacher_{k}" if not k.startswith("teacher") else k: v
                                                       for k, v in teacher_stats.items() if k != "round"}}  # fmt: skip
        self.rounds.append(rec)
        self._write(rec)
        shown = {k: round(v, 4) for k, v in rec.items() if k in ("agreement", "idle_fraction", "teacher_records_per_s")}
        worker_line(f"[dcd] round {r}: {shown}")

    def _write(self, rec: dict) -> None:
        out = self.source.output_dir
        write_text(join(out, ROUNDS_FILE), "".join(json.dumps(x) + "\n" for x in self.rounds))
        if is_s3(out):
            return
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(Path(out) / "tb")) as tb:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("round", "time", "first_step_at"):
                    tb.add_scalar(f"dcd/{k}", v, rec["round"] + 1)

    def finish(self, state) -> dict:
        """After the last step: read the final round_end, score the final model, average idle time."""
        import torch.distributed as dist

        untrained = 0
        for packet in self._packets:  # ends at "stop"
            if packet["kind"] == "round_end":
                self._round_record(packet["round"], packet["stats"])
            else:
                untrained += len(packet["rows"])
        idle = self.idle()
        t = torch.tensor([idle["wait_s"], idle["wall_s"], float(untrained)], dtype=torch.float64)
        if dist.is_initialized():
            on = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces device tensors only
            t = t.to(on)
            dist.all_reduce(t)
            t = t.cpu()
        summary = {"trainer_idle_fraction": float(t[0] / t[1]), "untrained_rows": int(t[2]), "steps": self.steps,
                   "first_step_at": self.first_step_at, "rounds": self.rounds}  # fmt: skip
        if self.rank == 0:
            write_text(join(self.source.output_dir, "dcd_summary.json"), json.dumps(summary, indent=2))
        return summary
