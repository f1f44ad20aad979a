"""The PACS side of the loop: QIDO-RS search, WADO-RS retrieval, STOW-RS storage (dicomweb-client).

Authentication is standard HTTP: a credentials file (mode 0600 or stricter, as the service's own
token file) or an environment variable holds either ``user:password`` (Basic) or a bare token
(Bearer). Nothing here logs patient data; errors name the study by UID and the HTTP status only.

Reference: DICOM PS3.18 (QIDO-RS, WADO-RS, STOW-RS); https://dicomweb-client.readthedocs.io .

Usage:
    pacs = Pacs.connect("http://127.0.0.1:8042/dicom-web", auth_file="~/.pacs_auth")
    for uid in pacs.study_uids(("CR", "DX")): meta = pacs.study_metadata(uid)
    pacs.store(sr_dataset)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import requests
from pydicom.dataset import Dataset

from echo_ray.config.secrets import read_secret_file
from echo_ray.errors import InputError

AUTH_ENV = "ECHO_PACS_AUTH"
PAGE = 200  # QIDO-RS page size
# DICOM tags (hex) the loop reads from study metadata.
TAG = {"study": "0020000D", "series": "0020000E", "sop": "00080018", "sop_class": "00080016", "modality": "00080060",
       "body_part": "00180015", "view": "00185101", "series_desc": "0008103E"}  # fmt: skip


def auth_session(auth_file: str | None = None, auth_env: str = AUTH_ENV, secret: str | None = None) -> requests.Session:
    """A session with Basic (``user:password``) or Bearer (bare token) auth: `secret`, else the file, else the env var."""
    if secret is None:
        secret = read_secret_file(auth_file, "PACS credentials file") if auth_file else os.environ.get(auth_env, "").strip()
    s = requests.Session()
    if secret:
        user, sep, password = secret.partition(":")
        if sep:
            s.auth = (user, password)
        else:
            s.headers["Authorization"] = f"Bearer {secret}"
    return s


def tag_value(item: dict, key: str) -> str:
    """First value of a DICOM JSON attribute (by TAG name), "" when absent or empty."""
    v = item.get(TAG[key], {}).get("Value") or [""]
    return str(v[0])


@dataclass
class Pacs:
    client: object  # dicomweb_client.DICOMwebClient

    @classmethod
    def connect(cls, url: str, auth_file: str | None = None, auth_env: str = AUTH_ENV, timeout_s: float = 60,
                secret: str | None = None) -> "Pacs":  # fmt: skip
        from dicomweb_client import DICOMwebClient

        session = auth_session(auth_file, auth_env, secret)
        return cls(DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout_s))

    def study_uids(self, modalities: Iterable[str]) -> list[str]:
        """Study UIDs that hold a series of one of `modalities` (QIDO-RS, one query per modality)."""
        seen: dict[str, None] = {}
        for m in modalities:
            offset = 0
            while True:  # own paging: dicomweb-client's get_remaining never ends on a server that ignores offset
                page = self.client.search_for_studies(search_filters={"ModalitiesInStudy": m}, limit=PAGE, offset=offset)
                new = [u for u in (tag_value(st, "study") for st in page) if u and u not in seen]
                seen.update(dict.fromkeys(new))
                if len(page) < PAGE or not new:
                    break
                offset += len(page)
        return list(seen)

    def study_metadata(self, study_uid: str) -> list[dict]:
        """DICOM JSON metadata of every instance in the study (WADO-RS, no pixel data)."""
        return self.client.retrieve_study_metadata(study_uid)

    def has_instance(self, study_uid: str, sop_uid: str) -> bool:
        """Whether the study already holds `sop_uid` (QIDO-RS at instance level)."""
        found = self.client.search_for_instances(study_instance_uid=study_uid, search_filters={"SOPInstanceUID": sop_uid})
        return any(tag_value(i, "sop") == sop_uid for i in found)

    def retrieve(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        return self.client.retrieve_instance(study_uid, series_uid, sop_uid)

    def store(self, ds: Dataset) -> Dataset:
        """STOW-RS into the dataset's study; requests.HTTPError or InputError (with the failure code) on refusal."""
        resp = self.client.store_instances([ds], study_instance_uid=str(ds.StudyInstanceUID))
        failed = resp.get("FailedSOPSequence") or []
        if failed:
            reason = failed[0].get("FailureReason", "unknown")
            raise InputError(f"PACS refused the SR (failure reason {reason})")
        return resp
