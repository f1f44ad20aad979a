"""A generated report as a DICOM Comprehensive SR (highdicom), referencing its source images.

The document follows DICOM TID 2000 (Basic Diagnostic Imaging Report): title LOINC 18748-4
"Diagnostic Imaging Report", language of content, an observation context naming the model as the
observing device (TID 1004), and a Findings section (DCM 121070) holding one TEXT item DCM 121071
"Finding" and an Impressions section (DCM 121072) holding DCM 121073 "Impression". It is marked
UNVERIFIED and PRELIMINARY, with a series description saying it is an AI draft. With DICOM inputs the
patient/study attributes are copied from the first source and every source image is listed in the
Current Requested Procedure Evidence Sequence (SOP Class/Instance UIDs). Without DICOM inputs the SR
starts a fresh study with empty patient attributes and a study description saying so: nothing is
invented. An empty section (a model that stopped early) is left out rather than stored as an
empty TEXT value, which DICOM does not allow.

Reference: DICOM PS3.16 TID 2000/1001/1004; highdicom.sr (https://highdicom.readthedocs.io).

Usage:
    sr = build_sr(ReportContent.from_report(r, "en"), identity, sources=[pydicom.dcmread(p)])
    sr.save_as("report.dcm")
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from echo_ray.interop.identity import ModelIdentity, ReportContent, device_uid, sr_uids

TITLE = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic Imaging Report")
FINDINGS_SECTION = hd.sr.CodedConcept("121070", "DCM", "Findings")
FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
IMPRESSION_SECTION = hd.sr.CodedConcept("121072", "DCM", "Impressions")
IMPRESSION = hd.sr.CodedConcept("121073", "DCM", "Impression")
SERIES_DESCRIPTION = "AI DRAFT - NOT FOR DIAGNOSTIC USE (echo_ray)"
UNLINKED_STUDY = "echo_ray AI draft for non-DICOM images; no patient data"
LANGUAGES = {"en": ("en", "English"), "zh": ("zh", "Chinese")}
# Type 2 patient/study attributes highdicom reads from the first evidence item.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime", "ReferringPhysicianName")  # fmt: skip


def _section(concept: hd.sr.CodedConcept, item: hd.sr.CodedConcept, text: str) -> hd.sr.ContainerContentItem:
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    sec = hd.sr.ContainerContentItem(name=concept, relationship_type=contains)
    sec.ContentSequence = [hd.sr.TextContentItem(name=item, value=text, relationship_type=contains)]
    return sec


def _observation_context(identity: ModelIdentity) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(identity), name="echo_ray", manufacturer_name="echo_ray",
        model_name=f"{identity.name} {identity.mode} block {identity.block_size or '-'}"[:64],
        serial_number=identity.checkpoint[:64],
    )  # fmt: skip
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    )


def report_content_tree(content: ReportContent, identity: ModelIdentity) -> hd.sr.ContainerContentItem:
    """The TID 2000 root container: language, observation context, Findings and Impressions sections."""
    root = hd.sr.ContainerContentItem(name=TITLE, template_id="2000")
    code, meaning = LANGUAGES.get(content.language, (content.language, content.language))
    items: list = [hd.sr.LanguageOfContentItemAndDescendants(hd.sr.CodedConcept(code, "RFC5646", meaning))[0]]
    items.extend(_observation_context(identity))
    if content.findings.strip():
        items.append(_section(FINDINGS_SECTION, FINDING, content.findings.strip()))
    if content.impression.strip():
        items.append(_section(IMPRESSION_SECTION, IMPRESSION, content.impression.strip()))
    root.ContentSequence = items
    return root


def _evidence(sources: Sequence[Dataset]) -> list[Dataset]:
    """Source headers (no pixel data) with any missing type-2 patient/study attribute present and empty."""
    out = []
    for ds in sources:
        ref = Dataset()
        for elem in ds:
            if elem.tag.group < 0x7FE0:  # everything but the pixel data and trailing padding
                ref.add(elem)
        for kw in _TYPE2:  # highdicom reads each of them from the first source
            if kw not in ref:
                setattr(ref, kw, "")
        out.append(ref)
    return out


def _unlinked_study() -> Dataset:
    """A fresh-study anchor for non-DICOM inputs: new Study UID, empty patient attributes (nothing invented)."""
    anchor = Dataset()
    anchor.StudyInstanceUID = generate_uid()
    anchor.SeriesInstanceUID = generate_uid()
    anchor.SOPInstanceUID = generate_uid()
    anchor.SOPClassUID = SecondaryCaptureImageStorage
    for kw in _TYPE2:
        setattr(anchor, kw, "")
    return anchor


def build_sr(content: ReportContent, identity: ModelIdentity, sources: Sequence[Dataset] = (),
             now: datetime.datetime | None = None) -> hd.sr.ComprehensiveSR:  # fmt: skip
    """The Comprehensive SR for one report; `sources`: the DICOM inputs (pixel data not needed)."""
    now = now or datetime.datetime.now()
    evidence = _evidence(sources) if sources else [_unlinked_study()]
    series_uid, sop_uid = sr_uids(evidence[0].StudyInstanceUID, identity)
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=report_content_tree(content, identity), series_instance_uid=series_uid,
        series_number=9901, sop_instance_uid=sop_uid, instance_number=1, manufacturer="echo_ray",
        is_complete=bool(content.findings.strip() and content.impression.strip()), is_final=False,
        is_verified=False, series_description=SERIES_DESCRIPTION, manufacturer_model_name=identity.name[:64],
        software_versions=f"echo_ray {identity.version}", device_serial_number=identity.checkpoint[:64],
        content_date=now.date(), content_time=now.time(), series_date=now.date(), series_time=now.time(),
        specific_character_set="ISO_IR 192",  # UTF-8: report text may hold any script (zh, or a model's noise)
    )  # fmt: skip
    if not sources:
        # The anchor is not an image anyone holds: reference nothing rather than a phantom instance.
        del sr.CurrentRequestedProcedureEvidenceSequence
        sr.StudyDescription = UNLINKED_STUDY
        sr.StudyDate, sr.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    return sr


def read_sr_sections(ds: Dataset) -> dict[str, str]:
    """Findings and impression text of an SR written by `build_sr` (parsed back with highdicom)."""
    sr = hd.sr.ComprehensiveSR.from_dataset(ds)
    out = {"findings": "", "impression": ""}
    for key, concept in (("findings", FINDING), ("impression", IMPRESSION)):
        found = hd.sr.utils.find_content_items(sr, name=concept, value_type=hd.sr.ValueTypeValues.TEXT, recursive=True)
        if found:
            out[key] = found[0].TextValue
    return out
