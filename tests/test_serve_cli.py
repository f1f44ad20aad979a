"""`echo-ray serve` on local Ray, with bearer-token auth taken from the shell's environment."""

from __future__ import annotations

import argparse

import pytest
import requests
from serve_support import http_base, phantom_pngs, tiny_checkpoint, wait_ready

from echo_ray.serve.cli import add_serve_parser, run_serve

TOKEN = "test-token-0123456789"


@pytest.mark.timeout(240)
def test_echo_ray_serve_runs_locally_with_bearer_auth(ray_cluster, monkeypatch, tmp_path):
    from ray import serve

    monkeypatch.setenv("ECHO_TEST_TOKEN", TOKEN)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("serve:\n  auth_token_env: ECHO_TEST_TOKEN\n")
    base = http_base()  # the session's proxy; run_serve's serve.start joins it
    parser = argparse.ArgumentParser(prog="echo-ray")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", "--model", str(tiny_checkpoint()), "--config", str(cfg), "--port",
                              base.rsplit(":", 1)[1], "--num-cpus", "0.25", "--max-new-tokens", "8"])  # fmt: skip
    assert args.func(args, wait=False) == 0 and args.func is run_serve
    try:
        wait_ready(base)  # app "echo" at route "/"
        assert "ECHO" in requests.get(f"{base}/", timeout=10).text  # the page stays open
        png = phantom_pngs()[0].read_bytes()

        def report(headers: dict) -> requests.Response:
            files = [("images", ("a.png", png, "image/png"))]
            return requests.post(f"{base}/v1/reports", files=files, headers=headers, timeout=60)

        assert report({}).status_code == 401
        wrong = report({"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert wrong.json()["status"] == 401 and "bearer" in wrong.json()["error"]
        assert requests.get(f"{base}/v1/models", timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        ok = report(auth)
        assert ok.status_code == 200 and ok.json()["tokens"] == 8, ok.text
        assert requests.get(f"{base}/v1/models", headers=auth, timeout=10).status_code == 200
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200  # probes need no token
    finally:
        serve.delete("echo")
