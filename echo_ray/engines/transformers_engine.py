"""The `transformers` engine: a local HF causal LM in a Ray Data actor pool, batched, on any machine.

Each actor loads the model once (local directory, or s3:// mirrored through echo_ray.storage) and
runs greedy generation over its batches: versioned prompt -> answer -> schema check -> for the
failures, a new prompt that shows the rejected answer and the error -> ... up to max_retries, then
the record carries its error and the pipeline quarantines it (engines/base.py). Uses the
tokenizer's chat template when it has one, else plain "system + user" text. Left padding and
left truncation keep the end of the prompt (the "JSON:" cue) in view.

Usage (EngineConfig):
    engine: {kind: transformers, model_path: /models/Qwen2.5-7B-Instruct, num_actors: 2,
             num_gpus_per_actor: 1, batch_size: 8, max_new_tokens: 512}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa

from echo_ray.config import EngineConfig
from echo_ray.engines.base import TextEngine, generate_validated, inputs, with_outputs
from echo_ray.errors import ConfigError
from echo_ray.storage import is_s3


class HFGenerator:
    """Greedy batched generation with a local causal LM; `__call__` is the Generate contract."""

    def __init__(self, cfg: EngineConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from echo_ray.model.checkpoint import resolve_device
        from echo_ray.storage import resolve_local

        self.cfg = cfg
        path = resolve_local(cfg.model_path)
        self.device = resolve_device("auto" if cfg.num_gpus_per_actor > 0 else "cpu")
        use_gpu = self.device.type == "cuda"
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.tok.padding_side = "left"
        self.tok.truncation_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token or self.tok.unk_token
        dtype = torch.bfloat16 if use_gpu else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(self.device).eval()
        limit = getattr(self.model.config, "max_position_embeddings", 4096) or 4096
        self.max_input = max(16, limit - cfg.max_new_tokens)

    def _text(self, system: str, user: str) -> str:
        if getattr(self.tok, "chat_template", None):
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return f"{system}\n\n{user}\n"

    def __call__(self, prompts: list[tuple[str, str]]) -> list[str]:
        import torch

        out: list[str] = []
        bs = max(1, self.cfg.batch_size)
        for start in range(0, len(prompts), bs):
            texts = [self._text(s, u) for s, u in prompts[start : start + bs]]
            enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_input)
            enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode():
                gen = self.model.generate(
                    **enc,
                    max_new_tokens=self.cfg.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tok.pad_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(self.tok.batch_decode(new, skip_special_tokens=True))
        return out


class _HFWorker:
    """Ray Data actor: model loaded once, every batch generated, validated and retried."""

    def __init__(self, cfg: dict, task: str):
        self.cfg = EngineConfig(**cfg)
        self.task = task
        self.generate = HFGenerator(self.cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return with_outputs(batch, generate_validated(self.generate, inputs(batch), self.task, self.cfg))


class TransformersEngine(TextEngine):
    kind = "transformers"
    translates = True

    def __init__(self, cfg: EngineConfig):
        super().__init__(cfg)
        if not cfg.model_path:
            raise ConfigError("engine 'transformers' needs normalize.engine.model_path (local dir or s3://)")
        if not is_s3(cfg.model_path) and not Path(cfg.model_path).expanduser().is_dir():
            raise ConfigError(f"engine model_path is not a directory: {cfg.model_path}")

    def apply(self, ds, task: str):
        import ray.data

        return ds.map_batches(
            _HFWorker,
            fn_constructor_kwargs={"cfg": dataclasses.asdict(self.cfg), "task": task},
            compute=ray.data.ActorPoolStrategy(size=max(1, self.cfg.num_actors)),
            batch_size=max(1, self.cfg.batch_size),
            batch_format="pyarrow",
            num_cpus=self.cfg.num_cpus_per_actor,
            num_gpus=self.cfg.num_gpus_per_actor,
        )
