"""DCD trajectory records: what the teacher emits for one prompt (method.md, "Stage 3", phase 1).

A `PromptTask` names one study to decode (images, language, reference report). The teacher decodes
it multi-step with `BlockDecoder(record_topk=K)`; `records_from_events` turns the per-block
`BlockTrace`s into one `TrajectoryRecord` per prompt holding, for every response position j of the
decoded blocks (prompt-tail slots of the first block excluded):

- `tokens[j]`: the committed token;
- `commit_step[j]`: the 1-based step s_j of the block at which it was committed (1..S);
- `topk_ids[j]`, `topk_logprobs[j]`: the teacher's top-K at that step, i.e. conditioned on the
  tokens committed before s_j inside the block, renormalized over the K ids (log-probs summing to
  one), and `topk_logmass[j]` = log of the mass those K ids had in the full distribution. Keeping
  the mass makes the remainder explicit: the loss compares the tail bucket 1 - exp(logmass) with
  the student's mass outside the K ids (`echo_ray.train.dcd.loss`). The distribution excludes the
  MASK token, as the decoder sets its logit to -inf before commit.

Whole decoded blocks are kept (the decoder's cut at EOS / max length is applied by the student's
batch builder, not here); `eos_pos` is the first EOS among `tokens` (-1 when the teacher hit the
length limit without one). On-policy records (`echo_ray.train.dcd.on_policy`) also carry
`context`: the student's own report, on which the teacher's labels in `tokens` were conditioned.
The prompt token ids are carried so the student can check that it rebuilt the very prompt the
teacher saw.

Usage:
    recs = records_from_events(events, tasks, prompt_ids, block_size=8, steps=4, eos_id=eos, ...)
    rec.validate()
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from echo_ray.errors import InputError


@dataclass
class PromptTask:
    """One study for the teacher. images: [{"path", "view"}]; reference: the dataset's report."""

    uid: str
    study_id: str
    language: str
    images: list[dict]
    reference: str = ""


@dataclass
class TrajectoryRecord:
    """The teacher's decode of one prompt. R response positions, top-K width K."""

    task: PromptTask
    prompt_ids: np.ndarray  # (P,) int32
    tokens: np.ndarray  # (R,) int32
    commit_step: np.ndarray  # (R,) int32, 1..steps
    topk_ids: np.ndarray  # (R, K) int32
    topk_logprobs: np.ndarray  # (R, K) float32, renormalized over the K ids
    topk_logmass: np.ndarray  # (R,) float32, log sum of the K ids' probability in the full distribution
    block_size: int
    steps: int
    eos_pos: int  # first EOS index in `tokens`, -1 if none
    hit_max: bool
    round: int = 0
    teacher: str = ""
    produced_at: float = field(default_factory=time.time)
    # On-policy records (`on_policy`): the student's own report, the clean copy the student trains
    # on, with `tokens` the teacher's labels given it. None: the teacher's tokens are the clean copy.
    context: np.ndarray | None = None  # (R,) int32

    @property
    def uid(self) -> str:
        return self.task.uid

    @property
    def response_len(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.topk_ids.shape[1])

    def validate(self) -> None:
        """Shape and range checks; raises InputError naming the record and the problem."""
        R, P, B = self.response_len, int(self.prompt_ids.shape[0]), self.block_size
        problems = []
        if R == 0 or (P + R) % B:
            problems.append(f"prompt {P} + response {R} tokens is not a positive multiple of block size {B}")
        if self.topk_ids.shape != self.topk_logprobs.shape or self.topk_ids.shape[0] != R:
            problems.append(f"top-k arrays {self.topk_ids.shape}/{self.topk_logprobs.shape} do not match {R} positions")
        if self.commit_step.shape != (R,) or self.topk_logmass.shape != (R,):
            problems.append("commit_step / topk_logmass must have one entry per response position")
        elif R and not (1 <= int(self.commit_step.min()) and int(self.commit_step.max()) <= self.steps):
            problems.append(f"commit steps outside 1..{self.steps}")
        if self.context is not None and self.context.shape != (R,):
            problems.append(f"context of {self.context.shape[0]} tokens for {R} positions")
        if not -1 <= self.eos_pos < max(R, 1):
            problems.append(f"eos_pos {self.eos_pos} outside the response")
        if problems:
            raise InputError(f"trajectory {self.uid}: {'; '.join(problems)}")


def renormalize_topk(logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-distribution top-K log-probs (..., K) -> (renormalized (..., K), log mass (...))."""
    mass = torch.logsumexp(logprobs, dim=-1)
    return logprobs - mass[..., None], mass


def _row_blocks(events, row: int) -> list:
    """The blocks that belong to `row`: up to and including the one in which it finished."""
    out = []
    for ev in events:
        out.append(ev.trace)
        if ev.finished[row]:
            break
    return out


def records_from_events(
    events: list,
    tasks: list[PromptTask],
    prompt_ids: list[torch.Tensor],
    block_size: int,
    steps: int,
    eos_id: int,
    teacher: str = "",
    round_index: int = 0,
) -> list[TrajectoryRecord]:
    """Per-row records from a batched multi-step decode's `BlockEvent`s (traces with top-K)."""
    if not events or events[0].trace is None or events[0].trace.topk_ids is None:
        raise ValueError("records_from_events needs BlockEvents decoded with record_topk > 0")
    hit_max = events[-1].hit_max
    out = []
    for i, task in enumerate(tasks):
        parts = {"tok": [], "step": [], "ids": [], "lp": []}
        for tr in _row_blocks(events, i):
            keep = ~tr.fixed[i]
            parts["tok"].append(tr.tokens[i][keep])
            parts["step"].append(tr.commit_step[i][keep])
            parts["ids"].append(tr.topk_ids[i][keep])
            parts["lp"].append(tr.topk_logprobs[i][keep])
        tokens = torch.cat(parts["tok"])
        renorm, mass = renormalize_topk(torch.cat(parts["lp"]).float())
        eos = torch.nonzero(tokens == eos_id).flatten()
        rec = TrajectoryRecord(
            task=task,
            prompt_ids=prompt_ids[i].cpu().numpy().astype(np.int32),
            tokens=tokens.cpu().numpy().astype(np.int32),
            commit_step=torch.cat(parts["step"]).cpu().numpy().astype(np.int32),
            topk_ids=torch.cat(parts["ids"]).cpu().numpy().astype(np.int32),
            topk_logprobs=renorm.cpu().numpy().astype(np.float32),
            topk_logmass=mass.cpu().numpy().astype(np.float32),
            block_size=block_size,
            steps=steps,
            eos_pos=int(eos[0]) if len(eos) else -1,
            hit_max=bool(hit_max[i]) and not len(eos),
            round=round_index,
            teacher=teacher,
        )
        rec.validate()
        out.append(rec)
    return out
