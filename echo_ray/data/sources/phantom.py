"""Phantom corpus adapter (SYNTHETIC data written by `echo_ray.data.phantom.write_phantom`).

Layout:
    <path>/README.txt      synthetic-data statement
    <path>/studies.jsonl   {"study_id", "images": [{"path", "view"}], "report_path", "labels", "synthetic"}
    <path>/images/*.png, <path>/reports/*.txt   (paths in studies.jsonl are relative to <path>)
Reports are raw free text with EXAMINATION / INDICATION / FINDINGS / IMPRESSION headers, parsed
like MIMIC's. extras: exam, synthetic, phantom_labels (the generator's ground truth, JSON).
Tasks are ranges of studies.jsonl lines ("0-999"), so large phantom corpora read in parallel.

Usage:
    records = read_task(SourceSpec("phantom", "phantom/"), "0-999")
"""

from __future__ import annotations

import json
from pathlib import Path

from echo_ray.config import SourceSpec
from echo_ray.data.schema import image, issue_record, new_record
from echo_ray.data.sources import join_image
from echo_ray.data.sources.sections import parse_report_text
from echo_ray.data.sources.tabular import decode_text, read_bytes, read_text_file, source_root
from echo_ray.errors import InputError

NAME = "phantom"
INDEX = "studies.jsonl"
LINES_PER_TASK = 1000


def _index(spec: SourceSpec) -> Path:
    root = source_root(spec.path, NAME)
    if not (root / INDEX).is_file():
        raise InputError(f"{NAME}: {root} is not a phantom corpus (no {INDEX})")
    return root / INDEX


def _lines(spec: SourceSpec) -> list[str]:
    text, problem = decode_text(read_bytes(_index(spec)))
    if problem:
        raise InputError(f"{NAME}: {_index(spec)} is {problem}")
    return text.splitlines()


def list_tasks(spec: SourceSpec) -> list[str]:
    n = len(_lines(spec))
    return [f"{a}-{min(a + LINES_PER_TASK, n) - 1}" for a in range(0, n, LINES_PER_TASK)]


def _record(root: Path, images_root: str, obj: dict, n: int) -> dict:
    sid = str(obj.get("study_id") or "").strip()
    if not sid or not isinstance(obj.get("images"), list) or not obj.get("report_path"):
        return issue_record(NAME, sid or f"line{n}", "malformed_row",
                            f"{INDEX} line {n}: needs study_id, images (list) and report_path")  # fmt: skip
    text, issue, detail = read_text_file(root / str(obj["report_path"]))
    if issue:
        return issue_record(NAME, sid, issue, detail)
    sec = parse_report_text(text)
    ims = [image(join_image(images_root, str(im.get("path", ""))), im.get("view", ""))
           for im in obj["images"] if isinstance(im, dict)]  # fmt: skip
    extras = {
        "exam": sec.exam,
        "comparison": sec.comparison,
        "synthetic": str(bool(obj.get("synthetic", True))).lower(),
        "phantom_labels": json.dumps(obj.get("labels", {}), sort_keys=True),
        "patient_id": f"{NAME}:{sid}",
    }
    return new_record(NAME, sid, images=ims, raw_findings=sec.findings, raw_impression=sec.impression,
                      indication=sec.indication, raw_text=text, extras=extras)  # fmt: skip


def read_task(spec: SourceSpec, task: str) -> list[dict]:
    root = _index(spec).parent
    images_root = spec.images or str(root)
    first, last = (int(x) for x in task.split("-"))
    records = []
    for n, line in enumerate(_lines(spec)[first : last + 1], first + 1):
        if not line.strip():
            continue  # a blank line is not a record
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            records.append(issue_record(NAME, f"line{n}", "malformed_row", f"{INDEX} line {n}: invalid JSON ({e.msg})"))
            continue
        if not isinstance(obj, dict):
            records.append(issue_record(NAME, f"line{n}", "malformed_row", f"{INDEX} line {n}: not an object"))
            continue
        records.append(_record(root, images_root, obj, n))
    return records
