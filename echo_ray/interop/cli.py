"""`echo-ray pacs`: the DICOMweb loop from the command line (and, through jobs/pacs.py, as a Ray job).

Usage:
    ECHO_PACS_AUTH=user:password echo-ray pacs --dicomweb http://127.0.0.1:8042/dicom-web --model runs/tiny --once
    echo-ray pacs --dicomweb https://pacs/dicom-web --auth-file ~/.pacs_auth --service http://127.0.0.1:8000 --poll-s 30
"""

from __future__ import annotations

import argparse
import json
from collections import Counter


def add_pacs_parser(sub) -> None:
    from echo_ray.config.args import add_config_args

    p = sub.add_parser("pacs", help="poll a PACS over DICOMweb and file an AI draft SR into each new chest X-ray study")
    p.add_argument("--dicomweb", required=True, help="DICOMweb base URL, e.g. http://127.0.0.1:8042/dicom-web")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint directory: decode in this process")
    src.add_argument("--service", help="URL of a running echo_ray service (its POST /v1/reports)")
    p.add_argument("--poll-s", type=float, default=30.0, help="seconds between polls (default 30)")
    p.add_argument("--once", action="store_true", help="one pass, then exit (1 when a study failed)")
    p.add_argument("--auth-file", help="PACS credentials file (mode 0600): 'user:password' (Basic) or a token (Bearer)")
    p.add_argument("--auth-env", default="ECHO_PACS_AUTH", help="variable holding the PACS credentials when no file")
    p.add_argument("--service-token-file", help="the echo_ray service's bearer token file (else ECHO_API_TOKEN)")
    p.add_argument("--max-attempts", type=int, default=3, help="failures per study before it is no longer retried")
    p.add_argument("--mode", choices=["onestep", "multistep", "ar"], default=None, help="decoding mode (default: config)")
    add_config_args(p)
    p.set_defaults(func=run_pacs)


def make_source(args: argparse.Namespace, cfg):
    from dataclasses import replace

    from echo_ray.interop.sources import LocalSource, ServiceSource

    decode = replace(cfg.decode, mode=args.mode) if args.mode else cfg.decode
    if args.service:
        return ServiceSource.connect(args.service, decode.mode, decode.language, args.service_token_file)
    return LocalSource.from_checkpoint(args.model, decode, cfg.prompt, cfg.model)


def run_pacs(args: argparse.Namespace) -> int:
    import requests

    from echo_ray.config.args import config_from_args
    from echo_ray.errors import InputError
    from echo_ray.interop.dicomweb import Pacs
    from echo_ray.interop.pacs import LoopConfig, PacsLoop

    if args.max_attempts < 1 or args.poll_s < 0:
        raise InputError("--max-attempts must be >= 1 and --poll-s >= 0")
    cfg = config_from_args(args)
    pacs = Pacs.connect(args.dicomweb, args.auth_file, args.auth_env)
    loop = PacsLoop(pacs, make_source(args, cfg), LoopConfig(max_attempts=args.max_attempts))
    if not args.once:
        loop.run(args.poll_s)
        return 0
    try:
        outcomes = loop.poll()
    except requests.RequestException as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        why = f"HTTP {status}" if status else e.__class__.__name__
        raise InputError(f"PACS at {args.dicomweb} did not answer the study query ({why})") from None
    counts = Counter(o.status for o in outcomes)
    print(json.dumps({"studies": len(outcomes), **counts,
                      "not_stored": [{"study": o.study_uid, "reason": o.reason} for o in outcomes if o.reason]}))  # fmt: skip
    return 1 if counts["failed"] or counts["gave_up"] else 0


def write_generated(report, args: argparse.Namespace, decode) -> int:
    """`echo-ray generate --format F [--out FILE]`: render one GeneratedReport (DICOM inputs become SR sources)."""
    from pathlib import Path

    from echo_ray.errors import InputError
    from echo_ray.interop.formats import dicom_sources, render_report
    from echo_ray.interop.identity import ModelIdentity

    if args.format == "dicom-sr" and not args.out:
        raise InputError("--format dicom-sr writes a binary file: give --out FILE")
    if args.format == "json":
        body = json.dumps({k: v for k, v in report.as_dict().items() if k != "tokens"} | {"n_tokens": len(report.tokens)})
        data = body.encode("utf-8")
    else:
        identity = ModelIdentity.for_checkpoint(args.model, decode.mode, decode.block_size)
        sources = dicom_sources([Path(p).read_bytes() for p in args.image])
        data, _ = render_report(report, args.format, identity, sources, decode.language)
    if args.out:
        Path(args.out).write_bytes(data)
        print(f"wrote {args.format} report to {args.out}")
    else:
        print(data.decode("utf-8"))
    return 0
