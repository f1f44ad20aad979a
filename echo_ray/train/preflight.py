"""Everything a stage run checks on the driver before any worker starts, and the resolved plan.

Bad input ends here with one EchoError line: a dataset path that does not exist or is not a
normalized dataset (no manifest.json, no Parquet shards for the split, missing columns), an empty
split, a per-worker batch larger than a worker's share of the rows, a model path that does not
exist, settings out of range, and sample rows (the first `preflight_rows`) whose prompt or
response exceeds the configured lengths or whose images cannot be read. With the tiny preset and
no model path, the random tiny checkpoint is built once into `<output_dir>/init`.

Usage:
    plan = plan_stage(load_config("configs/tiny.yaml"), "rad")
    plan.job, plan.data_files, plan.n_rows, plan.storage_path
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.dataset as pads

from echo_ray.config import CptConfig, DcdConfig, EchoConfig, RadConfig, check_section
from echo_ray.errors import ConfigError, InputError
from echo_ray.model.checkpoint import check_checkpoint_dir, set_pixel_bounds
from echo_ray.storage import download_dir, exists, is_s3, join, list_files, resolve_fs, upload_dir
from echo_ray.train.backends import check_average, resolve_backend
from echo_ray.train.examples import Limits, check_lengths, encode_row
from echo_ray.train.job import STAGES, FaultSpec, StageJob

REQUIRED_COLUMNS = ("study_id", "language", "images")


@dataclass
class StagePlan:
    job: StageJob
    data_files: list[str]
    columns: list[str]
    n_rows: int
    output_dir: str
    storage_path: str


def stage_config(cfg: EchoConfig, stage: str) -> CptConfig | RadConfig | DcdConfig:
    if stage not in STAGES:
        raise ConfigError(f"unknown training stage {stage!r}; expected one of {sorted(STAGES)}")
    return getattr(cfg.train, stage)


def check_settings(cfg: EchoConfig, stage: str) -> None:
    # The sections' own ranges run when a config is loaded (pydantic, config/section.py); again here for
    # configs built in code.
    check_section(stage_config(cfg, stage), f"train.{stage}")
    check_section(cfg.train.distributed, "train.distributed")
    dist = cfg.train.distributed
    check_average(resolve_backend(dist.backend), dist, stage_config(cfg, stage).ema_decay, f"train.{stage}.ema_decay")
    if cfg.model.attn_implementation == "flash_attention_2":
        raise ConfigError(
            "model.attn_implementation=flash_attention_2 cannot take ECHO's explicit block masks; train with "
            "sdpa (on GPUs it runs PyTorch's fused memory-efficient attention kernel)"
        )
    if cfg.model.block_size <= 0:
        raise ConfigError(f"model.block_size must be positive, got {cfg.model.block_size}")


def inspect_dataset(data: str, split: str, columns: list[str], where: str) -> tuple[list[str], int]:
    """Parquet files and row count of `<data>/<split>`; errors name what is missing."""
    if not data:
        raise ConfigError(f"{where}.data is not set: point it at a normalized dataset (manifest.json + <split>/*.parquet)")
    if not exists(data):
        raise InputError(f"dataset not found: {data}")
    if not exists(join(data, "manifest.json")):
        raise InputError(f"not a normalized dataset (no manifest.json): {data}")
    files = list_files(join(data, split), ".parquet")
    if not files:
        raise InputError(f"dataset {data} has no Parquet shards for split '{split}' ({join(data, split)}/*.parquet)")
    filesystem, _ = resolve_fs(data)
    inner = [resolve_fs(f)[1] for f in files]
    ds = pads.dataset(inner, filesystem=filesystem, format="parquet")
    missing = [c for c in columns if c not in ds.schema.names]
    if missing:
        raise InputError(f"dataset {data} split '{split}' lacks column(s) {missing}")
    n = ds.count_rows()
    if n == 0:
        raise InputError(f"dataset split '{split}' at {data} is empty (0 rows)")
    return files, n


def resolve_model(cfg: EchoConfig, stage: str) -> str:
    """The checkpoint the stage starts from; builds the tiny preset when nothing is named."""
    s = stage_config(cfg, stage)
    path = s.init_from or cfg.model.path
    if path:
        if is_s3(path):
            if not exists(join(path, "config.json")):
                raise InputError(f"model not found (no config.json under {path})")
        else:
            check_checkpoint_dir(Path(path).expanduser())
            path = str(Path(path).expanduser().resolve())
        return path
    if cfg.model.preset != "tiny":
        raise ConfigError(f"no model to train: set model.path or train.{stage}.init_from")
    from echo_ray.data.phantom import tokenizer_corpus
    from echo_ray.model.tiny import build_tiny_checkpoint

    target = join(s.output_dir, "init")
    if exists(join(target, "config.json")):
        return target if is_s3(target) else str(Path(target).resolve())
    corpus = tokenizer_corpus()
    if is_s3(target):
        with tempfile.TemporaryDirectory() as tmp:
            upload_dir(build_tiny_checkpoint(tmp, cfg.model.tiny, cfg.model.block_size, corpus), target)
        return target
    return str(build_tiny_checkpoint(Path(target).resolve(), cfg.model.tiny, cfg.model.block_size, corpus))


def check_sample_rows(cfg: EchoConfig, stage: str, model_path: str, files: list[str]) -> None:
    """Encode the first rows exactly as workers will; length and image errors surface here."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    s = stage_config(cfg, stage)
    with tempfile.TemporaryDirectory() as tmp:
        local = download_dir(model_path, tmp, skip_suffixes=(".safetensors",)) if is_s3(model_path) else Path(model_path)
        tokenizer = AutoTokenizer.from_pretrained(local)
        processor = Qwen2VLImageProcessorPil.from_pretrained(local)
        set_pixel_bounds(processor, cfg.model.max_pixels, cfg.model.min_pixels)
        max_pos = AutoConfig.from_pretrained(local).get_text_config().max_position_embeddings
    need = s.max_prompt_tokens + s.max_response_tokens + cfg.model.block_size
    if need > max_pos:
        raise ConfigError(
            f"train.{stage}.max_prompt_tokens + max_response_tokens + block size = {need} exceeds the model's "
            f"{max_pos} positions"
        )
    filesystem, _ = resolve_fs(files[0])
    ds = pads.dataset([resolve_fs(f)[1] for f in files], filesystem=filesystem, format="parquet")
    limits = Limits(s.max_prompt_tokens, s.max_response_tokens, s.raw)
    for row in ds.head(s.preflight_rows).to_pylist():
        paths = [im["path"] for im in row.get("images") or []]
        relative = [p for p in paths if not (is_s3(p) or Path(p).is_absolute())]
        if relative:
            raise InputError(
                f"study {row.get('study_id')}: image path {relative[0]!r} must be absolute or s3:// (workers run elsewhere)"
            )
        check_lengths(encode_row(row, tokenizer, processor, cfg.prompt, s.raw), limits, where=f"train.{stage}")


def plan_stage(cfg: EchoConfig, stage: str, fault: FaultSpec | None = None) -> StagePlan:
    """Validate everything and resolve the run; raises EchoError on bad input."""
    check_settings(cfg, stage)
    s, d = stage_config(cfg, stage), cfg.train.distributed
    columns = [*REQUIRED_COLUMNS, *(("raw_findings", "raw_impression") if s.raw else ("report",))]
    files, n_rows = inspect_dataset(s.data, s.split, columns, f"train.{stage}")
    per_worker = n_rows // d.num_workers
    if per_worker < s.batch_size:
        raise ConfigError(
            f"train.{stage}.batch_size={s.batch_size} per worker does not fit: split '{s.split}' has {n_rows} rows, "
            f"{per_worker} per worker over {d.num_workers} workers"
        )
    model_path = resolve_model(cfg, stage)
    check_sample_rows(cfg, stage, model_path, files)
    if not is_s3(s.output_dir):  # workers run in other directories (and on other nodes)
        s = replace(s, output_dir=str(Path(s.output_dir).expanduser().resolve()))
    job = StageJob(
        stage=stage, cfg=s, dist=d, prompt=cfg.prompt, model_path=model_path, model=cfg.model, fault=fault
    )  # fmt: skip
    storage = d.storage_path or join(s.output_dir, "ray")
    if not is_s3(storage):
        storage = str(Path(storage).expanduser().resolve())
    return StagePlan(job, files, columns, n_rows, s.output_dir, storage)
