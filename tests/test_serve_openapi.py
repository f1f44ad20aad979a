"""The OpenAPI document against the live service: limits, auth scheme, stream type, and a schemathesis fuzz.

Property-based: schemathesis generates requests from /openapi.json (valid and invalid, bounded by
MAX_EXAMPLES per operation and mode) and checks every answer: no 5xx, a documented status, a
documented content type, and a body matching the documented schema.
"""

from __future__ import annotations

import pytest
import requests
from serve_support import API_APP, API_ARGS, start_app

pytestmark = pytest.mark.timeout(300)
MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def url(ray_cluster):
    return start_app(API_APP, **API_ARGS)


def test_openapi_documents_limits_auth_and_event_stream(url):
    spec = requests.get(url + "/openapi.json", timeout=30).json()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {**spec["components"]["securitySchemes"]["bearerAuth"],
                                                                   "type": "http", "scheme": "bearer"}  # fmt: skip
    post = spec["paths"]["/v1/reports"]["post"]
    assert post["security"] == [{"bearerAuth": []}, {}]  # this app has no token: auth optional
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["images"]["maxItems"] == 4 and form["max_new_tokens"]["maximum"] == API_ARGS["max_new_tokens_limit"]
    assert form["language"]["enum"] == ["en", "zh"] and form["mode"]["enum"] == ["onestep", "multistep", "ar"]
    js = post["requestBody"]["content"]["application/json"]["schema"]["properties"]["images"]
    assert js["maxItems"] == 4 and js["items"]["maxLength"] > API_ARGS["max_body_bytes"]
    stream = spec["paths"]["/v1/reports/stream"]["post"]["responses"]["200"]
    assert list(stream["content"]) == ["text/event-stream"] and "event: final" in stream["description"]
    assert {"408", "413", "422"} <= set(post["responses"])
    assert "Swagger" in requests.get(url + "/docs", timeout=30).text


def test_type_errors_are_422_before_count_checks(url):
    r = requests.post(url + "/v1/reports", json={"images": ["AAAA"] * 11, "language": 5}, timeout=30)
    assert r.status_code == 422, r.text
    r = requests.post(url + "/v1/reports", json={"images": ["AAAA"] * 11}, timeout=30)
    assert r.status_code == 413, r.text


def test_schemathesis_fuzz_finds_no_server_error_or_schema_mismatch(url):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_dict(requests.get(url + "/openapi.json", timeout=30).json())
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    cases = {"n": 0}
    for result in schema.get_all_operations():
        op = result.ok()
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if op.method.lower() == "post" else [])
        for mode in modes:  # GETs take no input: nothing negative to generate

            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(case=op.as_strategy(generation_mode=mode))
            def fuzz(case):
                cases["n"] += 1
                case.call_and_validate(base_url=url, checks=checks, timeout=60)

            fuzz()
    print(f"\nschemathesis: {cases['n']} cases, 0 failures")
    assert cases["n"] >= 40
    assert requests.get(url + "/healthz", timeout=10).status_code == 200
