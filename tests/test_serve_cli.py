"""`echo-ray serve` on local Ray, with bearer-token auth from a private token file; the token never in logs."""

from __future__ import annotations

import argparse
import base64
import os
from pathlib import Path

import pytest
import requests
from serve_support import http_base, phantom_pngs, tiny_checkpoint, wait_ready

from echo_ray.serve.cli import add_serve_parser, run_serve

TOKEN = "test-token-0123456789"


@pytest.mark.timeout(240)
def test_echo_ray_serve_runs_locally_with_bearer_auth(ray_cluster, tmp_path):
    from ray import serve
    from ray._private.worker import _global_node  # test-only: this session's log directory

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"serve:\n  auth_token_file: {token_file}\n")
    base = http_base()  # the session's proxy; run_serve's serve.start joins it
    parser = argparse.ArgumentParser(prog="echo-ray")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", "--model", str(tiny_checkpoint()), "--config", str(cfg), "--port",
                              base.rsplit(":", 1)[1], "--num-cpus", "0.25", "--ingress-cpus", "0.25", "--max-new-tokens", "8"])  # fmt: skip
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
        chat = {"model": Path(str(tiny_checkpoint())).name, "max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}]}]}  # fmt: skip
        denied = requests.post(f"{base}/v1/chat/completions", json=chat, timeout=60)  # same auth, OpenAI's error shape
        assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
        import openai

        reply = openai.OpenAI(base_url=f"{base}/v1", api_key=TOKEN, max_retries=0).chat.completions.create(**chat)
        assert reply.choices[0].message.content == ok.json()["text"] and reply.usage.completion_tokens == 8
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200  # probes need no token
        spec = requests.get(f"{base}/openapi.json", timeout=10).json()
        assert spec["paths"]["/v1/reports"]["post"]["security"] == [{"bearerAuth": []}]
    finally:
        serve.delete("echo")
    logs = Path(_global_node.get_session_dir_path()) / "logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert len(files) > 5
    leaks = [str(p) for p in files if TOKEN.encode() in p.read_bytes()]
    assert not leaks, f"token written to {leaks}"


def test_token_file_must_be_private_and_non_empty(tmp_path):
    from echo_ray.config import ServeConfig
    from echo_ray.errors import ConfigError
    from echo_ray.serve.auth import check_bearer, load_token
    from echo_ray.serve.schemas import ApiError

    f = tmp_path / "token"
    f.write_text("secret\n")
    os.chmod(f, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_token(ServeConfig(auth_token_file=str(f)))
    os.chmod(f, 0o600)
    assert load_token(ServeConfig(auth_token_file=str(f))) == "secret"
    f.write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        load_token(ServeConfig(auth_token_file=str(f)))
    with pytest.raises(ConfigError, match="does not exist"):
        load_token(ServeConfig(auth_token_file=str(tmp_path / "missing")))
    check_bearer("Bearer secret", "secret")
    check_bearer("", "")  # no token configured: auth off
    with pytest.raises(ApiError):
        check_bearer("Bearer secreT", "secret")
