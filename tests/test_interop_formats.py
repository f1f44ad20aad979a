"""Output formats: negotiation, the DICOM SR (highdicom; dciodvfy), the FHIR DiagnosticReport, `generate --format`."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess

import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from echo_ray.interop.formats import NotAcceptable, UnknownFormat, negotiate, render_report
from echo_ray.interop.identity import ModelIdentity, ReportContent, sr_uids
from echo_ray.interop.local_pacs import cr_instance
from echo_ray.interop.sr import UNLINKED_STUDY, build_sr, read_sr_sections

IDENT = ModelIdentity("echo_tiny", "0123abcd", "onestep", 8)
CONTENT = ReportContent("Heart size normal. Lungs clear.", "No acute disease.",
                        "Findings: Heart size normal. Lungs clear. Impression: No acute disease.")  # fmt: skip


def _source(uid: str | None = None) -> pydicom.Dataset:
    return cr_instance(Image.new("L", (32, 32), 90), uid or generate_uid(), view="PA")


def _dciodvfy_errors(ds, tmp_path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools; .ci/run installs it)")
    path = tmp_path / "sr.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


@pytest.mark.parametrize("accept,fmt,want", [
    (None, None, "json"), ("", None, "json"), ("*/*", None, "json"), ("application/json", None, "json"),
    ("application/dicom", None, "dicom-sr"), ("application/fhir+json", None, "fhir"),
    ("text/html, application/fhir+json;q=0.5, application/dicom;q=0.9", None, "dicom-sr"),
    ("application/dicom", "fhir", "fhir"),
])  # fmt: skip
def test_negotiate(accept, fmt, want):
    assert negotiate(accept, fmt) == want


def test_negotiate_refuses_unknown():
    with pytest.raises(NotAcceptable, match="Accept"):
        negotiate("text/html")
    with pytest.raises(NotAcceptable):
        negotiate("application/dicom;q=0")
    with pytest.raises(UnknownFormat, match="hl7v2"):
        negotiate(None, "hl7v2")


def test_sr_from_dicom_sources_carries_patient_study_and_evidence(tmp_path):
    study = generate_uid()
    sources = [_source(study), _source(study)]
    sr = build_sr(CONTENT, IDENT, sources)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert (sr.StudyInstanceUID, sr.PatientID, sr.PatientName) == (study, "SYNTH-0001", "SYNTHETIC^PHANTOM")
    assert sr.SOPInstanceUID == sr_uids(study, IDENT)[1]
    assert sr.VerificationFlag == "UNVERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
    assert "NOT FOR DIAGNOSTIC USE" in sr.SeriesDescription
    title = sr.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("18748-4", "LN")
    refs = {(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID)
            for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            for r in s.ReferencedSOPSequence}  # fmt: skip
    assert refs == {(s.SOPClassUID, s.SOPInstanceUID) for s in sources}
    back = pydicom.dcmread(io.BytesIO(render_report(CONTENT, "dicom-sr", IDENT, sources)[0]))
    assert read_sr_sections(back) == {"findings": CONTENT.findings, "impression": CONTENT.impression}
    assert _dciodvfy_errors(sr, tmp_path) == []


def test_sr_observer_device_names_the_model():
    import highdicom as hd

    sr = build_sr(CONTENT, IDENT, [_source()])
    items = {i.ConceptNameCodeSequence[0].CodeValue: i for i in hd.sr.utils.find_content_items(sr, recursive=True)}
    assert items["121005"].ConceptCodeSequence[0].CodeValue == "121007"  # observer type: device
    assert items["121013"].TextValue == "echo_ray"  # device observer name
    assert items["121015"].TextValue == "echo_tiny onestep block 8" and items["121016"].TextValue == "0123abcd"
    assert sr.SoftwareVersions == f"echo_ray {IDENT.version}"


def test_sr_without_dicom_is_a_fresh_unlinked_study(tmp_path):
    zh = ReportContent("心影大小正常。", "", "所见：心影大小正常。 结论：", "zh")
    sr = build_sr(zh, IDENT)
    assert sr.StudyDescription == UNLINKED_STUDY and sr.PatientID == "" and sr.PatientName == ""
    assert "CurrentRequestedProcedureEvidenceSequence" not in sr and sr.CompletionFlag == "PARTIAL"
    assert read_sr_sections(sr) == {"findings": "心影大小正常。", "impression": ""}
    assert _dciodvfy_errors(sr, tmp_path) == []


def test_fhir_diagnostic_report_validates():
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    study = generate_uid()
    body, media = render_report(CONTENT, "fhir", IDENT, [_source(study)])
    assert media == "application/fhir+json"
    rep = DiagnosticReport.model_validate_json(body)  # the fhir.resources validator
    assert rep.status == "preliminary" and rep.conclusion == CONTENT.impression
    assert rep.code.coding[0].code == "18748-4" and rep.category[0].coding[0].code == "RAD"
    assert rep.imagingStudy[0].identifier.value == f"urn:oid:{study}"
    assert rep.contained[0].get_resource_type() == "Device" and rep.issued is not None
    doc = json.loads(body)
    assert base64.b64decode(doc["presentedForm"][0]["data"]).decode() == CONTENT.text
    assert doc["presentedForm"][0]["contentType"].startswith("text/plain")
    assert doc["resourceType"] == "DiagnosticReport" and "subject" in doc
    unlinked = json.loads(render_report(CONTENT, "fhir", IDENT)[0])
    assert "imagingStudy" not in unlinked and "subject" not in unlinked


@pytest.mark.parametrize("fmt", ["json", "dicom-sr", "fhir"])
def test_generate_writes_each_format(fmt, tiny_ckpt_dir, tmp_path, capsys):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    from echo_ray.cli import main

    src = _source()
    dcm = tmp_path / "pa.dcm"
    src.save_as(dcm, enforce_file_format=True)
    out = tmp_path / f"report.{fmt}"
    assert main(["generate", "--model", str(tiny_ckpt_dir), "--image", str(dcm), "--max-new-tokens", "8",
                 "--format", fmt, "--out", str(out)]) == 0  # fmt: skip
    if fmt == "json":
        assert {"findings", "impression", "text"} <= set(json.loads(out.read_text()))
    elif fmt == "fhir":
        assert DiagnosticReport.model_validate_json(out.read_text()).status == "preliminary"
    else:
        sr = pydicom.dcmread(out)
        assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.Modality == "SR"


def test_generate_dicom_sr_needs_out(tiny_ckpt_dir, phantom_dir, capsys):
    from echo_ray.cli import main

    png = next((phantom_dir / "images").glob("*_PA.png"))
    rc = main(["generate", "--model", str(tiny_ckpt_dir), "--image", str(png), "--max-new-tokens", "8",
               "--format", "dicom-sr"])  # fmt: skip
    assert rc == 2 and "--out" in capsys.readouterr().err
