"""The DCD row source inside each Ray Train worker: teacher stream in, rows and round ends out.

The shared loop (echo_ray.train.loop) opens the `DcdRowSource` it is given (echo_ray.train.rows)
and gets this worker's `RowStream`:
* `StreamRows` only reads this worker's queue (typed messages, `messages`; protocol in `stream`):
  a `Step` becomes one micro-batch of `TrajectoryRecord`s for `DcdStage.build_batch`; a `RoundEnd`
  is yielded as it is, a loop event, which the loop hands to the callbacks;
* `DcdRounds` (the callbacks) does the round bookkeeping on rank 0: the student's one-step
  agreement with the teacher on the held-out prompts (`agreement`), the trainer's idle fraction so
  far, and the teacher metrics the feeder attached, appended to `<output_dir>/dcd_rounds.jsonl` and
  TensorBoard (`dcd/*`). `on_start` measures agreement once before the first step (round -1: the
  teacher's own one-step score, since the student starts as the teacher); with `train.dcd.ema_decay`
  every score and every saved best is of the averaged weights, the ones the run exports; `on_finish` reads the
  last RoundEnd, evaluates the final model, and averages the idle time over ranks. Every scored
  round also goes through `best.BestRound`: a new best is saved to `<output_dir>/best` when
  `train.dcd.keep_best` is on (round -1 included), a round more than `agreement_drop_warn` below the
  best so far is a warning line, and the summary gets "best_round", "best_agreement",
  "final_agreement", "best_dir" and "warnings" (the driver then picks the final model, `best.promote_best`).

A train worker that dies restarts the group from the last checkpoint (Ray Train `FailureConfig`);
each worker then replays, from the feeder's packet log and the trajectory store, the packets the
dead group had already taken after that checkpoint, in order, before reading its queue again
(`stream.replay_packets`). Idle time after a restart counts from the restart.

Idle fraction = seconds blocked on the queue / seconds in the loop (agreement evaluation time
excluded). The wait for the very first packet (trainer and teacher start-up) is included in
`idle_fraction` and left out of `idle_fraction_steady`.

With ZeRO-3 the weights are partitioned and a plain forward outside the engine is impossible, so
the in-loop agreement is skipped: no round is scored, keep_best cannot work, and the summary's
"keep_best_unavailable" says so (the run itself goes on).

Usage (the driver passes the source to the loop as train_loop_config["rows"]):
    source = DcdRowSource(queues, heldout_records, max_new_tokens=160, output_dir="runs/dcd")
    stream = source.open(job, parts, rank, position); stream.next_rows(); stream.callbacks.on_finish(state)
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from echo_ray.errors import InputError
from echo_ray.storage import exists, is_s3, join, read_text, write_text
from echo_ray.train.data import DataPosition
from echo_ray.train.dcd.agreement import onestep_agreement
from echo_ray.train.dcd.best import BestKeeping, BestRound, save_best, unscored_reason, warning_text
from echo_ray.train.dcd.messages import RoundEnd, Step, message_key, unknown
from echo_ray.train.dcd.store import read_trajectories
from echo_ray.train.dcd.stream import PACKETS_FILE, PacketReader, replay_packets
from echo_ray.train.dcd.trajectory import TrajectoryRecord
from echo_ray.train.examples import read_prompt
from echo_ray.train.metrics import worker_line
from echo_ray.train.rows import LoopCallbacks, LoopEvent, RowStream

ROUNDS_FILE = "dcd_rounds.jsonl"

@dataclass
class DcdRowSource:
    """Picklable row source: this worker's teacher stream and its round bookkeeping.

    `trajectories`: the local trajectory store with the feeder's packet log (`stream.PACKETS_FILE`);
    with it a restarted worker group replays what the dead one had taken from the queues.
    """

    queues: list
    heldout: list[TrajectoryRecord]  # the teacher's trajectories of the held-out prompts
    max_new_tokens: int
    output_dir: str
    trajectories: str = ""

    def open(self, job, parts, rank: int, position: DataPosition) -> RowStream:
        replay, logged = None, set()  # without a packet log (trajectories not stored) a restarted group cannot replay
        if self.trajectories:
            replay, logged = replay_packets(Path(self.trajectories) / PACKETS_FILE, self._records_by_uid, rank,
                                            position.batches)  # fmt: skip
        elif position.batches:
            raise RuntimeError("a DCD run without stored trajectories cannot resume mid-stream; rerun it")
        if position.batches:
            worker_line(f"[dcd] rank {rank} resumes after step {position.batches}: up to {len(replay)} packet(s) to replay")
        evaluate = job.dist.backend == "ddp" or job.dist.zero_stage < 3
        rows = StreamRows(self.queues[rank], replay, position.batches, skip=logged)
        best = BestKeeping(job.cfg.keep_best, BestRound(job.cfg.agreement_drop_warn), unscored_reason(evaluate, self.heldout))
        return RowStream(rows, DcdRounds(rows, self.heldout if evaluate else [], parts, rank, self, best))

    def _records_by_uid(self, uids: set[str]) -> dict[str, TrajectoryRecord]:
        return {rec.uid: rec for rec in read_trajectories(self.trajectories) if rec.uid in uids}


class StreamRows:
    """Iterator over this worker's packets: (records, DataPosition) per Step, RoundEnd events as they are.

    `replay`: packets to deliver before the live queue (after a restart); `skip`: keys of live packets
    not to deliver again (all that were logged when the stream opened); `steps`: step packets already
    taken before this stream (the checkpoint's).
    """

    def __init__(self, queue, replay: list[Step | RoundEnd] | None = None, steps: int = 0,
                 skip: set[tuple] | None = None):  # fmt: skip
        self.reader = PacketReader(queue)
        self._packets = iter(self.reader)
        self._replay = list(replay or [])
        self._seen: set[tuple] = set(skip or ())  # packets logged at open: replayed, or trained before
        self.t0 = time.perf_counter()
        self.steps = steps
        self.replayed = 0
        self.first_step_at: float | None = None

    def __iter__(self) -> "StreamRows":
        return self

    def _next_packet(self) -> Step | RoundEnd:
        """Replayed packets first, then the live queue minus what was replayed.

        The log holds every packet before it is put, so a live packet that was logged when the stream
        opened was either replayed now or trained before the checkpoint: it is skipped. Reading
        the queue only after the replay matters: a peer rank waits in the first collective for this
        rank's replayed steps while the feeder may be blocked on that peer's full queue."""
        if self._replay:
            packet = self._replay.pop(0)
            self._seen.add(message_key(packet))
            self.replayed += 1
            return packet
        while True:
            packet = next(self._packets)  # StopIteration at Stop
            if message_key(packet) not in self._seen:
                return packet

    def __next__(self) -> tuple[list[TrajectoryRecord], DataPosition] | RoundEnd:
        match self._next_packet():
            case RoundEnd() as event:
                return event
            case Step(round=r, step=step, records=records):
                self.steps += 1
                if self.first_step_at is None:
                    self.first_step_at = time.time()
                return list(records), DataPosition(epoch=r, batches=step)
            case other:
                unknown(other)


class DcdRounds(LoopCallbacks):
    """Round records (rank 0) and the end-of-run summary (every rank)."""

    def __init__(self, rows: StreamRows, heldout: list[TrajectoryRecord], parts, rank: int, source: DcdRowSource,
                 best: BestKeeping):  # fmt: skip
        self.rows, self.parts, self.rank, self.source = rows, parts, rank, source
        self.heldout = heldout
        self._prompts = None
        self.eval_s = 0.0
        self.rounds: list[dict] = []
        self.best = best
        self.scored = contextlib.nullcontext

    def on_start(self, state, scored=contextlib.nullcontext) -> None:
        self.scored = scored  # the weights the run exports (the average under ema_decay)
        if self.rank == 0 and self.best.unscored:
            worker_line(f"[dcd] warning: {self.best.unscored}; keep_best cannot work, final is the last step")
        if state.step == 0:
            self._round_record(-1, {})
        elif self.rank == 0:  # resumed: keep the rounds recorded before the restart
            path = join(self.source.output_dir, ROUNDS_FILE)
            self.rounds = [json.loads(x) for x in read_text(path).splitlines() if x] if exists(path) else []
            self.best.resume(self.rounds, state.position.epoch)

    def on_event(self, event: LoopEvent) -> None:
        if isinstance(event, RoundEnd):
            self._round_record(event.round, event.stats)

    def idle(self) -> dict[str, float]:
        reader = self.rows.reader
        wall = max(time.perf_counter() - self.rows.t0 - self.eval_s, 1e-9)
        first = reader.first_wait_s or 0.0
        return {
            "idle_fraction": (reader.wait_s + first) / wall,
            "idle_fraction_steady": reader.wait_s / max(wall - first, 1e-9),
            "wait_s": reader.wait_s + first,
            "first_wait_s": first,
            "wall_s": wall,
        }

    def _heldout_prompts(self):
        if self._prompts is None:
            p = self.parts
            self._prompts = []
            for rec in self.heldout:
                paths = [im["path"] for im in rec.task.images]
                prompt = read_prompt(paths, rec.task.language, p.tokenizer, p.image_processor, p.prompt)
                if not np.array_equal(prompt.input_ids.numpy(), rec.prompt_ids):
                    raise InputError(f"held-out study {rec.task.study_id}: the student's prompt differs from the teacher's")
                self._prompts.append(prompt)
        return self._prompts

    def _agreement(self) -> dict[str, float]:
        if not self.heldout:
            return {}
        t0 = time.perf_counter()
        p = self.parts
        with self.scored():
            out = onestep_agreement(p.model, self._heldout_prompts(), [r.tokens.tolist() for r in self.heldout],
                                    p.mask_id, p.eos_id, p.pad_id, p.block_size, self.source.max_new_tokens)  # fmt: skip
        self.eval_s += time.perf_counter() - t0
        return {"agreement": out["agreement"], "exact": out["exact"], "eval_s": time.perf_counter() - t0}

    def _round_record(self, r: int, teacher_stats: dict) -> None:
        if self.rank != 0:
            return
        rec = {"round": r, "time": time.time(), "steps": self.rows.steps, "first_step_at": self.rows.first_step_at,
               **self._agreement(), **self.idle(), **{f"teacher_{k}" if not k.startswith("teacher") else k: v
                                                       for k, v in teacher_stats.items() if k != "round"}}  # fmt: skip
        self._judge(rec)
        self.rounds = [x for x in self.rounds if x["round"] != r] + [rec]  # a replayed round end replaces its record
        self._write(rec)
        shown = {k: round(v, 4) for k, v in rec.items()
                 if k in ("agreement", "idle_fraction", "teacher_records_per_s") and v is not None}  # fmt: skip
        worker_line(f"[dcd] round {r}: {shown}")

    def _judge(self, rec: dict) -> None:
        """Best-so-far bookkeeping for a scored round: save a new best (keep_best), warn on a drop."""
        if rec.get("agreement") is None:
            return
        b = self.best
        verdict = b.tracker.update(rec["round"], rec["agreement"])
        if verdict.new_best and b.keep:
            t0 = time.perf_counter()
            with self.scored():
                save_best(self.parts, self.source.output_dir)
            b.saved_round = rec["round"]
            rec["best_saved"] = True  # written after the save finished: a resumed group trusts it
            self.eval_s += time.perf_counter() - t0  # not trainer idle time
        if verdict.warning is not None:
            worker_line(f"[dcd] warning: {warning_text(verdict.warning)}")
        rec["best_round"], rec["best_agreement"] = b.tracker.best_round, b.tracker.best_agreement

    def _write(self, rec: dict) -> None:
        out = self.source.output_dir
        write_text(join(out, ROUNDS_FILE), "".join(json.dumps(x) + "\n" for x in self.rounds))
        if is_s3(out):
            return
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(Path(out) / "tb")) as tb:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("round", "time", "first_step_at", "best_round", "best_saved"):
                    tb.add_scalar(f"dcd/{k}", v, rec["round"] + 1)

    def on_finish(self, state) -> None:
        """After the last step: read the final RoundEnd, score the final model, average idle time."""
        import torch.distributed as dist

        untrained = 0
        for item in self.rows:  # ends at Stop
            if isinstance(item, RoundEnd):
                self._round_record(item.round, item.stats)
            else:
                untrained += len(item[0])
        idle = self.idle()
        t = torch.tensor([idle["wait_s"], idle["wall_s"], float(untrained), float(self.rows.replayed)], dtype=torch.float64)
        if dist.is_initialized():
            on = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces device tensors only
            t = t.to(on)
            dist.all_reduce(t)
            t = t.cpu()
        summary = {"trainer_idle_fraction": float(t[0] / t[1]), "untrained_rows": int(t[2]), "steps": self.rows.steps,
                   "replayed_packets": int(t[3]), "first_step_at": self.rows.first_step_at, "rounds": self.rounds}  # fmt: skip
        if self.rank == 0:
            summary.update(self.best.summary(self.rounds, self.source.output_dir))
            write_text(join(self.source.output_dir, "dcd_summary.json"), json.dumps(summary, indent=2))
