"""A throwaway local PACS (Orthanc + its DICOMweb plugin) and synthetic CR studies, for tests and benchmarks.

`LocalOrthanc` starts Debian's `Orthanc` binary on a free loopback port with a temporary
configuration and storage directory (DICOM network port off, HTTP auth on) and stops it on exit.
`cr_instance` wraps an 8-bit grayscale image (a phantom PNG, a real X-ray PNG) as a Computed
Radiography instance with the attributes the PACS loop selects on (Modality, BodyPartExamined,
ViewPosition) and synthetic patient attributes (never real ones).

Usage:
    with LocalOrthanc() as orthanc:                  # orthanc.dicomweb, orthanc.auth_secret
        ds = cr_instance(Image.open("PA.png"), study_uid, view="PA")
        orthanc.upload(ds)
"""

from __future__ import annotations

import datetime
import io
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
PLUGIN_PATHS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")


def orthanc_binary() -> str | None:
    """The Orthanc executable (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).is_file()), None)


def orthanc_missing() -> str | None:
    """Why a local Orthanc cannot start here (None when it can)."""
    if orthanc_binary() is None:
        return "Orthanc is not installed (Debian package 'orthanc'; .ci/run installs it)"
    if not any(Path(p).exists() for p in PLUGIN_PATHS):
        return "the Orthanc DICOMweb plugin is not installed (Debian package 'orthanc-dicomweb')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalOrthanc:
    """Orthanc on 127.0.0.1:<free port> with DICOMweb at /dicom-web; user `echo`, a random password."""

    def __init__(self, workdir: str | Path | None = None):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="echo_orthanc_"))
        self.port = _free_port()
        self.password = generate_uid(prefix=None)[5:25]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth_secret(self) -> str:
        return f"echo:{self.password}"

    def _config(self) -> dict:
        plugin = next(p for p in PLUGIN_PATHS if Path(p).exists())
        return {"Name": "echo_ray_test", "StorageDirectory": str(self.dir / "db"), "IndexDirectory": str(self.dir / "db"),
                "HttpPort": self.port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
                "AuthenticationEnabled": True, "RegisteredUsers": {"echo": self.password}, "Plugins": [plugin],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full",
                             "SeriesMetadata": "Full"}}  # fmt: skip

    def start(self, timeout_s: float = 30) -> "LocalOrthanc":
        why = orthanc_missing()
        if why:
            raise RuntimeError(why)
        (self.dir / "db").mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "orthanc.json"
        cfg.write_text(json.dumps(self._config()))
        self.log = (self.dir / "orthanc.log").open("wb")
        self.proc = subprocess.Popen([orthanc_binary(), str(cfg)], stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {self.dir / 'orthanc.log'}")
            try:
                if requests.get(f"{self.url}/system", auth=("echo", self.password), timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s} s; see {self.dir / 'orthanc.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def __enter__(self) -> "LocalOrthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def upload(self, ds: Dataset) -> str:
        """Store one instance through Orthanc's REST API (as a modality would); returns its Orthanc id."""
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        r = requests.post(f"{self.url}/instances", data=buf.getvalue(), auth=("echo", self.password), timeout=30)
        r.raise_for_status()
        return r.json()["ID"]

    def instance_count(self) -> int:
        r = requests.get(f"{self.url}/statistics", auth=("echo", self.password), timeout=10)
        r.raise_for_status()
        return int(r.json()["CountInstances"])


def cr_instance(image: Image.Image, study_uid: str, view: str = "PA", body_part: str = "CHEST",
                patient_id: str = "SYNTH-0001", series_uid: str | None = None) -> Dataset:  # fmt: skip
    """A CR instance holding `image` as 8-bit MONOCHROME2, with synthetic patient attributes."""
    arr = np.asarray(image.convert("L"), dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "SYNTHETIC^PHANTOM", patient_id, "", "O"
    today = datetime.date.today().strftime("%Y%m%d")
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study_uid, today, "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyDescription = "", "", "synthetic chest X-ray"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid or generate_uid(), 1, 1
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", body_part, view
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = arr.tobytes()
    return ds


def corrupt_pixels(ds: Dataset) -> Dataset:
    """The same instance with its pixel stream cut to a quarter (headers intact): decoding must fail."""
    ds.PixelData = bytes(ds.PixelData)[: len(ds.PixelData) // 4 // 2 * 2]
    return ds
