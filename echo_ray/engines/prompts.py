"""Versioned prompts for the LLM engines, and the JSON schema check their answers must pass.

Standardization asks for `{"findings": ..., "impression": ...}` that walks every standard region in
the fixed order of method.md and states negatives explicitly; translation asks for the same JSON in
Simplified Chinese (所见 / 结论 content), keeping medical terms, numbers, laterality and order.
An answer that fails `validate_output` is sent back with the error shown (`retry_prompt`); the
engines quarantine a record after `max_retries` such rounds. The version string is recorded in the
manifest; change the text only under a new version key.

Usage:
    system, user = build_prompt("v1", "standardize", findings, impression, indication)
    obj, error = validate_output(model_text, "standardize", require_all_regions=True)
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from echo_ray.clinical.regions import REGIONS, missing_regions
from echo_ray.errors import ConfigError

TASKS = ("standardize", "translate")
_REGION_LIST = "; ".join(REGIONS)

PROMPTS: dict[str, dict[str, str]] = {
    "v1": {
        "system": "You are an expert radiologist who edits chest X-ray reports. You answer with JSON only.",
        "standardize": (
            "Rewrite this chest X-ray report as a JSON object with exactly two string fields, "
            '"findings" and "impression".\n'
            f'In "findings", describe every region in this order: {_REGION_LIST}. '
            "For a region the report does not describe as abnormal, state the negative explicitly "
            '(for example "No pleural effusion or pneumothorax."). Use standard radiology '
            "terminology, keep laterality, sizes and comparisons, and add no finding the report does "
            'not support. "impression" states the main conclusions in one to three sentences.\n\n'
            "Indication: {indication}\nFindings: {findings}\nImpression: {impression}\n\nJSON:"
        ),
        "translate": (
            "Translate this chest X-ray report from English into Simplified Chinese. Answer with a JSON "
            'object with exactly two string fields, "findings" (所见) and "impression" (结论). Keep the '
            "sentence order and structure, translate medical terms with their standard Chinese "
            "radiology terms, and keep numbers, units and laterality exactly.\n\n"
            "Findings: {findings}\nImpression: {impression}\n\nJSON:"
        ),
        "retry": (
            "{prompt}\n\nYour previous answer was:\n{previous}\n\nIt was rejected: {error}\n"
            "Answer again with only the corrected JSON object.\nJSON:"
        ),
    }
}

_CJK = re.compile(r"[\u4e00-\u9fff]")
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)


def prompt_set(version: str) -> dict[str, str]:
    if version not in PROMPTS:
        raise ConfigError(f"unknown prompt_version {version!r}; available: {sorted(PROMPTS)}")
    return PROMPTS[version]


def build_prompt(version: str, task: str, findings: str, impression: str, indication: str = "") -> tuple[str, str]:
    """(system, user) messages for one record."""
    if task not in TASKS:
        raise ValueError(f"unknown engine task {task!r}; expected one of {TASKS}")
    p = prompt_set(version)
    user = p[task].format(findings=findings or "(none)", impression=impression or "(none)",
                          indication=indication or "(none)")  # fmt: skip
    return p["system"], user


def retry_prompt(version: str, user: str, previous: str, error: str) -> str:
    """The original request plus the rejected answer and why it was rejected."""
    return prompt_set(version)["retry"].format(prompt=user, previous=(previous or "(empty)")[:2000], error=error)


def _extract_object(text: str) -> Optional[str]:
    t = _FENCE.sub("", (text or "").strip())
    start, end = t.find("{"), t.rfind("}")
    return t[start : end + 1] if 0 <= start < end else None


def validate_output(text: str, task: str, require_all_regions: bool = True) -> tuple[Optional[dict[str, str]], str]:
    """(object, "") when `text` is a valid answer for `task`, else (None, a one-line error)."""
    raw = _extract_object(text)
    if raw is None:
        return None, "no JSON object found in the answer"
    try:
        obj: Any = json.loads(raw)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e.msg} at position {e.pos}"
    if not isinstance(obj, dict):
        return None, "the JSON must be an object"
    keys = set(obj)
    if keys != {"findings", "impression"}:
        return None, f'the object must have exactly the keys "findings" and "impression", got {sorted(keys)}'
    for k in ("findings", "impression"):
        if not isinstance(obj[k], str) or not obj[k].strip():
            return None, f'"{k}" must be a non-empty string'
    if task == "standardize" and require_all_regions:
        missing = missing_regions(obj["findings"])
        if missing:
            return None, f'"findings" does not describe these regions: {", ".join(missing)}'
    if task == "translate":
        for k in ("findings", "impression"):
            if not _CJK.search(obj[k]):
                return None, f'"{k}" is not in Chinese'
    return {"findings": obj["findings"].strip(), "impression": obj["impression"].strip()}, ""
