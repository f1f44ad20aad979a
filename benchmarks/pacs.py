"""The DICOMweb loop's throughput and latency against a local Orthanc (tiny preset, CPU).

Starts Orthanc + its DICOMweb plugin on a loopback port (Debian packages `orthanc`,
`orthanc-dicomweb`), stores `--studies` phantom CR studies (PA + lateral where the phantom has one),
and runs one pass of `echo-ray pacs`'s loop with a local tiny-preset generator:

* `studies_per_min`: SRs filed per minute of wall time over that pass (QIDO, metadata, WADO-RS
  retrieval, decoding, SR building, STOW-RS);
* `share_transfer` / `share_decode`: of the per-study time, the part spent in DICOMweb requests vs.
  image decoding + report generation + SR building (`other_s` is the pass's remaining wall time:
  the QIDO listing and Python overhead);
* `latency_s`: with the loop polling every `--poll-s` (5 s), `--arrivals` new studies are stored one
  by one at `--arrival-gap-s` intervals; each study's wait from its arrival in the PACS to its SR
  being stored (mean, p50, max). Expect about half a poll interval plus one study's processing.

The tiny preset's random weights never emit EOS, so every report decodes the full `--max-new`
tokens: decode time is the fixed-budget worst case. Usage:
    python benchmarks/pacs.py --json
    python benchmarks/pacs.py --studies 3 --arrivals 2 --max-new 8 --json      # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image
from pydicom.uid import generate_uid


def _upload_study(orthanc, study: dict) -> str:
    from echo_ray.interop.local_pacs import cr_instance

    uid = generate_uid()
    for im in study["images"]:
        view = "LL" if im["view"] == "LATERAL" else im["view"]
        orthanc.upload(cr_instance(Image.open(im["path"]), uid, view=view, patient_id=f"SYNTH-{study['study_id']}"))
    return uid


def _source(args, root: Path):
    from echo_ray.config import load_config
    from echo_ray.data.phantom import tokenizer_corpus
    from echo_ray.interop.sources import LocalSource
    from echo_ray.model.tiny import build_tiny_checkpoint

    cfg = load_config(None, {"decode.max_new_tokens": args.max_new})
    model = args.model or str(build_tiny_checkpoint(root / "tiny", cfg.model.tiny, 8, tokenizer_corpus()))
    return LocalSource.from_checkpoint(model, cfg.decode, cfg.prompt, cfg.model)


def throughput(orthanc, pacs, source, studies: list[dict]) -> dict:
    from echo_ray.interop.pacs import PacsLoop

    for st in studies:
        _upload_study(orthanc, st)
    loop = PacsLoop(pacs, source)
    t0 = time.perf_counter()
    outcomes = loop.poll()
    wall = time.perf_counter() - t0
    stored = [o for o in outcomes if o.status == "stored"]
    transfer, decode = sum(o.transfer_s for o in stored), sum(o.decode_s for o in stored)
    return {"studies": len(stored), "images": sum(o.images for o in stored), "wall_s": round(wall, 2),
            "studies_per_min": round(len(stored) / wall * 60, 2) if wall else None,
            "transfer_s": round(transfer, 3), "decode_s": round(decode, 3), "other_s": round(wall - transfer - decode, 3),
            "share_transfer": round(transfer / (transfer + decode), 4) if stored else None,
            "share_decode": round(decode / (transfer + decode), 4) if stored else None}  # fmt: skip


def latency(orthanc, pacs, source, studies: list[dict], poll_s: float, gap_s: float) -> dict:
    """Arrival (stored into Orthanc) -> SR stored, with the loop polling every `poll_s` in a thread."""
    from echo_ray.interop.pacs import PacsLoop

    loop, stop, done = PacsLoop(pacs, source), threading.Event(), {}
    loop.done.update(pacs.study_uids(("CR", "DX")))  # earlier studies are settled already

    def run() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            for o in loop.poll():
                if o.status == "stored":
                    done[o.study_uid] = o.finished_at
            stop.wait(max(0.0, poll_s - (time.monotonic() - t0)))

    th = threading.Thread(target=run, daemon=True)
    th.start()
    arrived = {}
    for st in studies:
        uid = _upload_study(orthanc, st)
        arrived[uid] = time.monotonic()
        time.sleep(gap_s)
    deadline = time.monotonic() + 120 + poll_s * 2
    while time.monotonic() < deadline and not set(arrived) <= set(done):
        time.sleep(0.2)
    stop.set()
    th.join(timeout=300)
    waits = [done[u] - t for u, t in arrived.items() if u in done]
    return {"poll_s": poll_s, "arrivals": len(arrived), "stored": len(waits),
            "mean": round(statistics.mean(waits), 2) if waits else None,
            "p50": round(statistics.median(waits), 2) if waits else None,
            "max": round(max(waits), 2) if waits else None}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=24, help="studies for the throughput pass")
    ap.add_argument("--arrivals", type=int, default=8, help="studies arriving one by one for the latency run")
    ap.add_argument("--arrival-gap-s", type=float, default=3.7, help="seconds between arrivals (not a poll multiple)")
    ap.add_argument("--poll-s", type=float, default=5.0)
    ap.add_argument("--max-new", type=int, default=64, help="tokens per report (tiny preset never stops early)")
    ap.add_argument("--model", default=None, help="checkpoint directory (default: a fresh tiny-preset one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from echo_ray.data.phantom import read_phantom, write_phantom
    from echo_ray.interop.dicomweb import Pacs
    from echo_ray.interop.local_pacs import LocalOrthanc, orthanc_missing

    why = orthanc_missing()
    if why:
        raise SystemExit(f"benchmarks/pacs.py: {why}")
    root = Path(tempfile.mkdtemp(prefix="echo_pacs_bench_"))
    write_phantom(root / "phantom", args.studies + args.arrivals, seed=0)
    corpus = read_phantom(root / "phantom")
    source = _source(args, root)
    with LocalOrthanc(root / "orthanc") as orthanc:
        pacs = Pacs.connect(orthanc.dicomweb, secret=orthanc.auth_secret)
        result = {"benchmark": "pacs", "preset": "tiny" if not args.model else args.model, "max_new_tokens": args.max_new,
                  "throughput": throughput(orthanc, pacs, source, corpus[: args.studies]),
                  "latency_s": latency(orthanc, pacs, source, corpus[args.studies :], args.poll_s,
                                       args.arrival_gap_s)}  # fmt: skip
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
