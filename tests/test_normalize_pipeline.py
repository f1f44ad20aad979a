"""The whole normalization job on Ray Data with the rules engine: every source layout, bad input,
S3 output through a local moto server, and resume after a killed run."""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import shared_path
from corpus_fixtures import write_chexpert, write_iu_subset, write_mimic, write_rexgradient

from echo_ray.clinical.regions import missing_regions
from echo_ray.config import NormalizeConfig, SourceSpec
from echo_ray.report import format_report


def normalize_cli(*argv: str) -> int:
    from echo_ray.cli import main

    return main(["normalize", *argv])


def test_full_pipeline_every_layout_and_bad_input(ray_cluster, tmp_path, capsys):
    from echo_ray.data.phantom import write_phantom

    write_phantom(tmp_path / "phantom", n=12, seed=0)
    iu = write_iu_subset(shared_path("iu_xray_kaggle"), tmp_path / "iu", n=30)
    sources = [
        {"name": "phantom", "path": str(tmp_path / "phantom")},
        {"name": "iu_xray", "path": str(iu), "require_images": False},  # the IU tables ship without images
        {"name": "mimic_cxr", "path": str(write_mimic(tmp_path / "mimic"))},
        {"name": "chexpert_plus", "path": str(write_chexpert(tmp_path / "chexpert"))},
        {"name": "rexgradient", "path": str(write_rexgradient(tmp_path / "rex"))},
    ]
    out = tmp_path / "out"
    config = {"normalize": {"sources": sources, "output": str(out), "shard_rows": 8, "engine": {"kind": "rules"},
                            "splits": {"eval_per_language": 4, "eval_fraction": 0.2, "dcd_rows": 10}}}  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    assert normalize_cli("--config", str(tmp_path / "cfg.yaml")) == 0
    summary = capsys.readouterr().out
    assert "all accounted for" in summary and "quarantined:" in summary and "bilingual: skipped" in summary

    import json

    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert m["accounted"] and c["in"] == 12 + 30 + 7 + 4 + 3
    assert c["in"] == c["kept"] + c["filtered"] + c["deduplicated"] + c["quarantined"]
    q = m["reasons"]["quarantined"]
    for reason, n in {"not_utf8": 1, "unreadable_file": 1, "missing_image": 1, "malformed_row": 2, "wrong_column": 1}.items():
        assert q[reason] == n, (reason, q)
    assert q["empty_sections"] >= 1 and m["reasons"]["filtered"]["non_chest"] >= 1
    assert m["bilingual"]["status"] == "skipped" and "no translator" in m["bilingual"]["reason"]
    assert (out / "echo_config.yaml").is_file() and m["engine"]["kind"] == "rules"

    splits = {s: pq.read_table(out / s).to_pylist() for s in ("train", "eval", "dcd")}
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert len(rejected) == c["filtered"] + c["deduplicated"] + c["quarantined"]
    assert len(splits["train"]) + len(splits["eval"]) == c["kept"]  # English only: one row per kept study
    seen = Counter(r["uid"] for r in splits["train"] + splits["eval"] + rejected)
    assert max(seen.values()) == 1 and len(seen) == c["in"]  # every input record exactly once
    assert all(r["duplicate_of"] in {x["uid"] for x in splits["train"] + splits["eval"]}
               for r in rejected if r["status"] == "deduplicated")  # fmt: skip
    for row in splits["train"][:20]:
        assert row["report"] == format_report(row["findings"], row["impression"], "en")
        assert missing_regions(row["findings"]) == []  # every standard region is described
        assert row["raw_findings"] or row["raw_impression"]
        assert all(Path(im["path"]).is_absolute() for im in row["images"]) and row["language"] == "en"
    assert all(dict(r["labels"]) for r in splits["train"])
    train_ids = {r["uid"] for r in splits["train"]}
    eval_ids = {r["uid"] for r in splits["eval"]}
    assert not train_ids & eval_ids and 1 <= len(eval_ids) <= 4
    images = {s: {im["path"] for r in splits[s] for im in r["images"]} for s in ("train", "eval")}
    assert not images["train"] & images["eval"]
    assert {r["uid"] for r in splits["dcd"]} <= train_ids and len(splits["dcd"]) == min(10, len(train_ids))


def test_cli_bad_source_and_path(tmp_path, capsys):
    assert normalize_cli("--source", "mimic=/x", "--output", str(tmp_path / "o")) == 2
    assert "unknown source 'mimic'" in capsys.readouterr().err
    assert normalize_cli("--source", f"iu_xray={tmp_path / 'missing'}", "--output", str(tmp_path / "o")) == 2
    assert "input path not found" in capsys.readouterr().err
    assert normalize_cli("--source", "iu_xray", "--output", str(tmp_path / "o")) == 2
    assert "NAME=PATH" in capsys.readouterr().err


@pytest.fixture
def moto_s3(monkeypatch):
    """A local S3 endpoint (moto); stands in for AWS, which this machine cannot reach."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")
    client.create_bucket(Bucket="echo")
    yield client
    server.stop()


class Killed(Exception):
    """Raised from the progress callback to kill a run mid-stage."""


def test_s3_output_and_resume_after_kill(ray_cluster, tmp_path, moto_s3):
    import json

    from echo_ray.data.phantom import write_phantom
    from echo_ray.data.pipeline.driver import run_pipeline
    from echo_ray.errors import ConfigError

    write_phantom(tmp_path / "phantom", n=10, seed=3)
    cfg = NormalizeConfig(output="s3://echo/runs/norm", shard_rows=2,
                          sources=[SourceSpec(name="phantom", path=str(tmp_path / "phantom"))])  # fmt: skip
    done: list[str] = []

    def kill_after_two(event: str, info: dict) -> None:
        if event == "shard_done" and info["stage"] == "standardize":
            done.append(info["shard"])
            if len(done) == 2:
                raise Killed()

    with pytest.raises(Killed):
        run_pipeline(cfg, progress=kill_after_two)
    def keys(prefix: str) -> dict[str, dict]:
        listing = moto_s3.list_objects_v2(Bucket="echo", Prefix=prefix).get("Contents", [])
        return {o["Key"]: o for o in listing if not o["Key"].endswith("/")}

    std = keys("runs/norm/_work/standardize/")
    assert sorted(k.rsplit("/", 1)[1][: -len(".parquet")] for k in std) == sorted(done)
    before = {k: moto_s3.get_object(Bucket="echo", Key=k)["Body"].read() for k in std}
    assert not keys("runs/norm/manifest.json")

    manifest = run_pipeline(cfg)  # the rerun resumes
    st = manifest["stages"]["standardize"]
    assert (st["resumed"], st["processed"]) == (2, st["shards"] - 2) and st["shards"] == 5
    after = keys("runs/norm/_work/standardize/")
    for k, body in before.items():  # finished shards are not redone
        assert after[k]["LastModified"] == std[k]["LastModified"]
        assert moto_s3.get_object(Bucket="echo", Key=k)["Body"].read() == body
    stored = json.loads(moto_s3.get_object(Bucket="echo", Key="runs/norm/manifest.json")["Body"].read())
    assert stored["accounted"] and stored["counts"]["in"] == 10
    from echo_ray.data.pipeline.store import OutputStore

    store = OutputStore("s3://echo/runs/norm")
    rows = [r for s in ("train", "eval") if store.listdir(s, ".parquet") for r in store.read_table(s).to_pylist()]
    rejected = store.read_table("rejected").to_pylist() if store.listdir("rejected", ".parquet") else []
    assert sorted(r["uid"] for r in rows + rejected) == sorted(f"phantom:phantom-003-{i:06d}" for i in range(10))

    cfg.engine.max_retries = 5  # a different configuration must not resume this output
    with pytest.raises(ConfigError, match="different settings"):
        run_pipeline(cfg)
