"""The DICOMweb loop: find chest X-ray studies without our SR, report on them, file the SR back.

Each poll: QIDO-RS lists CR/DX studies; a study whose SR from this model version already exists
(its SOP Instance UID is derived from the study UID and the model identity, `identity.sr_uids`) is
done. Otherwise WADO-RS fetches the study metadata, `select_images` picks frontal then lateral views
(at most 4), WADO-RS retrieves them, the source writes the report, and STOW-RS stores the SR into the
same study. Concurrent runs cannot file two SRs for one study: they would store the same SOP
Instance UID, which a PACS keeps once (Orthanc answers a repeated STOW with success and stores
nothing; verified in tests/test_interop_pacs.py). A study that fails (decoding error, PACS refusal)
is logged by UID with the reason and retried on the next poll, up to `max_attempts`; a study that
does not qualify (no frontal view, not chest) is logged once and skipped. Logs carry study UIDs,
reasons and timings only: no names, IDs or report text.

Usage:
    loop = PacsLoop(Pacs.connect(url, auth_file=...), LocalSource.from_checkpoint(...), LoopConfig())
    outcomes = loop.poll()            # one pass; loop.run(poll_s=30) forever
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import requests

from echo_ray.errors import InputError
from echo_ray.interop.dicomweb import Pacs
from echo_ray.interop.identity import sr_uids
from echo_ray.interop.selection import select_images
from echo_ray.interop.sr import build_sr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    modalities: tuple[str, ...] = ("CR", "DX")
    max_images: int = 4
    max_attempts: int = 3  # failures per study before the loop stops retrying it (until restart)


@dataclass
class StudyOutcome:
    study_uid: str
    status: str  # stored | done | skipped | failed | gave_up
    reason: str = ""
    transfer_s: float = 0.0  # DICOMweb: metadata, image retrieval, SR storage
    decode_s: float = 0.0  # image decoding + report generation
    images: int = 0
    finished_at: float = 0.0  # time.monotonic() when the study was settled (for arrival -> SR latency)


@dataclass
class PacsLoop:
    pacs: Pacs
    source: object  # LocalSource | ServiceSource
    cfg: LoopConfig = field(default_factory=LoopConfig)
    done: set[str] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)

    def poll(self) -> list[StudyOutcome]:
        """One pass over the PACS; returns what happened to every study not settled before."""
        out = []
        for uid in self.pacs.study_uids(self.cfg.modalities):
            if uid in self.done or uid in self.skipped or self.attempts.get(uid, 0) >= self.cfg.max_attempts:
                continue
            out.append(self._study(uid))
        return out

    def run(self, poll_s: float, max_polls: int | None = None) -> None:
        n = 0
        while max_polls is None or n < max_polls:
            t0 = time.monotonic()
            try:
                outcomes = self.poll()
                stored = sum(o.status == "stored" for o in outcomes)
                log.info("poll: %d stored, %d studies looked at", stored, len(outcomes))
            except requests.RequestException as e:  # the PACS is down: try again next poll
                log.warning("poll failed: PACS unreachable or refused the query (%s)", e.__class__.__name__)
            n += 1
            time.sleep(max(0.0, poll_s - (time.monotonic() - t0)))

    def _study(self, uid: str) -> StudyOutcome:
        outcome = StudyOutcome(uid, "failed")
        try:
            self._process(uid, outcome)
        except InputError as e:
            outcome.reason = str(e)
        except requests.HTTPError as e:
            code = e.response.status_code if e.response is not None else "?"
            outcome.reason = f"PACS refused a DICOMweb request: HTTP {code}"
        except requests.RequestException as e:
            outcome.reason = f"PACS unreachable: {e.__class__.__name__}"
        except Exception as e:  # keep serving the other studies; the class names the bug, the message may hold PHI
            outcome.reason = f"unexpected {e.__class__.__name__}"
        if outcome.status == "failed":
            n = self.attempts[uid] = self.attempts.get(uid, 0) + 1
            if n >= self.cfg.max_attempts:
                outcome.status = "gave_up"
            log.warning("study %s: %s (%s), attempt %d/%d", uid, outcome.status, outcome.reason, n, self.cfg.max_attempts)
        outcome.finished_at = time.monotonic()
        return outcome

    def _process(self, uid: str, o: StudyOutcome) -> None:
        ident = self.source.identity
        _, sop_uid = sr_uids(uid, ident)
        t0 = time.perf_counter()
        if self.pacs.has_instance(uid, sop_uid):
            self.done.add(uid)
            o.status, o.transfer_s = "done", time.perf_counter() - t0
            return
        chosen, reason = select_images(self.pacs.study_metadata(uid), self.cfg.modalities, self.cfg.max_images)
        if reason:
            self.skipped[uid] = reason
            o.status, o.reason, o.transfer_s = "skipped", reason, time.perf_counter() - t0
            log.info("study %s: skipped (%s)", uid, reason)
            return
        datasets = [self.pacs.retrieve(uid, c.series_uid, c.sop_uid) for c in chosen]
        t1 = time.perf_counter()
        content = self.source.report(datasets)
        sr = build_sr(content, ident, datasets)
        t2 = time.perf_counter()
        if not self.pacs.has_instance(uid, sop_uid):  # another run may have filed it meanwhile
            self.pacs.store(sr)
        self.done.add(uid)
        o.status, o.images = "stored", len(datasets)
        o.transfer_s, o.decode_s = (t1 - t0) + (time.perf_counter() - t2), t2 - t1
        log.info("study %s: SR stored (%d images, transfer %.2f s, decode %.2f s)", uid, o.images, o.transfer_s, o.decode_s)
