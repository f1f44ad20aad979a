"""Server-sent events for `/v1/reports/stream`: one `block` event per finished block, then `final`.

Wire format (https://html.spec.whatwg.org/multipage/server-sent-events.html): ``event: <name>``,
``data: <one JSON line>``, blank line. Block events carry the whole text so far (byte-level BPE can
split a character across blocks, so a client that concatenates raw deltas could show broken
characters; replacing the text is always right) plus the delta for convenience. The final event is
the same object `/v1/reports` returns. A failure after the stream started becomes an `error` event
with the status the plain route would have used.

Usage:
    yield sse_event("block", row_block_payload(row_event, text, n_tokens, previous_text, t0))
    yield sse_event("final", report_response(...))
    parse_sse(body_text)   # [(event, data_dict), ...] (tests, benchmark)
"""

from __future__ import annotations

import json
import time
from typing import Any



def sse_event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode("utf-8")


def row_block_payload(ev, text: str, n_tokens: int, previous_text: str, t0: float) -> dict[str, Any]:
    """The `block` payload of one engine row event (`RowEvent`)."""
    delta = text[len(previous_text) :] if text.startswith(previous_text) else text
    return {
        "index": ev.block,
        "new_tokens": len(ev.tokens),
        "tokens": n_tokens,
        "text": text,
        "delta": delta,
        "finished": bool(ev.finished),
        "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2),
    }


def parse_sse(body: str) -> list[tuple[str, dict[str, Any]]]:
    """Split an SSE body into (event name, JSON data) pairs."""
    out = []
    for chunk in body.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in chunk.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            out.append((name, json.loads("\n".join(data))))
    return out
