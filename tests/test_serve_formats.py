"""Content negotiation on POST /v1/reports: JSON (default), DICOM SR, FHIR DiagnosticReport; unknown Accept 406."""

from __future__ import annotations

import base64
import io

import pydicom
import pytest
import requests
from PIL import Image
from pydicom.uid import generate_uid
from serve_support import API_APP, API_ARGS, phantom_pngs, start_app

from echo_ray.interop.local_pacs import cr_instance
from echo_ray.interop.sr import read_sr_sections

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def url(ray_cluster):
    return start_app(API_APP, **API_ARGS)


@pytest.fixture(scope="module")
def study() -> tuple[str, bytes]:
    uid = generate_uid()
    buf = io.BytesIO()
    cr_instance(Image.open(phantom_pngs()[0]), uid, view="PA").save_as(buf, enforce_file_format=True)
    return uid, buf.getvalue()


def post(url: str, dcm: bytes, accept: str | None = None, **fields) -> requests.Response:
    headers = {"Accept": accept} if accept else {}
    files = [("images", ("pa.dcm", dcm, "application/dicom"))]
    return requests.post(url + "/v1/reports", files=files, data=fields, headers=headers, timeout=120)


def test_each_format_from_the_route(url, study):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    uid, dcm = study
    plain = post(url, dcm)
    assert plain.status_code == 200 and plain.headers["content-type"].startswith("application/json")
    body = plain.json()

    sr_resp = post(url, dcm, accept="application/dicom")
    assert sr_resp.status_code == 200 and sr_resp.headers["content-type"].startswith("application/dicom")
    sr = pydicom.dcmread(io.BytesIO(sr_resp.content))
    assert sr.StudyInstanceUID == uid and sr.PatientID == "SYNTH-0001" and sr.Modality == "SR"
    assert read_sr_sections(sr) == {"findings": body["findings"], "impression": body["impression"]}

    fhir = post(url, dcm, accept="text/html;q=0.5, application/fhir+json")
    assert fhir.status_code == 200 and fhir.headers["content-type"].startswith("application/fhir+json")
    rep = DiagnosticReport.model_validate_json(fhir.content)
    assert rep.status == "preliminary" and (rep.conclusion or "") == body["impression"]
    assert rep.imagingStudy[0].identifier.value == f"urn:oid:{uid}"

    by_field = requests.post(url + "/v1/reports", json={"images": [base64.b64encode(dcm).decode()], "format": "dicom-sr"},
                             timeout=120)  # fmt: skip
    assert by_field.status_code == 200 and by_field.headers["content-type"].startswith("application/dicom")


def test_unknown_accept_is_406_and_unknown_format_422(url, study):
    _, dcm = study
    r = post(url, dcm, accept="text/html")
    assert r.status_code == 406 and "application/dicom" in r.json()["error"]
    assert post(url, dcm, format="hl7v2").status_code == 422
    assert post(url, dcm, accept="text/html", format="json").status_code == 200  # the field wins
