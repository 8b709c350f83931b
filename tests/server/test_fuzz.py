"""Schema-driven fuzzing of every route of a running `embedkit serve`: no 5xx, no hang.

schemathesis generates requests from the server's own OpenAPI schema (bounded examples per route),
valid and invalid alike; they go over HTTP with the API key. (Its pytest decorator needs a pytest
older than ours, so the strategies are driven with hypothesis directly.)
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from .conftest import API_KEY, RunningServer


def test_no_request_breaks_the_server(server: RunningServer) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/embed", "/v1/embeddings", "/tokenize", "/info", "/health"}
    seen: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case) -> None:  # noqa: ANN001
            response = case.call(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
            seen.setdefault(case.operation.path, set()).add(response.status_code)
            assert response.status_code < 500, (case.operation.path, case.body, response.text[:300])
            if response.status_code >= 400 and response.content:  # every refusal says what, as JSON
                body = response.json()
                assert body.get("error") or body.get("message"), body
            assert API_KEY not in response.text

        call()
    print(f"\nstatus codes seen per route: { {path: sorted(codes) for path, codes in seen.items()} }")
    assert any(200 in codes for codes in seen.values()) and any(422 in codes for codes in seen.values())
