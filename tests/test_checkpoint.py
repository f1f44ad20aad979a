"""Checkpoint loading: tiny preset round trip, MASK metadata, pickle refusal, s3:// through moto."""

from __future__ import annotations

import shutil

import boto3
import pytest
import torch

from echo_ray.config import ModelConfig
from echo_ray.errors import InputError
from echo_ray.model.checkpoint import load_checkpoint, resolve_device
from echo_ray.model.tokenizer import MASK_TOKEN, SPECIAL_TOKENS, ensure_mask_token
from echo_ray.storage import upload_dir


def test_tiny_checkpoint_loads_with_metadata(tiny_ckpt_dir) -> None:
    c = load_checkpoint(str(tiny_ckpt_dir))
    assert c.block_size == 8
    assert c.mask_id == c.tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    vocab = c.tokenizer.get_vocab()
    assert all(t in vocab for t in SPECIAL_TOKENS)
    cfg = c.model.config.get_text_config()
    assert cfg.num_hidden_layers in (2, 3, 4) and 128 <= cfg.hidden_size <= 256
    assert c.model.config.vision_config.depth == 2
    # Chinese text round-trips through the byte-level BPE.
    zh = "所见：心影增大。结论：心脏增大。"
    assert c.tokenizer.decode(c.tokenizer(zh)["input_ids"]) == zh


def test_forward_runs_on_cpu(tiny_ckpt_dir) -> None:
    # Speed is measured side by side in benchmarks/, not timed here (a loaded CI box made this flaky).
    from PIL import Image

    from echo_ray.config import PromptConfig
    from echo_ray.model.prompt import build_prompt

    c = load_checkpoint(str(tiny_ckpt_dir))
    p = build_prompt(c.tokenizer, c.image_processor, [Image.new("RGB", (256, 256), 90)], "en", PromptConfig())
    mm = (p.input_ids[None] == c.model.config.image_token_id).int()
    with torch.no_grad():
        out = c.model(input_ids=p.input_ids[None], pixel_values=p.pixel_values, image_grid_thw=p.image_grid_thw, mm_token_type_ids=mm)
    assert out.logits.shape[:2] == (1, p.length)
    assert torch.isfinite(out.logits).all()


def test_missing_dir_and_pickle_refused(tmp_path, tiny_ckpt_dir) -> None:
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(str(tmp_path / "nope"))
    bad = tmp_path / "pickled"
    shutil.copytree(tiny_ckpt_dir, bad)
    (bad / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, bad / "pytorch_model.bin")
    with pytest.raises(InputError, match="refusing pickle checkpoint"):
        load_checkpoint(str(bad))


def test_base_model_without_mask_gets_one(tmp_path, tiny_ckpt_dir) -> None:
    c = load_checkpoint(str(tiny_ckpt_dir))
    c.model.config.echo_mask_token_id = None
    c.model.save_pretrained(tmp_path / "base")
    c.tokenizer.save_pretrained(tmp_path / "base")
    c.image_processor.save_pretrained(tmp_path / "base")
    again = load_checkpoint(str(tmp_path / "base"))
    assert again.mask_id == c.mask_id  # already in the vocabulary: found, not duplicated
    tok = again.tokenizer
    n = len(tok)
    assert ensure_mask_token(tok) == (again.mask_id, False) and len(tok) == n


def test_s3_checkpoint_via_local_moto(moto_s3, tmp_path, tiny_ckpt_dir) -> None:
    boto3.client("s3").create_bucket(Bucket="models")
    assert upload_dir(tiny_ckpt_dir, "s3://models/echo/tiny") >= 4
    c = load_checkpoint("s3://models/echo/tiny", ModelConfig(cache_dir=str(tmp_path / "cache")))
    assert c.path == tmp_path / "cache" / "models" / "echo" / "tiny"
    assert c.block_size == 8
    with pytest.raises(InputError, match="no objects under"):
        load_checkpoint("s3://models/absent", ModelConfig(cache_dir=str(tmp_path / "cache")))


def test_model_section_decides_how_the_checkpoint_loads(tiny_ckpt_dir) -> None:
    """One ModelConfig for every caller: dtype, attention implementation and image bounds are applied."""
    c = load_checkpoint(str(tiny_ckpt_dir), ModelConfig(dtype="bfloat16", attn_implementation="eager",
                                                        max_pixels=112 * 112, min_pixels=56 * 56))  # fmt: skip
    assert {p.dtype for p in c.model.parameters()} == {torch.bfloat16}
    assert c.model.config._attn_implementation == "eager"
    assert (c.image_processor.size["shortest_edge"], c.image_processor.size["longest_edge"]) == (56 * 56, 112 * 112)
    with pytest.raises(InputError, match="min_pixels 20000 exceeds max_pixels 10000"):
        load_checkpoint(str(tiny_ckpt_dir), ModelConfig(max_pixels=10_000, min_pixels=20_000))


def test_resolve_device() -> None:
    """The one "auto" picker (serve, eval, the DCD teachers, benchmarks): CUDA when visible, else CPU."""
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == resolve_device() == torch.device(expected)
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(InputError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device is visible"):
            resolve_device("cuda:0")
    else:
        assert resolve_device("cuda:0") == torch.device("cuda:0")
