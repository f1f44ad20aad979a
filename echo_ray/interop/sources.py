"""Where the PACS loop gets its reports: a local `ReportGenerator` or a running echo_ray service.

Both take the study's retrieved DICOM datasets and answer a `ReportContent`, or raise `InputError`
naming why not (an image that does not decode, a request the service refused). `LocalSource`
decodes in this process; `ServiceSource` posts the images as base64 DICOM to the service's
JSON route ``POST /v1/reports`` (bearer token from a file or ECHO_API_TOKEN) and reads
the model's identity from ``GET /v1/models``.

Usage:
    src = LocalSource.from_checkpoint("runs/tiny", cfg.decode, cfg.prompt, cfg.model)
    src = ServiceSource.connect("http://127.0.0.1:8000", mode="onestep")
    content = src.report(datasets)
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass

import requests
from pydicom.dataset import Dataset

from echo_ray.errors import InputError
from echo_ray.interop.identity import ModelIdentity, ReportContent


def dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass
class LocalSource:
    generator: object  # echo_ray.decode.generator.ReportGenerator
    identity: ModelIdentity
    language: str = "en"

    @classmethod
    def from_checkpoint(cls, path: str, decode, prompt, model, device: str = "auto") -> "LocalSource":
        from echo_ray.decode.generator import ReportGenerator
        from echo_ray.model.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, model, device)
        gen = ReportGenerator(ckpt, decode, prompt)
        ident = ModelIdentity.for_checkpoint(path, gen.cfg.mode, gen.cfg.block_size)
        return cls(gen, ident, decode.language)

    def report(self, datasets: list[Dataset]) -> ReportContent:
        from echo_ray.data.images import image_from_bytes

        images = [image_from_bytes(dicom_bytes(ds), name=f"instance {i + 1}") for i, ds in enumerate(datasets)]
        r = self.generator.generate([images], self.language)[0]
        return ReportContent.from_report(r, self.language)


@dataclass
class ServiceSource:
    url: str
    identity: ModelIdentity
    session: requests.Session
    mode: str = "onestep"
    language: str = "en"
    timeout_s: float = 300

    @classmethod
    def connect(cls, url: str, mode: str = "onestep", language: str = "en", token_file: str | None = None,
                token_env: str = "ECHO_API_TOKEN") -> "ServiceSource":  # fmt: skip
        from echo_ray.config.secrets import read_secret_file

        s = requests.Session()
        token = read_secret_file(token_file, "service token file") if token_file else os.environ.get(token_env, "").strip()
        if token:
            s.headers["Authorization"] = f"Bearer {token}"
        url = url.rstrip("/")
        r = s.get(f"{url}/v1/models", timeout=30)
        if not r.ok:
            raise InputError(f"echo_ray service at {url} answered GET /v1/models with HTTP {r.status_code}")
        model = r.json()["data"][0]
        ident = ModelIdentity(model["id"], f"service:{model['id']}", mode, model.get("block_size"))
        return cls(url, ident, s, mode, language)

    def report(self, datasets: list[Dataset]) -> ReportContent:
        images = [base64.b64encode(dicom_bytes(ds)).decode("ascii") for ds in datasets]
        body = {"images": images, "mode": self.mode, "language": self.language}
        r = self.session.post(f"{self.url}/v1/reports", json=body, timeout=self.timeout_s)
        if not r.ok:
            try:
                msg = str(r.json().get("error", ""))[:200]
            except ValueError:
                msg = ""
            raise InputError(f"service refused the study: HTTP {r.status_code} {msg}".strip())
        return ReportContent.from_json(r.json())
