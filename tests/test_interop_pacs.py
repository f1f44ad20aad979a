"""The DICOMweb loop against a real PACS: Orthanc + its DICOMweb plugin, started here on a loopback port.

Studies are CR instances made from the phantom PNGs (and the two real NIH images from ../shared
where present). One `--once` run files one SR per usable study; the SR read back over WADO-RS parses
with highdicom, passes dciodvfy, and its text equals the local generator's report for the same
images; a second run stores nothing; two concurrent loops file one SR; a lateral-only study, a
non-chest study and a corrupt pixel stream are skipped/failed with the reason while the others get
their SR. The `--service` path is checked against the JSON route of a running service.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from PIL import Image
from pydicom.uid import generate_uid

from echo_ray.interop.local_pacs import LocalOrthanc, corrupt_pixels, cr_instance, orthanc_missing

pytestmark = pytest.mark.skipif(orthanc_missing() is not None, reason=f"no local PACS: {orthanc_missing()}")
MAX_NEW = 24
NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr_images_nih"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with LocalOrthanc(tmp_path_factory.mktemp("orthanc")) as o:
        yield o


@pytest.fixture(scope="module")
def ckpt():
    from serve_support import tiny_checkpoint

    return tiny_checkpoint()


@pytest.fixture(scope="module")
def studies(orthanc, ckpt):
    """Upload the corpus; returns {name: study UID} (good studies first)."""
    from serve_support import _state

    from echo_ray.data.phantom import read_phantom

    phantom = read_phantom(_state["phantom"])
    out: dict[str, str] = {}

    def add(name: str, images: list[tuple[Path, str]], body_part: str = "CHEST", corrupt: bool = False) -> None:
        uid = out[name] = generate_uid()
        for path, view in images:
            ds = cr_instance(Image.open(path), uid, view="LL" if view == "LATERAL" else view, body_part=body_part)
            orthanc.upload(corrupt_pixels(ds) if corrupt else ds)

    two_view = next(s for s in phantom if len(s["images"]) > 1)
    one_view = next(s for s in phantom if len(s["images"]) == 1)
    add("phantom_pa_lat", [(Path(i["path"]), i["view"]) for i in two_view["images"]])
    add("phantom_pa", [(Path(one_view["images"][0]["path"]), "PA")])
    if NIH.is_dir():  # real images, read in place (never copied into the repo)
        for png in sorted(NIH.glob("*.png"))[:2]:
            add(f"nih_{png.stem}", [(png, "PA")])
    lateral = next(i for i in two_view["images"] if i["view"] == "LATERAL")
    add("lateral_only", [(Path(lateral["path"]), "LATERAL")])
    add("hand", [(Path(one_view["images"][0]["path"]), "PA")], body_part="HAND")
    add("corrupt", [(Path(one_view["images"][0]["path"]), "PA")], corrupt=True)
    return out


def _run(orthanc, ckpt, capsys, monkeypatch, *extra: str) -> tuple[int, dict]:
    from echo_ray.cli import main

    monkeypatch.setenv("ECHO_PACS_AUTH", orthanc.auth_secret)
    capsys.readouterr()
    rc = main(["pacs", "--dicomweb", orthanc.dicomweb, "--model", str(ckpt), "--once",
               "--set", f"decode.max_new_tokens={MAX_NEW}", *extra])  # fmt: skip
    return rc, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _pacs(orthanc, secret: str | None = None):
    from echo_ray.interop.dicomweb import Pacs

    return Pacs.connect(orthanc.dicomweb, secret=secret or orthanc.auth_secret)


def _srs(pacs, study_uid: str) -> list[dict]:
    return pacs.client.search_for_instances(study_instance_uid=study_uid, search_filters={"Modality": "SR"})


def _local_reports(pacs, study_uid: str, ckpt) -> dict[str, str]:
    """The local generator's report on the images the loop chooses, decoded in-process here."""
    from echo_ray.config import load_config
    from echo_ray.interop.selection import select_images
    from echo_ray.interop.sources import LocalSource

    cfg = load_config(None, {"decode.max_new_tokens": MAX_NEW})
    chosen, reason = select_images(pacs.study_metadata(study_uid))
    assert reason is None
    src = LocalSource.from_checkpoint(str(ckpt), cfg.decode, cfg.prompt, cfg.model)
    content = src.report([pacs.retrieve(study_uid, c.series_uid, c.sop_uid) for c in chosen])
    return {"findings": content.findings, "impression": content.impression}


def test_once_files_one_sr_per_study_and_second_run_stores_nothing(orthanc, ckpt, studies, capsys, monkeypatch,
                                                                     tmp_path, caplog):  # fmt: skip
    import logging

    from pydicom import dcmread

    from echo_ray.interop.sr import SERIES_DESCRIPTION, read_sr_sections

    good = [n for n in studies if n not in ("lateral_only", "hand", "corrupt")]
    caplog.set_level(logging.DEBUG)
    rc, summary = _run(orthanc, ckpt, capsys, monkeypatch)
    assert studies["corrupt"] in caplog.text and "SYNTH" not in caplog.text  # UIDs and reasons, no patient data
    assert rc == 1  # the corrupt study failed
    reasons = {f["study"]: f["reason"] for f in summary["not_stored"]}
    assert summary["stored"] == len(good) and summary["skipped"] == 2 and summary["failed"] == 1
    assert "no frontal (PA/AP) view" in reasons[studies["lateral_only"]]
    assert "body part HAND is not chest" in reasons[studies["hand"]]
    assert "corrupt DICOM image" in reasons[studies["corrupt"]]

    pacs = _pacs(orthanc)
    for name in good:
        (found,) = _srs(pacs, studies[name])  # exactly one SR
        series, sop = found["0020000E"]["Value"][0], found["00080018"]["Value"][0]
        sr = pacs.retrieve(studies[name], series, sop)
        assert sr.VerificationFlag == "UNVERIFIED" and sr.SeriesDescription == SERIES_DESCRIPTION
        assert sr.PatientID == "SYNTH-0001" and sr.StudyInstanceUID == studies[name]
        n_sources = len([m for m in pacs.study_metadata(studies[name]) if m["00080060"]["Value"][0] == "CR"])
        refs = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        assert sum(len(s.ReferencedSOPSequence) for s in refs) == n_sources
        sections = read_sr_sections(sr)
        assert sections == _local_reports(pacs, studies[name], ckpt)
        assert len(sections["findings"]) < 4 or sections["findings"] not in caplog.text  # no report text in logs
        if name == "phantom_pa_lat" and shutil.which("dciodvfy"):
            path = tmp_path / "sr.dcm"
            sr.save_as(path, enforce_file_format=True)
            dcmread(path)
            out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            errors = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
            assert not errors, errors
    for name in ("lateral_only", "hand", "corrupt"):
        assert _srs(pacs, studies[name]) == []

    before = orthanc.instance_count()
    rc, summary = _run(orthanc, ckpt, capsys, monkeypatch)
    assert summary.get("stored", 0) == 0 and summary["done"] == len(good)
    assert orthanc.instance_count() == before


def test_concurrent_loops_file_one_sr(orthanc, ckpt, studies):
    """Two loops racing on one new study store the same deterministic SOP Instance UID: one SR."""
    from echo_ray.config import load_config
    from echo_ray.interop.pacs import PacsLoop
    from echo_ray.interop.sources import LocalSource

    from serve_support import phantom_pngs

    uid = generate_uid()
    orthanc.upload(cr_instance(Image.open(phantom_pngs()[2]), uid, view="PA"))
    cfg = load_config(None, {"decode.max_new_tokens": MAX_NEW})
    src = LocalSource.from_checkpoint(str(ckpt), cfg.decode, cfg.prompt, cfg.model)
    lock, pacs = threading.Lock(), _pacs(orthanc)

    class Serialized:  # one generator shared by both threads; the PACS steps still interleave
        identity = src.identity

        def report(self, datasets):
            with lock:
                return src.report(datasets)

    loops = [PacsLoop(_pacs(orthanc), Serialized()) for _ in range(2)]
    results: list = []
    threads = [threading.Thread(target=lambda lp=lp: results.append(lp.poll())) for lp in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    statuses = [o.status for r in results for o in r if o.study_uid == uid]
    assert statuses and set(statuses) <= {"stored", "done"}
    assert len(_srs(pacs, uid)) == 1


def test_pacs_refusal_is_a_failure_with_reason(orthanc, ckpt, studies):
    """Wrong credentials: the PACS answers 401, the poll fails with the HTTP status, no exception escapes."""
    import requests

    from echo_ray.interop.pacs import PacsLoop

    pacs = _pacs(orthanc, secret="echo:wrong")
    with pytest.raises(requests.HTTPError) as e:
        pacs.study_uids(("CR",))
    assert e.value.response.status_code == 401
    loop = PacsLoop(pacs, object())
    loop.run(poll_s=0, max_polls=1)  # logged and survived: the PACS may be back on the next poll


def test_service_source_matches_json_route(orthanc, studies, ray_cluster, capsys, monkeypatch):
    """`--service URL`: the SR filed over DICOMweb carries the JSON route's report for the same images."""
    import base64

    import requests

    from echo_ray.cli import main
    from echo_ray.interop.selection import select_images
    from echo_ray.interop.sources import dicom_bytes
    from echo_ray.interop.sr import read_sr_sections

    from serve_support import API_APP, API_ARGS, phantom_pngs, start_app

    url = start_app(API_APP, **API_ARGS)
    uid = generate_uid()
    orthanc.upload(cr_instance(Image.open(phantom_pngs()[3]), uid, view="PA"))
    monkeypatch.setenv("ECHO_PACS_AUTH", orthanc.auth_secret)
    main(["pacs", "--dicomweb", orthanc.dicomweb, "--service", url, "--once"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["stored"] >= 1
    pacs = _pacs(orthanc)
    (found,) = _srs(pacs, uid)
    sr = pacs.retrieve(uid, found["0020000E"]["Value"][0], found["00080018"]["Value"][0])
    chosen, _ = select_images(pacs.study_metadata(uid))
    imgs = [base64.b64encode(dicom_bytes(pacs.retrieve(uid, c.series_uid, c.sop_uid))).decode() for c in chosen]
    body = requests.post(f"{url}/v1/reports", json={"images": imgs}, timeout=300).json()
    assert read_sr_sections(sr) == {"findings": body["findings"], "impression": body["impression"]}

