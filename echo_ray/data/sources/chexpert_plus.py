"""CheXpert-Plus adapter: the report CSV with section_* columns, one row per image.

Reference: Chambon et al., "CheXpert Plus" (2024), Stanford AIMI; github.com/Stanford-AIMI/chexpert-plus.
Assumed layout:
    <path>/df_chexpert_plus_240401.csv   (any df_chexpert_plus_*.csv) with columns
        path_to_image, path_to_dcm, frontal_lateral, ap_pa, deid_patient_id,
        patient_report_date_order, report, section_narrative, section_clinical_history,
        section_history, section_comparison, section_technique, section_procedure_comments,
        section_findings, section_impression, section_end_of_impression, section_summary,
        section_accession_number, age, sex, race, ..., split
    images under <path> (or SourceSpec.images) at path_to_image, e.g.
        train/patient00001/study1/view1_frontal.jpg; the PNG release's .png twin (also under PNG/)
        is used when the .jpg is absent.
Rows are grouped into studies by the image's directory ("patient00001/study1"). When both
section columns are empty but `report` holds the full text, sections are parsed from it.
extras: patient_id, split, exam (technique / procedure comments), comparison.

Usage:
    records = read_task(SourceSpec("chexpert_plus", "/data/chexpert_plus"), "df_chexpert_plus_240401.csv")
"""

from __future__ import annotations

import os
from pathlib import Path

from echo_ray.config import SourceSpec
from echo_ray.data.schema import image, issue_record, new_record
from echo_ray.data.sources import join_image
from echo_ray.data.sources.sections import parse_report_text
from echo_ray.data.sources.tabular import read_csv_rows, source_root
from echo_ray.errors import InputError

NAME = "chexpert_plus"
REQUIRED = ("path_to_image", "section_findings", "section_impression")


def list_tasks(spec: SourceSpec) -> list[str]:
    root = source_root(spec.path, NAME)
    files = sorted(p.name for p in root.glob("df_chexpert_plus_*.csv*"))
    if not files:
        raise InputError(f"{NAME}: no df_chexpert_plus_*.csv under {root}")
    return files[-1:]  # the newest release; older ones are superseded copies of the same studies


def _resolve(images_root: str, rel: str) -> str:
    path = join_image(images_root, rel)
    if path.startswith("s3://") or os.path.exists(path):
        return path
    stem = os.path.splitext(rel)[0] + ".png"
    for cand in (join_image(images_root, stem), join_image(images_root, os.path.join("PNG", stem))):
        if os.path.exists(cand):
            return cand
    return path  # absent: the missing-image check reports it


def _study_key(rel: str) -> str:
    parts = Path(rel).parts
    return "/".join(parts[-3:-1]) if len(parts) >= 3 else str(Path(rel).parent)


def _record(sid: str, rows: list[dict[str, str]], images_root: str) -> dict:
    v = rows[0]
    findings, impression = v.get("section_findings", "").strip(), v.get("section_impression", "").strip()
    if not findings and not impression and v.get("report", "").strip():
        sec = parse_report_text(v["report"])
        findings, impression = sec.findings, sec.impression
    views = []
    for r in rows:
        lateral = r.get("frontal_lateral", "").strip().lower() == "lateral"
        views.append(image(_resolve(images_root, r["path_to_image"].strip()),
                           "LATERAL" if lateral else (r.get("ap_pa") or r.get("frontal_lateral") or "")))  # fmt: skip
    indication = " ".join(x for x in (v.get("section_clinical_history", ""), v.get("section_history", "")) if x.strip())
    exam = " ".join(x for x in (v.get("section_technique", ""), v.get("section_procedure_comments", "")) if x.strip())
    extras = {"patient_id": f"{NAME}:{v.get('deid_patient_id', '') or sid.split('/')[0]}",
              "split": v.get("split", ""), "exam": exam, "comparison": v.get("section_comparison", "")}  # fmt: skip
    return new_record(NAME, sid, images=views, raw_findings=findings, raw_impression=impression,
                      indication=indication.strip(), raw_text=v.get("report", ""), extras=extras)  # fmt: skip


def read_task(spec: SourceSpec, task: str) -> list[dict]:
    root = Path(spec.path).expanduser()
    images_root = spec.images or str(root)
    studies: dict[str, list[dict[str, str]]] = {}
    records = []
    for row in read_csv_rows(root / task, required=REQUIRED):
        rel = row.values.get("path_to_image", "").strip()
        if row.issue or not rel:
            sid = _study_key(rel) if rel else f"{task}@line{row.line}"
            detail = row.detail or f"{task} line {row.line}: empty path_to_image"
            records.append(issue_record(NAME, f"{sid}@line{row.line}", row.issue or "malformed_row", detail))
            continue
        studies.setdefault(_study_key(rel), []).append(row.values)
    records.extend(_record(sid, rows, images_root) for sid, rows in studies.items())
    return records
