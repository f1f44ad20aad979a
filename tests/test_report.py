"""Report serialization and parsing shared by targets, decoders and evaluation."""

from echo_ray.report import format_report, parse_report


def test_roundtrip_en_and_zh() -> None:
    t = format_report("Heart size normal.", "No acute disease.", "en")
    assert t == "Findings: Heart size normal. Impression: No acute disease."
    p = parse_report(t)
    assert p.complete and p.findings == "Heart size normal." and p.impression == "No acute disease."
    z = format_report("心影大小正常。", "未见异常。", "zh")
    assert z == "所见：心影大小正常。 结论：未见异常。"
    pz = parse_report(z)
    assert pz.complete and pz.findings == "心影大小正常。" and pz.impression == "未见异常。"


def test_missing_sections() -> None:
    p = parse_report("Impression: effusion")
    assert not p.has_findings and p.has_impression and p.impression == "effusion"
    q = parse_report("garbled text")
    assert not q.complete and q.findings == "garbled text" and q.impression == ""
