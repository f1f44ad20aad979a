"""The documented `ray job submit` path on a real local cluster (`ray start --head`, not ray.init()).

A private cluster (own temp dir, ports and auth token) runs jobs/submit.sh three times: a relative
output without storage.root is refused with the message naming the absolute / s3:// forms; phantom
then normalize with `storage.root` write under that root, the second stage finds the first's
output, and each prints its absolute output path. Only this cluster's processes are stopped.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _stop(temp_dir: str) -> None:
    """Terminate every process whose command line names our temp dir (ours alone), then kill stragglers."""
    mine = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in a for a in (p.info["cmdline"] or [])) and p.pid != os.getpid():
                mine.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in mine:
        for child in p.children(recursive=True):
            mine.append(child)
    for p in mine:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def cluster():
    temp_dir = tempfile.mkdtemp(prefix="/tmp/ejob")  # short: Ray's socket paths live under it
    gcs, dash, client, nm, om, agent, metrics, rtenv, agent_grpc = _ports(9)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).parent / "ray")
    cmd = [ray_bin, "start", "--head", "--num-cpus", "2", "--temp-dir", temp_dir, "--port", str(gcs),
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--ray-client-server-port", str(client), "--node-manager-port", str(nm), "--object-manager-port", str(om),
           "--dashboard-agent-listen-port", str(agent), "--metrics-export-port", str(metrics),
           "--runtime-env-agent-port", str(rtenv), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats"]  # fmt: skip
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stderr[-2000:]
        yield {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dash}", "ECHO_PYTHON": sys.executable}
    finally:
        _stop(temp_dir)


def _submit(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "jobs" / "submit.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd="/")  # fmt: skip


def test_job_submit_with_storage_root_runs_phantom_then_normalize(cluster, tmp_path):
    t0 = time.monotonic()
    refused = _submit(cluster, "normalize", "--config", "configs/tiny.yaml")
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "is the relative path 'data_out/" in out and "s3://" in out, out[-3000:]
    root = tmp_path / "shared"
    phantom = _submit(cluster, "phantom", "--out", "data_out/phantom", "--n", "6", "--set", f"storage.root={root}")
    assert phantom.returncode == 0 and f"to {root}/data_out/phantom" in phantom.stdout, (phantom.stdout + phantom.stderr)[-3000:]
    norm = _submit(cluster, "normalize", "--config", "configs/tiny.yaml", "--set", f"storage.root={root}",
                   "--set", "normalize.splits.eval_per_language=1")  # fmt: skip
    assert norm.returncode == 0, (norm.stdout + norm.stderr)[-3000:]
    assert f"normalized data: {root}/data_out/normalized" in norm.stdout
    assert (root / "data_out" / "normalized" / "manifest.json").is_file()
    print(f"\njob path (3 submissions): {time.monotonic() - t0:.0f} s")
