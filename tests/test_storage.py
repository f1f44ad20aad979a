"""echo_ray.storage: local and s3:// reads/writes through one filesystem; credentials that rotate.

The S3 tests run against the session's moto server (tests/conftest.py). For the rotation test the
server is switched to authenticating requests (moto's /moto-api/reset-auth), an IAM user's key is
replaced by a new one between two reads, and the second read in the same process, through the same
filesystem object, must succeed with the new key while the old key is refused.
"""

from __future__ import annotations

import io
import json
import pickle
import urllib.request

import boto3
import pytest
from PIL import Image

from echo_ray import storage
from echo_ray.data.images import read_image  # bytes through storage, decoded in data/images
from echo_ray.errors import InputError


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (12, 10), 128).save(buf, format="PNG")
    return buf.getvalue()


def test_local_roundtrip_is_atomic_and_listed(tmp_path):
    uri = str(tmp_path / "a" / "b.json")
    storage.write_text(uri, '{"x": 1}')
    assert storage.read_text(uri) == '{"x": 1}' and storage.exists(uri) and storage.is_file(uri)
    assert storage.list_files(str(tmp_path / "a"), ".json") == [uri]
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]  # no temporary file left behind
    with pytest.raises(InputError, match="cannot read image .*missing.png"):
        storage.read_bytes(str(tmp_path / "missing.png"), "image")
    with pytest.raises(InputError, match="image file not found"):
        read_image(str(tmp_path / "missing.png"))
    (tmp_path / "x.png").write_bytes(_png())
    assert read_image(str(tmp_path / "x.png")).mode == "RGB"


def test_s3_roundtrip_and_image(moto_s3, tmp_path):
    boto3.client("s3").create_bucket(Bucket="store-test")
    storage.write_bytes("s3://store-test/img/PA.png", _png())
    storage.write_text("s3://store-test/t/a.txt", "hello")
    assert storage.read_text("s3://store-test/t/a.txt") == "hello"
    assert storage.list_files("s3://store-test/t", ".txt") == ["s3://store-test/t/a.txt"]
    assert storage.exists("s3://store-test/t/a.txt") and not storage.exists("s3://store-test/t/b.txt")
    assert read_image("s3://store-test/img/PA.png").size == (12, 10)
    with pytest.raises(InputError, match="cannot read image s3://store-test/img/none.png"):
        read_image("s3://store-test/img/none.png")
    local = storage.resolve_local("s3://store-test/t", cache_dir=tmp_path / "cache")
    assert (local / "a.txt").read_text() == "hello"


def _set_auth(endpoint: str, count: str) -> None:
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                 headers={"Content-Type": "text/plain"})  # fmt: skip
    urllib.request.urlopen(req).close()


def _use(monkeypatch, key: dict) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])


def test_rotated_credentials_are_picked_up_between_reads(moto_s3, monkeypatch):
    iam = boto3.Session().client("iam")
    iam.create_user(UserName="rotating")
    allow_all = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="rotating", PolicyName="all", PolicyDocument=json.dumps(allow_all))
    first = iam.create_access_key(UserName="rotating")["AccessKey"]
    boto3.client("s3").create_bucket(Bucket="rotate")
    boto3.client("s3").put_object(Bucket="rotate", Key="obj.txt", Body=b"payload")
    _set_auth(moto_s3, "0")  # from here on every request must carry a valid, current key
    try:
        _use(monkeypatch, first)
        fs = storage.s3_filesystem()
        assert storage.read_bytes("s3://rotate/obj.txt") == b"payload"
        assert first["SecretAccessKey"].encode() not in pickle.dumps(fs)  # what Ray ships to workers
        second = boto3.Session().client("iam").create_access_key(UserName="rotating")["AccessKey"]
        boto3.Session().client("iam").delete_access_key(UserName="rotating", AccessKeyId=first["AccessKeyId"])
        with pytest.raises(InputError, match="cannot read"):
            storage.read_bytes("s3://rotate/obj.txt")  # the old key is really gone
        _use(monkeypatch, second)  # what the credential chain now hands out (env, profile, role)
        assert storage.s3_filesystem() is fs  # same process, same filesystem object
        assert storage.read_bytes("s3://rotate/obj.txt") == b"payload"
    finally:
        _set_auth(moto_s3, "inf")
