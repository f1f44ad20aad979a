"""Pure pieces of the PACS loop: image selection from study metadata, PACS credentials, deterministic SR UIDs."""

from __future__ import annotations

import pytest

from echo_ray.errors import ConfigError
from echo_ray.interop.dicomweb import TAG, auth_session
from echo_ray.interop.identity import ModelIdentity, sr_uids
from echo_ray.interop.selection import select_images


def meta(view: str, body: str = "CHEST", modality: str = "CR", n: int = 0) -> dict:
    vals = {"series": f"1.2.{n}", "sop": f"1.2.{n}.1", "modality": modality, "body_part": body, "view": view}
    return {TAG[k]: ({"vr": "CS", "Value": [v]} if v else {"vr": "CS"}) for k, v in vals.items()}


def test_frontal_first_then_lateral_at_most_four():
    chosen, reason = select_images([meta("LL", n=1), meta("PA", n=2), meta("AP", n=3), meta("PA", n=4),
                                    meta("RL", n=5), meta("OBLIQUE", n=6)])  # fmt: skip
    assert reason is None
    assert [c.view for c in chosen] == ["PA", "PA", "AP", "LL"]


def test_reasons_name_what_is_missing():
    assert select_images([meta("LL")])[1] == "no frontal (PA/AP) view; views present: LL"
    assert select_images([meta("PA", body="HAND")])[1] == "body part HAND is not chest"
    assert select_images([meta("", modality="SR")])[1] == "no CR/DX images in the study"
    assert select_images([meta("PA", body="")])[1] is None  # absent body part: taken as chest
    chosen, _ = select_images([meta("PA", body="", modality="DX"), meta("PA", modality="SR", n=2)])
    assert len(chosen) == 1


def test_auth_from_file_and_env(tmp_path, monkeypatch):
    f = tmp_path / "pacs_auth"
    f.write_text("alice:s3cret\n")
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        auth_session(str(f))
    f.chmod(0o600)
    assert auth_session(str(f)).auth == ("alice", "s3cret")
    monkeypatch.setenv("ECHO_PACS_AUTH", "tok123")
    assert auth_session().headers["Authorization"] == "Bearer tok123"
    monkeypatch.delenv("ECHO_PACS_AUTH")
    s = auth_session()
    assert s.auth is None and "Authorization" not in s.headers


def test_sr_uids_are_deterministic_per_study_and_model_version():
    a = ModelIdentity("m", "fp1", "onestep", 8, version="0.1.0")
    assert sr_uids("1.2.3", a) == sr_uids("1.2.3", ModelIdentity("m", "fp1", "onestep", 8, version="0.1.0"))
    assert sr_uids("1.2.3", a) != sr_uids("1.2.4", a)
    assert sr_uids("1.2.3", a)[1] != sr_uids("1.2.3", ModelIdentity("m", "fp2", "onestep", 8, version="0.1.0"))[1]
    uid = sr_uids("1.2.3", a)[1]
    assert uid.startswith("2.25.") and len(uid) <= 64
