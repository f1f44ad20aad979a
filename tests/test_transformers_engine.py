"""The transformers engine in a Ray Data actor pool with a tiny random causal LM (built here, no hub).

The tokenizer is trained here on the engine's own prompts, so its vocabulary has no "{" token: the
random model can never write a JSON object, every answer fails validation, and each record must
go through all retries and end quarantined with its error -- deterministically.
"""

from __future__ import annotations

import pytest
from corpus_fixtures import EFFUSION, NORMAL, write_phantom_by_hand

from echo_ray.config import EngineConfig, NormalizeConfig, SourceSpec
from echo_ray.engines.prompts import build_prompt, retry_prompt


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A 2-layer Qwen2 causal LM with a word-level tokenizer, saved like any local HF model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    corpus = []
    for f, i in (NORMAL, EFFUSION):
        _, user = build_prompt("v1", "standardize", f, i, "Cough.")
        corpus += [user, retry_prompt("v1", user, "x", "no JSON object found in the answer")]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    tok.add_tokens(["x"])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    assert "{" not in hf_tok.get_vocab()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         pad_token_id=hf_tok.pad_token_id, eos_token_id=hf_tok.eos_token_id)  # fmt: skip
    out = tmp_path_factory.mktemp("tiny_lm")
    Qwen2ForCausalLM(config).save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


def test_invalid_json_is_retried_then_quarantined(ray_cluster, tiny_lm, tmp_path):
    from echo_ray.data.pipeline.driver import run_pipeline
    from echo_ray.data.pipeline.store import OutputStore

    cfg = NormalizeConfig(output=str(tmp_path / "out"), shard_rows=1,
                          sources=[SourceSpec(name="phantom", path=str(write_phantom_by_hand(tmp_path / "ph")))])  # fmt: skip
    cfg.engine = EngineConfig(kind="transformers", model_path=str(tiny_lm), batch_size=2, num_actors=1,
                              max_retries=2, max_new_tokens=6, num_cpus_per_actor=0.5)  # fmt: skip
    manifest = run_pipeline(cfg)
    assert manifest["accounted"] and manifest["counts"]["in"] == 3
    assert manifest["reasons"]["quarantined"] == {"engine_output_invalid": 2, "malformed_row": 1}
    assert manifest["engine"]["kind"] == "transformers" and manifest["engine"]["prompt_version"] == "v1"
    assert manifest["stages"]["standardize"]["processed"] == 2  # two shards of one record each
    rejected = OutputStore(cfg.output).read_table("rejected").to_pylist()
    engine_rows = [r for r in rejected if r["stage"] == "standardize"]
    assert len(engine_rows) == 2
    for r in engine_rows:
        assert r["detail"].startswith("invalid output after 3 attempt(s): no JSON object found")
    assert manifest["splits"]["train"]["rows"] == 0 and manifest["bilingual"]["translated"] == 0


# A fixed answer that is valid for both tasks: Chinese text that names every standard region.
ZH_ANSWER = {
    "findings": "胸廓对称。纵隔居中，气管居中。双肺清晰。胸膜未见异常。心影大小正常。肺门未见异常。膈面光整，肋膈角锐利。骨质未见异常。未见装置。",
    "impression": "心肺未见异常。",
}


@pytest.fixture(scope="module")
def trained_lm(tmp_path_factory):
    """A tiny causal LM trained here (a few seconds) to answer the pipeline's exact prompts with ZH_ANSWER.

    Byte-level BPE, so decoding is exact; trained on the prompts the two hand-written phantom
    studies produce (standardize) and on the translation prompt of ZH_ANSWER itself.
    """
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    answer = json.dumps(ZH_ANSWER, ensure_ascii=False)
    users = [build_prompt("v1", "standardize", f, i, "Cough.")[1] for f, i in (NORMAL, EFFUSION)]
    users.append(build_prompt("v1", "translate", ZH_ANSWER["findings"], ZH_ANSWER["impression"])[1])
    system = build_prompt("v1", "standardize", "", "")[0]
    texts = [f"{system}\n\n{u}\n" for u in users]  # the engine's plain-text prompt (no chat template)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts + [answer], trainers.BpeTrainer(
        vocab_size=800, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=hf_tok.pad_token_id, eos_token_id=hf_tok.eos_token_id)  # fmt: skip
    model = Qwen2ForCausalLM(config)
    target = hf_tok(answer).input_ids + [hf_tok.eos_token_id]
    seqs = [(hf_tok(t).input_ids, target) for t in texts]
    width = max(len(p) + len(t) for p, t in seqs)
    pad = hf_tok.pad_token_id
    ids = torch.tensor([p + t + [pad] * (width - len(p) - len(t)) for p, t in seqs])
    labels = torch.tensor([[-100] * len(p) + t + [-100] * (width - len(p) - len(t)) for p, t in seqs])
    mask = (labels != -100) | (torch.arange(width)[None, :] < torch.tensor([len(p) for p, _ in seqs])[:, None])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):  # one right-padded batch of the three sequences
        loss = model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.03:
            break
    out = tmp_path_factory.mktemp("trained_lm")
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


def test_bilingual_copies_from_an_llm_engine(ray_cluster, trained_lm, tmp_path):
    from echo_ray.data.pipeline.driver import run_pipeline
    from echo_ray.data.pipeline.store import OutputStore

    cfg = NormalizeConfig(output=str(tmp_path / "out"), bilingual_fraction=1.0,
                          sources=[SourceSpec(name="phantom", path=str(write_phantom_by_hand(tmp_path / "ph")))])  # fmt: skip
    cfg.engine = EngineConfig(kind="transformers", model_path=str(trained_lm), batch_size=1, num_actors=1,
                              max_new_tokens=64, num_cpus_per_actor=0.5)  # fmt: skip
    cfg.splits.eval_fraction, cfg.splits.eval_per_language, cfg.splits.dcd_rows = 0.5, 1, 2
    m = run_pipeline(cfg)
    assert m["accounted"] and m["counts"]["kept"] == 2 and m["bilingual"]["translated"] == 2
    assert (m["splits"]["eval"]["en"], m["splits"]["eval"]["zh"]) == (1, 1)
    assert (m["splits"]["train"]["en"], m["splits"]["train"]["zh"]) == (1, 1)
    store = OutputStore(cfg.output)
    train, evals = store.read_table("train").to_pylist(), store.read_table("eval").to_pylist()
    assert {r["uid"] for r in train}.isdisjoint({r["uid"] for r in evals})  # both languages share a split
    zh = [r for r in train + evals if r["language"] == "zh"]
    assert all(r["report"] == f"所见：{ZH_ANSWER['findings']} 结论：{ZH_ANSWER['impression']}" for r in zh)
    assert all(r["raw_findings"] in (NORMAL[0], EFFUSION[0]) for r in zh)  # the study's raw text travels along
    assert len(store.read_table("dcd")) == 2
