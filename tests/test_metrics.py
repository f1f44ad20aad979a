"""Training progress lines: written once per step, not through (Ray Train's patched) print."""

from __future__ import annotations

import builtins

from echo_ray.train.metrics import MetricsLogger


def test_progress_line_bypasses_patched_print(tmp_path, monkeypatch, capsys) -> None:
    # Ray Train replaces `print` in its workers with a function that logs AND tees to stdout,
    # which printed every progress line twice on the driver; the logger must not go through it.
    calls: list[str] = []
    monkeypatch.setattr(builtins, "print", lambda *a, **k: calls.append(" ".join(map(str, a))))
    log = MetricsLogger(str(tmp_path), "cpt", max_steps=2)
    for step in (1, 2):
        log.log(step, {"loss": 3.0, "tokens_per_s": 100.0, "lr": 1e-3, "grad_norm": 0.5})
    log.close()
    out = capsys.readouterr().out.splitlines()
    assert calls == []
    assert [line.split(" |")[0] for line in out] == ["[cpt] step 1/2 (50%)", "[cpt] step 2/2 (100%)"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
