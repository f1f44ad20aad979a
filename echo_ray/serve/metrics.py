"""Ray Serve custom metrics of the continuous-batching scheduler (Prometheus via Ray's metrics agent).

Exported per replica (Serve adds the deployment, replica and application tags):
`echo_serve_slots_in_use` and `echo_serve_queue_length` (gauges, set after every block step and on
every admission refusal), `echo_serve_rows_per_step` (histogram: rows that shared one engine step),
`echo_serve_rejected_total` (429s) and `echo_serve_cancelled_total` (rows freed because their client
left). The same figures are in `/v1/status` (`batching`) and in the engine replica's
`record_autoscaling_stats` (for a custom autoscaling policy).

Usage:
    metrics = SchedulerMetrics(slots=16)
    scheduler = Scheduler(engine, 64, on_step=metrics.on_step); metrics.bind(scheduler)
"""

from __future__ import annotations

import threading

from ray.serve import metrics


class SchedulerMetrics:
    def __init__(self, slots: int):
        bounds = sorted({1, 2, 4, 8, 16, 32, 64, 128, slots} | {b for b in (1, 2, 4, 8) if b <= slots})
        self.slots_in_use = metrics.Gauge("echo_serve_slots_in_use", description="engine rows decoding now")
        self.queue_length = metrics.Gauge("echo_serve_queue_length", description="requests waiting for a slot")
        self.rows_per_step = metrics.Histogram(
            "echo_serve_rows_per_step", description="rows decoded together in one engine step",
            boundaries=[float(b) for b in bounds],
        )  # fmt: skip
        self.rejected = metrics.Counter("echo_serve_rejected_total", description="requests refused with 429")
        self.cancelled = metrics.Counter("echo_serve_cancelled_total", description="rows freed: client gone")
        self._scheduler = None
        self._cancelled_seen = 0
        self._lock = threading.Lock()  # refresh runs on the scheduler thread and the event loop

    def bind(self, scheduler) -> None:
        self._scheduler = scheduler

    def on_step(self, rows: int, seconds: float) -> None:  # scheduler thread, after each step
        self.rows_per_step.observe(float(rows))
        self.refresh()

    def on_rejected(self) -> None:
        self.rejected.inc()
        self.refresh()

    def refresh(self) -> None:
        if self._scheduler is None:
            return
        with self._lock:
            snap = self._scheduler.snapshot()
            self.slots_in_use.set(snap["slots_in_use"])
            self.queue_length.set(snap["queue_length"])
            new = snap["cancelled"] - self._cancelled_seen
            if new > 0:
                self.cancelled.inc(new)
                self._cancelled_seen = snap["cancelled"]
