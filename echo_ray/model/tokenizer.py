"""Tokenizers: a byte-level BPE trained on report text for the tiny preset, and the MASK token.

The tiny preset trains its own tokenizer (HF `tokenizers`, byte-level BPE, a few thousand merges)
on English and Chinese report text, so nothing is fetched from a hub. It carries the Qwen2.5-VL
chat and vision special tokens plus `<|mask|>`, the block-diffusion MASK (method.md, "Blocks").
Real checkpoints get `<|mask|>` added when missing (`ensure_mask_token`); the caller then resizes
the embeddings and stores the id in the model config.

Usage:
    tok = train_report_tokenizer(texts, vocab_size=4096)
    tok.save_pretrained(out_dir)
    mask_id = tok.convert_tokens_to_ids(MASK_TOKEN)
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

MASK_TOKEN = "<|mask|>"
PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
SPECIAL_TOKENS = (
    PAD_TOKEN,
    "<|im_start|>",
    EOS_TOKEN,
    VISION_START,
    VISION_END,
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    MASK_TOKEN,
)

# A little Chinese report text so the BPE has merges for the zh copies (byte-level covers the rest).
_ZH_SEED = (
    "所见：胸廓对称。纵隔及气管居中。双肺纹理清晰，未见实变。无胸腔积液或气胸。心影大小正常。"
    "双肺门不大。膈面光滑，肋膈角锐利。骨质未见异常。未见置管。结论：心肺未见急性病变。",
    "所见：心影增大。右侧少量胸腔积液，右侧肋膈角变钝。左下肺斑片状实变影。左侧气胸，可见胸膜线。"
    "气管插管及中心静脉导管在位。结论：心脏增大；右侧胸腔积液；左下肺实变，考虑肺炎；左侧气胸。",
)


def train_report_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (plus built-in Chinese seed text) with the special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    corpus = list(texts) + list(_ZH_SEED) * 4
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
    )
    fast.padding_side = "left"
    return fast


def ensure_mask_token(tokenizer: PreTrainedTokenizerFast) -> tuple[int, bool]:
    """Add `<|mask|>` when the tokenizer lacks it. Returns (mask_id, added)."""
    vocab = tokenizer.get_vocab()
    if MASK_TOKEN in vocab:
        return vocab[MASK_TOKEN], False
    tokenizer.add_special_tokens({"additional_special_tokens": [MASK_TOKEN]})
    return tokenizer.convert_tokens_to_ids(MASK_TOKEN), True
