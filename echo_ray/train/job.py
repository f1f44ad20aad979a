"""What the driver hands every training worker: a `StageJob` (the narrow, resolved settings of one
stage run) and the registry of stages the shared loop can run.

`STAGES` maps a stage name to "module:factory"; a factory takes the job and returns a `Stage`
(echo_ray.train.stage). Adding a stage (DCD) is one entry here plus its module.

Usage:
    job = StageJob(stage="rad", cfg=cfg.train.rad, dist=cfg.train.distributed, prompt=cfg.prompt,
                   model_path="runs/cpt/final", model=cfg.model)   # RAD reads job.cfg.noise
    stage = build_stage(job)

Only the config types are imported at module level: Ray Train's controller unpickles every StageJob
it passes to the workers, and importing the stage modules here (examples, stage -> transformers and
the Qwen2.5-VL model code) cost ~2 s on every stage's start-up. They load in `limits` and the
factories, which run in the workers (tests/test_imports.py checks this).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from echo_ray.config import CptConfig, DcdConfig, DistributedConfig, ModelConfig, PromptConfig, RadConfig

if TYPE_CHECKING:  # the real imports are lazy (see the module docstring)
    from echo_ray.train.examples import Limits
    from echo_ray.train.stage import Stage

# stage name -> "module:factory(job) -> Stage"
STAGES: dict[str, str] = {
    "cpt": "echo_ray.train.job:cpt_stage",
    "rad": "echo_ray.train.job:rad_stage",
    "dcd": "echo_ray.train.dcd.stage:dcd_stage",
}


@dataclass(frozen=True)
class FaultSpec:
    """Fault injection for the resume test: `rank` exits at `step` once (marker file on its node)."""

    rank: int
    step: int
    marker: str


@dataclass
class StageJob:
    stage: str
    cfg: CptConfig | RadConfig | DcdConfig  # the stage's own config: RAD's carries `noise`, DCD's `loss`
    dist: DistributedConfig
    prompt: PromptConfig
    model_path: str  # resolved init checkpoint (local dir on shared storage, or s3://)
    model: ModelConfig  # the run's `model` section: block size, loading settings, image bounds
    fault: FaultSpec | None = None

    @property
    def limits(self) -> Limits:
        from echo_ray.train.examples import Limits

        return Limits(self.cfg.max_prompt_tokens, self.cfg.max_response_tokens, self.cfg.raw)


def cpt_stage(job: StageJob) -> Stage:
    from echo_ray.train.cpt import CptStage
    from echo_ray.train.examples import PromptCache

    return CptStage(job.limits, PromptCache(job.cfg.prompt_cache_mb))


def rad_stage(job: StageJob) -> Stage:
    from echo_ray.train.examples import PromptCache
    from echo_ray.train.rad import RadStage

    return RadStage(job.limits, job.cfg.noise, PromptCache(job.cfg.prompt_cache_mb))


def build_stage(job: StageJob) -> Stage:
    if job.stage not in STAGES:
        raise ValueError(f"unknown training stage {job.stage!r}; expected one of {sorted(STAGES)}")
    mod, fn = STAGES[job.stage].split(":")
    return getattr(importlib.import_module(mod), fn)(job)
