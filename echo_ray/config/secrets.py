"""Secrets read from private files: the service's bearer token and the PACS credentials.

A secret never travels in a config file, a Ray `runtime_env` or a command line (Ray writes those in
clear text to its logs); it is read where it is used, from a file only its owner can read. One
reader serves every such file so the checks and their messages are the same everywhere.

Usage:
    token = read_secret_file(cfg.auth_token_file, "serve.auth_token_file", "it must exist on every replica's node")
"""

from __future__ import annotations

import stat
from pathlib import Path

from echo_ray.errors import ConfigError


def read_secret_file(path: str, what: str, missing_hint: str = "") -> str:
    """The secret in `path`, whitespace stripped; ConfigError naming `what` when missing, readable by
    group or others (mode), or empty."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        hint = f" ({missing_hint})" if missing_hint else ""
        raise ConfigError(f"{what} {p} does not exist{hint}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what} {p} has mode {stat.S_IMODE(st.st_mode):04o}; make it private with: chmod 600 {p}")
    secret = p.read_text(encoding="utf-8").strip()
    if not secret:
        raise ConfigError(f"{what} {p} is empty")
    return secret
