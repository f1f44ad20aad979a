"""A generated report as a FHIR DiagnosticReport (built and validated with `fhir.resources`).

FHIR R4 resource shapes, built with `fhir.resources.R4B` (FHIR 4.3, whose DiagnosticReport is R4's;
`fhir.resources` dropped its plain-R4 package when it moved to pydantic 2): status `preliminary`,
category Radiology (HL7 v2-0074 RAD and LOINC LP29684-5), code LOINC 18748-4 "Diagnostic imaging
study", `conclusion` = the impression, `presentedForm` = the whole report as text/plain, the
ImagingStudy referenced by its DICOM Study Instance UID when the inputs were DICOM (and the patient
by the study's Patient ID, never by name), effective/issued times, and the model as a contained
Device. R4's `performer` cannot name a Device, so the report points at it through the extension
`DEVICE_EXTENSION`.

Usage:
    body = build_diagnostic_report(content, identity, study_uid="1.2.3", patient_id="PID").json()
"""

from __future__ import annotations

import base64
import datetime

from fhir.resources.R4B.attachment import Attachment
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.device import Device, DeviceDeviceName, DeviceVersion
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.extension import Extension
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.reference import Reference

from echo_ray.interop.identity import ModelIdentity, ReportContent

LOINC = "http://loinc.org"
DEVICE_EXTENSION = "https://github.com/echo-ray/echo_ray/fhir/StructureDefinition/generating-device"
DEVICE_ID = "echo-ray-model"


def _device(identity: ModelIdentity) -> Device:
    return Device(
        id=DEVICE_ID,
        manufacturer="echo_ray",
        deviceName=[DeviceDeviceName(name=f"echo_ray {identity.name}", type="model-name")],
        version=[DeviceVersion(value=identity.version), DeviceVersion(value=identity.checkpoint,
                 type=CodeableConcept(text="checkpoint fingerprint"))],  # fmt: skip
        note=[{"text": f"AI draft generator: {identity.description}. Not for diagnostic use."}],
    )


def build_diagnostic_report(content: ReportContent, identity: ModelIdentity, study_uid: str | None = None,
                            patient_id: str | None = None, sr_uid: str | None = None,
                            now: datetime.datetime | None = None) -> DiagnosticReport:  # fmt: skip
    """The validated DiagnosticReport (pydantic raises on any field FHIR does not allow)."""
    now = (now or datetime.datetime.now(datetime.timezone.utc)).replace(microsecond=0)
    if now.tzinfo is None:
        now = now.astimezone()
    fields: dict = {
        "status": "preliminary",
        "category": [CodeableConcept(coding=[
            Coding(system="http://terminology.hl7.org/CodeSystem/v2-0074", code="RAD", display="Radiology"),
            Coding(system=LOINC, code="LP29684-5", display="Radiology")])],  # fmt: skip
        "code": CodeableConcept(coding=[Coding(system=LOINC, code="18748-4", display="Diagnostic imaging study")],
                                text="AI draft chest X-ray report"),  # fmt: skip
        "effectiveDateTime": now,
        "issued": now,
        "conclusion": content.impression or None,
        "presentedForm": [Attachment(contentType="text/plain; charset=utf-8", language=content.language,
                                     data=base64.b64encode(content.text.encode("utf-8")),
                                     title="echo_ray AI draft report (not for diagnostic use)")],  # fmt: skip
        "contained": [_device(identity)],
        "extension": [Extension(url=DEVICE_EXTENSION, valueReference=Reference(reference=f"#{DEVICE_ID}"))],
    }
    if study_uid:
        study = Identifier(system="urn:dicom:uid", value=f"urn:oid:{study_uid}")
        fields["imagingStudy"] = [Reference(type="ImagingStudy", identifier=study)]
    if patient_id:
        fields["subject"] = Reference(type="Patient", identifier=Identifier(value=patient_id))
    if sr_uid:
        fields["identifier"] = [Identifier(system="urn:dicom:uid", value=f"urn:oid:{sr_uid}")]
    return DiagnosticReport(**fields)
