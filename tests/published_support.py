"""Test helpers: tiny checkpoints in the published ECHO layout, and one with no MASK token at all.

`to_published_layout` rewrites a tiny echo_ray checkpoint the way the authors' checkpoints are
stored: the MASK id under `config.json: mask_token_id`, the token spelled `<|MASK|>`, no echo
metadata (so no block size), an `auto_map` naming a remote modeling file that must never run.
`strip_mask` removes every trace of a MASK token (an AR base model's vocabulary).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

OURS, THEIRS = "<|mask|>", "<|MASK|>"


def _edit(path: Path, fn) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    fn(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _rename_token(d: Path, old: str, new: str | None) -> None:
    """Rename (or, with new=None, remove) a special token in tokenizer.json and tokenizer_config.json."""

    def tok(data):
        data["added_tokens"] = [t for t in data["added_tokens"] if new is not None or t["content"] != old]
        for t in data["added_tokens"]:
            if t["content"] == old:
                t["content"] = new
        vocab = data["model"]["vocab"]
        idx = vocab.pop(old)
        if new is not None:
            vocab[new] = idx

    def cfg(data):
        for key in ("extra_special_tokens", "additional_special_tokens"):
            if key in data:
                data[key] = [new if t == old else t for t in data[key] if new is not None or t != old]
        for entry in (data.get("added_tokens_decoder") or {}).values():
            if entry.get("content") == old and new is not None:
                entry["content"] = new
        data["added_tokens_decoder"] = {k: v for k, v in (data.get("added_tokens_decoder") or {}).items()
                                        if v.get("content") != old}  # fmt: skip

    _edit(d / "tokenizer.json", tok)
    _edit(d / "tokenizer_config.json", cfg)


def to_published_layout(src: Path, dst: Path) -> Path:
    """Copy of `src` (an echo_ray checkpoint) in the published layout (module doc)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    mask_id = config["echo_mask_token_id"]

    def cfg(data):
        for k in ("echo_mask_token_id", "echo_block_size", "echo_languages"):
            data.pop(k, None)
        data["mask_token_id"] = mask_id
        data["auto_map"] = {"AutoModelForCausalLM": "modeling_echo.EchoForCausalLM"}

    _edit(dst / "config.json", cfg)
    _rename_token(dst, OURS, THEIRS)
    (dst / "modeling_echo.py").write_text("raise SystemExit('remote code must never run')\n", encoding="utf-8")
    return dst


def strip_mask(src: Path, dst: Path) -> Path:
    """Copy of `src` without any MASK id: no metadata, no mask_token_id, no MASK token."""
    shutil.copytree(src, dst)
    _edit(dst / "config.json", lambda d: [d.pop(k, None) for k in ("echo_mask_token_id", "mask_token_id")])
    _rename_token(dst, OURS, None)
    return dst
