"""Helpers shared by the test_dcd_* modules: a small valid trajectory record built by hand.

The stream and message tests need records to carry, not a teacher's decode (test_dcd_trajectory
makes real ones from a tiny checkpoint); this one passes `TrajectoryRecord.validate`.
"""

from __future__ import annotations

import numpy as np

from echo_ray.train.dcd.trajectory import PromptTask, TrajectoryRecord


def tiny_record(uid: str, round_index: int = 0, prompt: int = 4, response: int = 4, k: int = 2) -> TrajectoryRecord:
    """A validated record: `prompt` + `response` tokens fill one block of 8, top-K width `k`."""
    logprobs = np.log(np.full((response, k), 1.0 / k, dtype=np.float32))
    rec = TrajectoryRecord(
        task=PromptTask(uid=uid, study_id=f"study-{uid}", language="en", images=[{"path": f"{uid}.png", "view": "PA"}]),
        prompt_ids=np.arange(prompt, dtype=np.int32),
        tokens=np.arange(100, 100 + response, dtype=np.int32),
        commit_step=np.ones(response, dtype=np.int32),
        topk_ids=np.arange(response * k, dtype=np.int32).reshape(response, k),
        topk_logprobs=logprobs,
        topk_logmass=np.full(response, -0.1, dtype=np.float32),
        block_size=prompt + response,
        steps=4,
        eos_pos=-1,
        hit_max=True,
        round=round_index,
    )
    rec.validate()
    return rec
