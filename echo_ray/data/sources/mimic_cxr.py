"""MIMIC-CXR adapter: per-study free-text reports plus the MIMIC-CXR-JPG metadata and split CSVs.

Reference: Johnson et al., "MIMIC-CXR-JPG" (PhysioNet, v2.0.0/2.1.0) and "MIMIC-CXR" (v2.0.0/2.1.0).
Assumed layout (as distributed; reports from mimic-cxr-reports.zip unpacked into the same tree):
    <path>/files/p10/p10000032/s50414267.txt            report of study 50414267 (subject 10000032)
    <path>/files/p10/p10000032/s50414267/<dicom_id>.jpg  its images (JPG; *.dcm also accepted)
    <path>/mimic-cxr-2.0.0-metadata.csv[.gz]  dicom_id,subject_id,study_id,
                                               PerformedProcedureStepDescription,ViewPosition,...
    <path>/mimic-cxr-2.0.0-split.csv[.gz]     dicom_id,study_id,subject_id,split   (optional)
Reports may also live under <path>/mimic-cxr-reports/files/. `images` in the SourceSpec points
at a separate JPG root (local or s3://) holding files/p*/p*/s*/<dicom_id>.jpg.
Report text is split with the MIMIC section conventions (FINDINGS:, IMPRESSION:, ...);
extras: subject_id, patient_id, split, exam (EXAMINATION header, else the metadata's
PerformedProcedureStepDescription). One task per top-level group directory (p10 ... p19).

Usage:
    tasks = list_tasks(SourceSpec("mimic_cxr", "/data/mimic-cxr-jpg/2.1.0"))   # ["files/p10", ...]
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from echo_ray.config import SourceSpec
from echo_ray.data.schema import image, issue_record, new_record
from echo_ray.data.sources import join_image
from echo_ray.data.sources.sections import parse_report_text
from echo_ray.data.sources.tabular import read_csv_rows, read_text_file, source_root
from echo_ray.errors import InputError

NAME = "mimic_cxr"
METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"


def _find(root: Path, name: str) -> Path | None:
    for cand in (root / name, root / (name + ".gz")):
        if cand.is_file():
            return cand
    return None


def _reports_root(root: Path) -> Path:
    for cand in (root / "files", root / "mimic-cxr-reports" / "files"):
        if cand.is_dir():
            return cand
    raise InputError(f"{NAME}: no report tree under {root} (expected files/p1*/p*/s*.txt)")


def list_tasks(spec: SourceSpec) -> list[str]:
    root = source_root(spec.path, NAME)
    if _find(root, METADATA) is None:
        raise InputError(f"{NAME}: {root} has no {METADATA}[.gz] (needed to map studies to images)")
    reports = _reports_root(root)
    groups = sorted(p.name for p in reports.iterdir() if p.is_dir() and p.name.startswith("p"))
    if not groups:
        raise InputError(f"{NAME}: no p* group directories under {reports}")
    return groups


@functools.lru_cache(maxsize=2)
def _metadata(root: str, images: str) -> tuple[dict[str, list[dict]], dict[str, str], dict[str, str], dict[str, str]]:
    """study_id -> images / procedure description / split / metadata problem (cached per worker)."""
    meta = _find(Path(root), METADATA)
    by_study: dict[str, list[dict]] = {}
    procedure: dict[str, str] = {}
    bad: dict[str, str] = {}
    for row in read_csv_rows(meta, required=("dicom_id", "subject_id", "study_id")):
        v = row.values
        if row.issue:  # the study would silently lose an image: quarantine it instead
            bad.setdefault(v.get("study_id", "").strip(), f"{meta.name}: {row.detail}")
            continue
        subj, study, dicom = v["subject_id"].strip(), v["study_id"].strip(), v["dicom_id"].strip()
        rel = f"files/p{subj[:2]}/p{subj}/s{study}/{dicom}.jpg"
        by_study.setdefault(study, []).append(image(join_image(images, rel), v.get("ViewPosition", "")))
        procedure.setdefault(study, v.get("PerformedProcedureStepDescription", ""))
    split: dict[str, str] = {}
    split_file = _find(Path(root), SPLIT)
    if split_file is not None:
        for row in read_csv_rows(split_file, required=("study_id", "split")):
            if not row.issue:
                split[row.values["study_id"].strip()] = row.values["split"].strip()
    return by_study, procedure, split, bad


def _dicom_fallback(images: list[dict]) -> list[dict]:
    """Use the DICOM file where a local JPG is absent but the .dcm exists (MIMIC-CXR, not -JPG)."""
    out = []
    for im in images:
        p = im["path"]
        if not p.startswith("s3://") and not os.path.exists(p) and os.path.exists(p[:-4] + ".dcm"):
            im = {**im, "path": p[:-4] + ".dcm"}
        out.append(im)
    return out


def read_task(spec: SourceSpec, task: str) -> list[dict]:
    root = Path(spec.path).expanduser()
    images_root = spec.images or str(root)
    by_study, procedure, split, bad_meta = _metadata(str(root), images_root)
    group = _reports_root(root) / task
    records = []
    for path in sorted(group.glob("p*/s*.txt")):
        study = path.stem[1:]
        subject = path.parent.name[1:]
        text, issue, detail = read_text_file(path)
        if not issue and study in bad_meta:
            issue, detail = "malformed_row", bad_meta[study]
        if issue:
            records.append(issue_record(NAME, study, issue, detail))
            continue
        sec = parse_report_text(text)
        extras = {"subject_id": subject, "patient_id": f"{NAME}:{subject}", "split": split.get(study, ""),
                  "exam": sec.exam or procedure.get(study, ""), "comparison": sec.comparison}  # fmt: skip
        records.append(
            new_record(
                NAME, study,
                images=_dicom_fallback(by_study.get(study, [])),
                raw_findings=sec.findings, raw_impression=sec.impression,
                indication=sec.indication, raw_text=text, extras=extras,
            )  # fmt: skip
        )
    return records
