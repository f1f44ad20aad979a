"""Small corpora written by the tests in each distributor's real layout (see the adapters' docstrings).

Each writer returns the corpus root and plants a known set of good and bad records, so tests can
check that every record is accounted for with the expected reason. Report texts are invented for
the tests (no real patient text); `write_iu_subset` derives a small IU export at test time from the
real tables under ../shared/data (never copied into the repo).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image

NORMAL = ("The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax.", "No acute cardiopulmonary process.")
EFFUSION = ("Small left pleural effusion. The heart is mildly enlarged.", "Small left pleural effusion. Mild cardiomegaly.")
OPACITY = ("Right lower lobe opacity concerning for pneumonia. No pneumothorax.", "Right lower lobe pneumonia.")

CHEXPERT_COLUMNS = [
    "path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id", "patient_report_date_order",
    "report", "section_narrative", "section_clinical_history", "section_history", "section_comparison",
    "section_technique", "section_procedure_comments", "section_findings", "section_impression",
    "section_end_of_impression", "section_summary", "section_accession_number", "age", "sex", "race",
    "ethnicity", "interpreter_needed", "insurance_type", "recent_bmi", "deceased", "split",
]  # fmt: skip


def png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(path)


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def mimic_report(exam: str, findings: str, impression: str) -> str:
    return (f"                                 FINAL REPORT\n EXAMINATION:  {exam}\n \n INDICATION:  ___F with cough\n"
            f" \n TECHNIQUE:  Chest PA and lateral\n \n COMPARISON:  None.\n \n FINDINGS: \n \n {findings}\n \n"
            f" IMPRESSION: \n \n {impression}\n")  # fmt: skip


def write_mimic(root: Path) -> Path:
    """Good: 50000001 (PA+LAT), 50000002 (AP). Bad: 50000003 non-UTF-8, 50000004 unreadable,
    50000005 knee exam (non_chest), 50000006 missing image file, 50000007 empty sections."""
    studies = {
        "50000001": ("10000001", mimic_report("CHEST (PA AND LAT)", *NORMAL), ["PA", "LATERAL"]),
        "50000002": ("10000001", mimic_report("CHEST (PORTABLE AP)", *EFFUSION), ["AP"]),
        "50000005": ("10000002", mimic_report("KNEE (3 VIEWS)", "Mild degenerative change of the knee joint.",
                                              "No fracture of the knee."), ["AP"]),  # fmt: skip
        "50000006": ("10000002", mimic_report("CHEST (PA AND LAT)", *OPACITY), ["PA"]),
        "50000007": ("10000003", " EXAMINATION: CHEST (PA AND LAT)\n INDICATION: cough\n FINDINGS:\n \n IMPRESSION:\n", ["PA"]),
    }  # fmt: skip
    meta, split = [], []
    for study, (subj, text, views) in studies.items():
        d = root / "files" / f"p{subj[:2]}" / f"p{subj}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"s{study}.txt").write_text(text, encoding="utf-8")
        for k, view in enumerate(views):
            dicom = f"{study}-{k:02d}"
            meta.append([dicom, subj, study, "CHEST (PA AND LAT)", view, "3056", "2544"])
            split.append([dicom, study, subj, "train"])
            if study != "50000006":
                png(d / f"s{study}" / f"{dicom}.jpg")
    bad = root / "files" / "p10" / "p10000004"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "s50000003.txt").write_bytes(b"FINDINGS: Lungs clear \xff\xfe heart normal.\nIMPRESSION: normal\n")
    (bad / "s50000004.txt").mkdir()  # a directory where a report file should be: unreadable
    meta_header = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns"]
    _csv(root / "mimic-cxr-2.0.0-metadata.csv", meta_header, meta)
    _csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split)
    return root


def _chexpert_row(path: str, lateral: bool, patient: str, findings: str, impression: str, **kw: str) -> list[str]:
    row = {c: "" for c in CHEXPERT_COLUMNS}
    row.update(path_to_image=path, frontal_lateral="Lateral" if lateral else "Frontal", ap_pa="" if lateral else "PA",
               deid_patient_id=patient, section_findings=findings, section_impression=impression,
               report=f"FINDINGS: {findings} IMPRESSION: {impression}", split="train", **kw)  # fmt: skip
    return [row[c] for c in CHEXPERT_COLUMNS]


def write_chexpert(root: Path) -> Path:
    """Good: patient00001/study1 (2 views), patient00002/study1. Bad: a malformed row (extra
    fields), patient00003/study1 whose findings column holds an image file name (wrong column)."""
    rows = [
        _chexpert_row("train/patient00001/study1/view1_frontal.jpg", False, "p1", *NORMAL, section_clinical_history="Cough."),
        _chexpert_row("train/patient00001/study1/view2_lateral.jpg", True, "p1", *NORMAL),
        _chexpert_row("train/patient00002/study1/view1_frontal.jpg", False, "p2", *OPACITY),
        _chexpert_row("train/patient00003/study1/view1_frontal.jpg", False, "p3", "view1_frontal.jpg", ""),
    ]  # fmt: skip
    for r in rows:
        png(root / r[0])
    _csv(root / "df_chexpert_plus_240401.csv", CHEXPERT_COLUMNS, rows)
    with (root / "df_chexpert_plus_240401.csv").open("a", encoding="utf-8") as f:
        f.write("train/patient00009/study1/view1_frontal.jpg,too,few,fields\n")
    return root


def write_rexgradient(root: Path, fmt: str = "csv") -> Path:
    """Good: GRDN0001 (PA + LATERAL), GRDN0002. Bad: a row with no study id."""
    studies = [
        {"id": "GRDN0001", "PatientID": "P1", "ImagePath": ["deid_png/GRDN0001/a.png", "deid_png/GRDN0001/b.png"],
         "ImageViewPosition": ["PA", "LATERAL"], "Indication": "Cough", "Comparison": "None",
         "Findings": NORMAL[0], "Impression": NORMAL[1]},
        {"id": "GRDN0002", "PatientID": "P2", "ImagePath": ["deid_png/GRDN0002/a.png"], "ImageViewPosition": ["AP"],
         "Indication": "Fever", "Comparison": "", "Findings": EFFUSION[0], "Impression": EFFUSION[1]},
        {"id": "", "PatientID": "P3", "ImagePath": ["deid_png/x.png"], "ImageViewPosition": ["PA"],
         "Indication": "", "Comparison": "", "Findings": NORMAL[0], "Impression": NORMAL[1]},
    ]  # fmt: skip
    for s in studies[:2]:
        for p in s["ImagePath"]:
            png(root / p)
    meta = root / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        (meta / "train_metadata.json").write_text(json.dumps(studies), encoding="utf-8")
    else:
        header = list(studies[0])
        _csv(meta / "train_metadata.csv", header,
             [[json.dumps(s[h]) if isinstance(s[h], list) else s[h] for h in header] for s in studies])  # fmt: skip
    return root


IU_REPORT_HEADER = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]


def write_iu_fixture(root: Path) -> Path:
    """Good: uid 1, 2. Bad: uid 3 empty sections, a malformed row, uid 5 non-UTF-8 bytes,
    uid 6 listed with no projection (no_images), uid 7 with a malformed projection row."""
    rows = [
        ["1", "normal", "normal", "Xray Chest PA and Lateral", "Cough.", "None.", *NORMAL],
        ["2", "Effusion", "Effusion", "Xray Chest PA and Lateral", "Fever.", "None.", *EFFUSION],
        ["3", "normal", "normal", "Xray Chest PA and Lateral", "Pain.", "None.", "", ""],
        ["6", "normal", "normal", "Xray Chest PA and Lateral", "Pain.", "None.", *NORMAL],
        ["7", "normal", "normal", "Xray Chest PA and Lateral", "Pain.", "None.", *NORMAL],
    ]
    _csv(root / "indiana_reports.csv", IU_REPORT_HEADER, rows)
    with (root / "indiana_reports.csv").open("ab") as f:
        f.write(b"4,normal,only four fields\n")
        f.write(b"5,normal,normal,Xray Chest,Pain.,None.,Lungs clear \xe9\xff.,Normal.\n")
    proj = []
    for uid in ("1", "2", "3", "5", "7"):
        for k, view in enumerate(("Frontal", "Lateral")):
            name = f"{uid}_IM-000{k}.dcm.png"
            proj.append([uid, name, view])
            png(root / "images" / "images_normalized" / name)
    _csv(root / "indiana_projections.csv", ["uid", "filename", "projection"], proj)
    with (root / "indiana_projections.csv").open("a", encoding="utf-8") as f:
        f.write("7,7_IM-0009.dcm.png\n")  # a projection row missing its field
    return root


def write_iu_subset(real: Path, root: Path, n: int) -> Path:
    """The first `n` reports of the real IU tables (and their projections), at test time."""
    with (real / "indiana_reports.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    keep = rows[1 : n + 1]
    uids = {r[0] for r in keep}
    _csv(root / "indiana_reports.csv", rows[0], keep)
    with (real / "indiana_projections.csv").open(newline="", encoding="utf-8") as f:
        proj = list(csv.reader(f))
    _csv(root / "indiana_projections.csv", proj[0], [r for r in proj[1:] if r[0] in uids])
    return root


def write_phantom_by_hand(root: Path) -> Path:
    """Two phantom studies in the generator's layout, written without the generator."""
    (root / "reports").mkdir(parents=True, exist_ok=True)
    (root / "README.txt").write_text("SYNTHETIC DATA for tests.\n", encoding="utf-8")
    lines = []
    for i, (f, imp) in enumerate((NORMAL, EFFUSION)):
        sid = f"phantom-{i:06d}"
        png(root / "images" / f"{sid}_PA.png")
        (root / "reports" / f"{sid}.txt").write_text(
            f"EXAMINATION: CHEST (PA AND LAT)\nINDICATION: Cough.\n\nFINDINGS: {f}\n\nIMPRESSION: {imp}\n", encoding="utf-8")
        lines.append(json.dumps({"study_id": sid, "images": [{"path": f"images/{sid}_PA.png", "view": "PA"}],
                                 "report_path": f"reports/{sid}.txt", "labels": {}, "synthetic": True}))  # fmt: skip
    lines.append("{not json")
    (root / "studies.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
