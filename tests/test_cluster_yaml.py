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
    workers = [n for n in cfg["available_node_types"] if n != cfg["head_node_type"]]
    assert workers and all("gpu" in n for n in workers if n != "cpu_ingress")
    # the serving ingress's CPU nodes carry the resource serve_config.yaml's ReportService asks for
    assert cfg["available_node_types"]["cpu_ingress"]["resources"] == {"ingress": 4}
    assert any("--shm-size" in o for o in cfg["docker"]["run_options"])
    assert any("[train,gpu]" in c for c in cfg["setup_commands"])
    from echo_ray.serve.app import PROXY_ENV  # the proxies read Serve's request-path settings at `ray start`

    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in raw[key] if "ray start" in c]
        assert all(f"{k}={v} " in start for k, v in PROXY_ENV.items()), key


def test_cluster_yaml_images_exist() -> None:
    """No node type names a made-up AMI, and the docker image matches the Ray version we pin."""
    import re

    from ray.autoscaler._private.aws.config import DEFAULT_AMI, _check_ami

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    region = raw["provider"]["region"]
    for name, node in raw["available_node_types"].items():
        ami = node["node_config"].get("ImageId", "")
        assert ami in ("", "latest_dlami") or ami in DEFAULT_AMI.values(), (
            f"node type {name} names AMI {ami!r}, which is neither Ray's per-region Deep Learning AMI "
            "nor `latest_dlami`"
        )
    _check_ami(raw)  # resolves latest_dlami in place, as `ray up` does
    assert {n["node_config"]["ImageId"] for n in raw["available_node_types"].values()} == {DEFAULT_AMI[region]}

    pinned = re.search(r'"ray\[[^\]]*\]>=(\d+\.\d+),<', (REPO / "pyproject.toml").read_text())
    assert pinned, "pyproject.toml no longer pins ray as ray[...]>=X.Y,<..."
    tag = raw["docker"]["image"].split(":", 1)[1]
    assert tag.startswith(pinned.group(1) + "."), f"docker image tag {tag} does not match ray {pinned.group(1)}"
