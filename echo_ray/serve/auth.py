"""The service's bearer token: from a private file or the replica process's own environment.

Never through Ray's `runtime_env.env_vars`: Ray writes a runtime_env in clear text to the node's
`runtime_env_agent.log`, readable by every user of the machine (issue 12). Either

  * `auth_token_file`: a file readable only by its owner (mode 0600 or stricter, checked here; a
    file others can read is refused), present at the same path on every node that runs a replica; or
  * `auth_token_env` (default ECHO_API_TOKEN): a variable already in the environment of the Ray node
    (exported before `ray start`, or before `echo-ray serve` starts Ray itself).

Usage:
    token = load_token(cfg)            # "" = no auth
    check_bearer(request.headers.get("authorization", ""), token)   # ApiError(401) on mismatch
"""

from __future__ import annotations

import hmac
import os

from echo_ray.config.secrets import read_secret_file
from echo_ray.serve.schemas import ApiError


def read_token_file(path: str) -> str:
    """The token in `path` (surrounding whitespace stripped); ConfigError when unsafe or empty."""
    return read_secret_file(path, "serve.auth_token_file", "it must exist on every replica's node")


def load_token(cfg) -> str:
    """`cfg.auth_token_file` if set, else this process's `cfg.auth_token_env` variable, else ""."""
    if cfg.auth_token_file:
        return read_token_file(cfg.auth_token_file)
    return os.environ.get(cfg.auth_token_env, "").strip() if cfg.auth_token_env else ""


def check_bearer(authorization: str, token: str) -> None:
    """Constant-time comparison of an ``Authorization: Bearer <token>`` header; no-op without a token."""
    if not token:
        return
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise ApiError(401, "missing or invalid bearer token (send 'Authorization: Bearer <token>')")
