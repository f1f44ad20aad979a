"""What a clinical document says about the report it carries: the text and the model that wrote it.

`ReportContent` is the part of a generated report every output format needs (findings, impression,
the whole text, language); `ModelIdentity` names the observing device (echo_ray version, checkpoint
name and fingerprint, decoding mode and block size). `sr_uids` derives the SR's Series/SOP Instance
UIDs deterministically from the study and the identity, so one model version files at most one SR
per study however many times (or from however many processes) it runs.

Usage:
    content = ReportContent.from_report(generated_report, "en")
    ident = ModelIdentity.for_checkpoint("runs/tiny", mode="onestep", block_size=8)
    series_uid, sop_uid = sr_uids(study_uid, ident)
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from echo_ray.report import parse_report

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/echo-ray/echo_ray/dicom-sr")


def echo_ray_version() -> str:
    try:
        return metadata.version("echo_ray")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class ReportContent:
    findings: str
    impression: str
    text: str
    language: str = "en"

    @classmethod
    def from_report(cls, report: Any, language: str) -> "ReportContent":
        """From a `GeneratedReport` (or anything with findings/impression/text attributes)."""
        return cls(report.findings, report.impression, report.text, language)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "ReportContent":
        """From a /v1/reports JSON body."""
        return cls(body["findings"], body["impression"], body["text"], body.get("language", "en"))

    @classmethod
    def from_text(cls, text: str, language: str = "en") -> "ReportContent":
        p = parse_report(text)
        return cls(p.findings, p.impression, text, language)


def checkpoint_fingerprint(path: str | Path) -> str:
    """Short hash of a local checkpoint's config and weight-file names/sizes (cheap: no weights read)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(p.iterdir()):
            if f.name == "config.json":
                h.update(f.read_bytes())
            elif f.suffix in (".safetensors", ".bin"):
                h.update(f"{f.name}:{f.stat().st_size}".encode())
    else:
        h.update(str(path).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ModelIdentity:
    name: str  # checkpoint name (directory name, or the service's model id)
    checkpoint: str  # fingerprint of the weights, or the service URL's model id when remote
    mode: str
    block_size: int | None
    version: str = echo_ray_version()

    @classmethod
    def for_checkpoint(cls, path: str | Path, mode: str, block_size: int | None) -> "ModelIdentity":
        return cls(Path(str(path).rstrip("/")).name, checkpoint_fingerprint(path), mode, block_size)

    @property
    def key(self) -> str:
        """One string per model version: the SR's UIDs and the PACS loop's 'already done' check use it."""
        return f"echo_ray {self.version}|{self.name}|{self.checkpoint}|{self.mode}|B={self.block_size}"

    @property
    def description(self) -> str:
        block = f", block {self.block_size}" if self.block_size else ""
        return f"echo_ray {self.version} {self.name} ({self.checkpoint}), {self.mode}{block}"


def name_uid(*parts: str) -> str:
    """A deterministic DICOM UID: "2.25." + a name-based (SHA-1) UUID of `parts` (PS3.5 B.2).

    (pydicom's `generate_uid(prefix=None)` ignores its entropy sources and returns a random UUID.)
    """
    return f"2.25.{uuid.uuid5(_NAMESPACE, '|'.join(parts)).int}"


def sr_uids(study_uid: str, identity: ModelIdentity) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of this model version's SR in `study_uid`."""
    return name_uid("sr-series", study_uid, identity.key), name_uid("sr-instance", study_uid, identity.key)


def device_uid(identity: ModelIdentity) -> str:
    return name_uid("device", identity.key)
