"""DCD preflight on the driver: every check that can fail before a teacher actor or worker starts.

- settings in range (rounds, prompts per round vs workers, top-K vs vocabulary, S <= B, weights);
- the teacher is an ECHO_Base: its config records a MASK token id and a block size, and that block
  size is the one the student trains with (`model.block_size`);
- student and teacher share the vocabulary: embedding rows, tokenizer size, MASK and EOS ids;
- the teacher's length limit fits the student's `max_response_tokens`.
Only config.json and the tokenizer are read (for s3:// checkpoints, downloaded without weights).

Usage:
    teacher = read_meta("runs/rad/final")
    check_dcd_settings(cfg); check_teacher(teacher, cfg); check_vocab(teacher, read_meta(student_path))
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from echo_ray.config import EchoConfig, check_section
from echo_ray.config.training import DcdTeacherConfig
from echo_ray.errors import ConfigError, InputError
from echo_ray.model.checkpoint import check_checkpoint_dir, read_echo_meta
from echo_ray.model.published import block_size_from_name, find_mask_id
from echo_ray.storage import download_dir, exists, is_s3, join


@dataclass(frozen=True)
class ModelMeta:
    path: str
    vocab_size: int  # embedding rows
    tokenizer_size: int
    mask_id: int | None
    block_size: int | None
    eos_id: int | None


def read_meta(path: str) -> ModelMeta:
    """Vocabulary and ECHO metadata of a checkpoint, without loading weights."""
    from transformers import AutoConfig, AutoTokenizer

    if not path:
        raise ConfigError("no checkpoint path given")
    with tempfile.TemporaryDirectory() as tmp:
        if is_s3(path):
            if not exists(join(path, "config.json")):
                raise InputError(f"checkpoint not found (no config.json under {path})")
            local = download_dir(path, tmp, skip_suffixes=(".safetensors",))
        else:
            local = Path(path).expanduser()
            check_checkpoint_dir(local)
        try:
            config = AutoConfig.from_pretrained(local)
            tokenizer = AutoTokenizer.from_pretrained(local)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
    # Either layout (echo_ray.model.published): a published ECHO_Base_block8 is a valid teacher.
    mask_id, _ = find_mask_id(config, tokenizer)
    block = read_echo_meta(config)[1] or block_size_from_name(path)
    return ModelMeta(path, int(config.get_text_config().vocab_size), len(tokenizer), mask_id, block, tokenizer.eos_token_id)


def writes_trajectories(t: DcdTeacherConfig, output_dir: str) -> bool:
    """Whether this run stores its teachers' trajectories (a local output_dir, not a replay): what
    worker-death replay and the review passes of `epochs` > 1 read back."""
    return t.write_trajectories and not t.replay_from and not is_s3(output_dir)


def check_dcd_settings(cfg: EchoConfig) -> None:
    t, s, W = cfg.train.dcd_teacher, cfg.train.dcd, cfg.train.distributed.num_workers
    where = "train.dcd_teacher"
    check_section(t, where)  # also run when loaded; configs built in code come here
    if t.prompts_per_round < W:
        raise ConfigError(f"{where}.prompts_per_round={t.prompts_per_round} gives some of the {W} workers no rows")
    check_section(s.loss, "train.dcd.loss")
    B = cfg.model.block_size
    if t.teacher_steps is not None and not 1 <= t.teacher_steps <= B:
        raise ConfigError(f"{where}.teacher_steps={t.teacher_steps} must be in 1..block size {B}")
    if t.max_new_tokens + B - 1 > s.max_response_tokens:
        raise ConfigError(
            f"{where}.max_new_tokens={t.max_new_tokens} (+ up to {B - 1} tokens to finish the last block) exceeds "
            f"train.dcd.max_response_tokens={s.max_response_tokens}"
        )
    if t.epochs > 1 and not t.replay_from and not writes_trajectories(t, s.output_dir):
        raise ConfigError(f"{where}.epochs={t.epochs} reviews the stored trajectories, but none are stored: set "
                          f"{where}.write_trajectories: true and a local train.dcd.output_dir (or replay_from)")  # fmt: skip
    if t.on_policy_student and t.replay_from:
        raise ConfigError(f"{where}.on_policy_student needs live teachers to label the student's reports; "
                          f"it cannot be combined with {where}.replay_from")  # fmt: skip
    if not t.teacher and not t.replay_from:
        raise ConfigError(f"{where}.teacher is not set: point it at the ECHO_Base checkpoint (the RAD stage's final model)")


def check_teacher(teacher: ModelMeta, cfg: EchoConfig) -> None:
    """The teacher must be a block-diffusion checkpoint trained with the student's block size."""
    if teacher.mask_id is None:
        raise InputError(f"teacher checkpoint {teacher.path} has no MASK token id (echo_mask_token_id, "
                         "mask_token_id or a <|MASK|> / <|mask|> token); "
                         "DCD needs an ECHO_Base from the RAD stage")  # fmt: skip
    if teacher.block_size is None:
        raise InputError(f"teacher checkpoint {teacher.path} records no block size (echo_block_size or a "
                         "_block4 / _block8 name); "
                         "DCD needs an ECHO_Base from the RAD stage")  # fmt: skip
    if teacher.block_size != cfg.model.block_size:
        raise ConfigError(f"teacher {teacher.path} was trained with block size {teacher.block_size} but "
                          f"model.block_size={cfg.model.block_size}; the student must use the teacher's")  # fmt: skip
    top_k = cfg.train.dcd_teacher.top_k
    if top_k >= teacher.vocab_size - 1:
        raise ConfigError(f"train.dcd_teacher.top_k={top_k} must be below the vocabulary size minus MASK "
                          f"({teacher.vocab_size - 1}) so the rest bucket is not empty")  # fmt: skip


def check_vocab(teacher: ModelMeta, student: ModelMeta) -> None:
    """Student and teacher token ids must mean the same thing (targets are ids)."""
    pairs = {"vocabulary size": (teacher.vocab_size, student.vocab_size),
             "tokenizer size": (teacher.tokenizer_size, student.tokenizer_size),
             "MASK token id": (teacher.mask_id, student.mask_id), "EOS token id": (teacher.eos_id, student.eos_id)}  # fmt: skip
    bad = [f"{k} {a} vs {b}" for k, (a, b) in pairs.items() if a != b]
    if bad:
        raise InputError(f"student {student.path} and teacher {teacher.path} do not share a vocabulary: {', '.join(bad)}")
