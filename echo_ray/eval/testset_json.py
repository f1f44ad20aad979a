"""Read the published ECHO test sets (midea-ai/ECHO `eval/CXRTest_demo/jsons/*.json`) for evaluation.

Each file is a JSON list of ``{"sample_id", "images": [paths relative to the JSON file],
"ground_truth": {"findings", "impression"}}``, one file per dataset and language; the language is
the file name's ``_EN_`` / ``_ZH_`` tag (a file without one is taken to be the requested language).
`--data` may name one file or a folder of them; a folder contributes its files of the requested
language, in name order. Image paths are resolved against the JSON file's folder, the reference
is serialized like our own splits (echo_ray.report.format_report), and `sample_id` becomes the
study id that predictions keep. Problems are InputErrors naming the file and sample: malformed
JSON or entries, a missing image file, an empty ground truth, a language mismatch.

Usage:
    split = load_json_testset("eval/CXRTest_demo/jsons", "en", max_reports=200)
    split.studies[0].study_id   # the sample_id
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from echo_ray.errors import InputError
from echo_ray.eval.split import EvalSplit, EvalStudy
from echo_ray.report import format_report

_LANG_TAG = re.compile(r"(?:^|[_\-.])(EN|ZH)(?:[_\-.]|$)", re.IGNORECASE)


def is_json_testset(data: str) -> bool:
    """True for a .json file, or a local folder of .json files that is not a normalized dataset."""
    p = Path(data).expanduser()
    if p.suffix.lower() == ".json":
        return True
    return p.is_dir() and not (p / "manifest.json").exists() and any(p.glob("*.json"))


def file_language(path: Path) -> str | None:
    m = _LANG_TAG.search(path.stem)
    return m.group(1).lower() if m else None


def _files(data: str, language: str) -> list[Path]:
    p = Path(data).expanduser()
    if p.suffix.lower() == ".json":
        if not p.is_file():
            raise InputError(f"test-set file not found: {p}")
        tag = file_language(p)
        if tag is not None and tag != language:
            raise InputError(f"{p} is a '{tag}' test set but the evaluation language is '{language}'")
        return [p]
    files = [f for f in sorted(p.glob("*.json")) if file_language(f) in (None, language)]
    if not files:
        raise InputError(f"no '{language}' test-set JSON in {p} (files need an _{language.upper()}_ tag or none)")
    return files


def _entry(item: object, i: int, path: Path, language: str) -> EvalStudy:
    where = f"{path} entry {i}"
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected an object with sample_id, images, ground_truth")
    sid = item.get("sample_id")
    if sid is None or str(sid) == "":
        raise InputError(f"{where}: no sample_id")
    where = f"{path} sample {sid}"
    images = item.get("images")
    if not isinstance(images, list) or not images or not all(isinstance(x, str) and x for x in images):
        raise InputError(f"{where}: 'images' must be a non-empty list of paths")
    gt = item.get("ground_truth")
    if not isinstance(gt, dict):
        raise InputError(f"{where}: 'ground_truth' must be an object with findings and impression")
    findings, impression = str(gt.get("findings") or "").strip(), str(gt.get("impression") or "").strip()
    if not findings and not impression:
        raise InputError(f"{where}: empty ground truth (neither findings nor impression)")
    resolved = []
    for rel in images:
        full = (path.parent / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
        if not full.is_file():
            raise InputError(f"{where}: image not found: {rel} (resolved against {path.parent} to {full})")
        resolved.append(str(full))
    reference = format_report(findings, impression, language)  # type: ignore[arg-type]
    return EvalStudy(str(sid), path.stem, language, reference, tuple(resolved))


def load_json_testset(data: str, language: str, max_reports: int) -> EvalSplit:
    """An EvalSplit of the first `max_reports` samples of `language` (module doc)."""
    studies = []
    for path in _files(data, language):
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read test set {path}: {e.__class__.__name__}: {e}") from None
        if not isinstance(items, list):
            raise InputError(f"{path}: expected a JSON list of samples, got {type(items).__name__}")
        studies += [_entry(item, i, path, language) for i, item in enumerate(items)]
    if not studies:
        raise InputError(f"test set {data} has no samples")
    ids = [s.study_id for s in studies]
    dupes = sorted({x for x in ids if ids.count(x) > 1})
    if dupes:
        raise InputError(f"test set {data}: duplicate sample_id(s) {', '.join(dupes[:3])}")
    total = len(studies)
    return EvalSplit(data, "test", language, studies[:max_reports], total, total, {language: total})
