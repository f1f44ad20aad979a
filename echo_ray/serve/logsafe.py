"""Log-line hygiene for text that reached the service from a client.

The service logs only its own field names, ids, sizes and timings; where a value chosen by a client
must appear (a route path, an error message from a parser), `clean` escapes control characters so a
newline cannot forge a log line, and truncates it.

Usage:
    logger.info("path=%s refused: %s", clean(request.url.path), clean(exc.log_message))
"""

from __future__ import annotations


def clean(text: object, limit: int = 200) -> str:
    """`text` with control characters (newline, CR, ESC, DEL, ...) escaped as \\xNN, cut to `limit`."""
    s = str(text)
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in s[:limit])
    return out + ("..." if len(s) > limit else "")
