"""The OpenAPI document against the live service: limits, auth scheme, stream type, and a schemathesis fuzz.

Property-based: schemathesis generates requests from /openapi.json for both APIs (/v1/reports and
OpenAI's /v1/chat/completions; valid and invalid, bounded by MAX_EXAMPLES per operation and mode)
and runs every default check on each answer: no 5xx, a documented status, content type and body,
valid data accepted, invalid data rejected (what the schema forbids, the server refuses).
"""

from __future__ import annotations

import pytest
import requests
from conftest import REPO
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


def test_what_the_schema_forbids_the_server_refuses_as_a_validation_error(url):
    """maxItems 4 and minLength 1 are declared, so breaking them is a 422 (400 on the OpenAI route)."""
    r = requests.post(url + "/v1/reports", json={"images": ["AAAA"] * 11, "language": 5}, timeout=30)
    assert r.status_code == 422, r.text
    r = requests.post(url + "/v1/reports", json={"images": ["AAAA"] * 5}, timeout=30)
    assert r.status_code == 422 and "images" in r.json()["error"], r.text
    spec = requests.get(url + "/openapi.json", timeout=30).json()
    items = spec["paths"]["/v1/reports"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert items["images"]["items"]["minLength"] == 1
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "404", "429"} <= set(chat["responses"]) and "system messages do not change" in chat["description"]


def test_schemathesis_fuzz_finds_no_server_error_or_schema_mismatch(url):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    from schemathesis.config import SchemathesisConfig

    config = SchemathesisConfig.from_path(str(REPO / "schemathesis.toml"))  # what `st run` reads in the repo root
    schema = schemathesis.openapi.from_dict(requests.get(url + "/openapi.json", timeout=30).json(), config=config)
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
                case.call_and_validate(base_url=url, timeout=60)  # every default check

            fuzz()
    print(f"\nschemathesis: {cases['n']} cases, 0 failures")
    assert cases["n"] >= 40
    assert requests.get(url + "/healthz", timeout=10).status_code == 200
