"""The `vllm` engine for GPU clusters: Ray Data's LLM processor (`ray.data.llm`) over a local model.

`vllm` is imported only when this engine is selected (pip install 'echo_ray[gpu]'); without it the
engine fails at construction with a one-line ConfigError. Works with any instruct model directory
(e.g. Baichuan-M2-32B, Qwen2.5-72B-Instruct). One processor pass generates every pending row;
answers are checked with the shared schema validator, and the rows that failed go through another
pass whose prompt shows the rejected answer and the error (engines/prompts.py), up to max_retries.
Each pass is materialized before the next, so this engine is not streaming: the pipeline runs it
in waves of `normalize.wave_shards` shards and writes each wave's shards when it finishes.
All input columns are carried through the processor (ray.data.llm keeps them until postprocess).

Usage (EngineConfig):
    engine: {kind: vllm, model_path: /models/Baichuan-M2-32B, num_actors: 4, batch_size: 32,
             num_gpus_per_actor: 2}     # tensor_parallel_size = num_gpus_per_actor
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pyarrow as pa

from echo_ray.config import EngineConfig
from echo_ray.engines.base import EngineResult, TextEngine, inputs, with_outputs
from echo_ray.engines.prompts import build_prompt, retry_prompt, validate_output
from echo_ray.errors import ConfigError

_PROMPT_COLS = ("vllm_system", "vllm_user", "vllm_first_user")


def _first_prompts(batch: pa.Table, version: str, task: str) -> pa.Table:
    prompts = [build_prompt(version, task, f, i, ind) for f, i, ind in inputs(batch)]
    systems, users = [p[0] for p in prompts], [p[1] for p in prompts]
    for name, values in zip(_PROMPT_COLS, (systems, users, users)):
        batch = batch.append_column(name, pa.array(values, type=pa.string()))
    return with_outputs(batch, [EngineResult() for _ in prompts])


def _check(batch: pa.Table, version: str, task: str, attempt: int, require_all: bool) -> pa.Table:
    """Validate answers; failures get their retry prompt in vllm_user for the next pass."""
    answers = batch.column("generated_text").to_pylist()
    firsts = batch.column("vllm_first_user").to_pylist()
    users, results = batch.column("vllm_user").to_pylist(), []
    for k, answer in enumerate(answers):
        obj, error = validate_output(answer or "", task, require_all)
        if obj is not None:
            results.append(EngineResult(obj["findings"], obj["impression"], "", attempt))
            continue
        results.append(EngineResult(error=f"invalid output after {attempt} attempt(s): {error}", attempts=attempt))
        users[k] = retry_prompt(version, firsts[k], answer or "", error)
    batch = batch.drop_columns(["generated_text", "vllm_user"])
    return with_outputs(batch.append_column("vllm_user", pa.array(users, type=pa.string())), results)


class VLLMEngine(TextEngine):
    kind = "vllm"
    translates = True
    streaming = False

    def __init__(self, cfg: EngineConfig):
        super().__init__(cfg)
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("engine 'vllm' selected but vllm is not installed (pip install 'echo_ray[gpu]')")
        if not cfg.model_path:
            raise ConfigError("engine 'vllm' needs normalize.engine.model_path (a local model directory)")

    def _processor(self) -> Any:
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        tp = max(1, int(self.cfg.num_gpus_per_actor))
        config = vLLMEngineProcessorConfig(
            model_source=self.cfg.model_path,
            concurrency=max(1, self.cfg.num_actors),
            batch_size=max(1, self.cfg.batch_size),
            engine_kwargs={"tensor_parallel_size": tp, "max_model_len": 8192},
        )
        max_tokens = self.cfg.max_new_tokens
        return build_processor(
            config,
            preprocess=lambda row: dict(
                messages=[
                    {"role": "system", "content": row["vllm_system"]},
                    {"role": "user", "content": row["vllm_user"]},
                ],
                sampling_params={"temperature": 0.0, "max_tokens": max_tokens},
            ),
            postprocess=lambda row: {k: v for k, v in row.items() if k not in ("messages", "sampling_params")},
        )

    def apply(self, ds, task: str):
        v, req = self.cfg.prompt_version, self.cfg.require_all_regions
        pending = ds.map_batches(_first_prompts, fn_kwargs={"version": v, "task": task}, batch_format="pyarrow")
        done = []
        for attempt in range(1, self.cfg.max_retries + 2):
            out = self._processor()(pending).map_batches(
                _check, fn_kwargs={"version": v, "task": task, "attempt": attempt, "require_all": req},
                batch_format="pyarrow",
            ).materialize()  # fmt: skip
            last = attempt == self.cfg.max_retries + 1
            done.append(out if last else out.filter(lambda r: r["out_error"] == ""))
            if last:
                break
            pending = out.filter(lambda r: r["out_error"] != "")
            if pending.count() == 0:
                break
        result = done[0].union(*done[1:]) if len(done) > 1 else done[0]
        return result.drop_columns(list(_PROMPT_COLS))
