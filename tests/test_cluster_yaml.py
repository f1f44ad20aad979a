"""cluster.yaml passes Ray's own autoscaler config preparation and validation."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cfg = prepare_config(raw)
    validate_config(cfg)
    assert cfg["provider"]["type"] == "aws"
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head node must run no work"
    gpu_types = [n for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
    assert gpu_types and all("gpu" in n for n in gpu_types)
    assert any("--shm-size" in o for o in cfg["docker"]["run_options"])
    assert any("[train,gpu]" in c for c in cfg["setup_commands"])
