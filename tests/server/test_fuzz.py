"""Schema-driven fuzzing of every route of a running `embedkit serve`: no 5xx, no hang, and every error
body in TEI's shape ({"error", "error_type"}, or {"message", "code", "type"} on the OpenAI route) with
the status the server's one error table gives its type.

schemathesis generates requests from the server's own OpenAPI schema (bounded examples per route),
valid and invalid alike; they go over HTTP with the API key. (Its pytest decorator needs a pytest
older than ours, so the strategies are driven with hypothesis directly.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from embedkit.server.errors import ERROR_STATUS, OPENAI_ERROR_PATHS

from .conftest import API_KEY, RunningServer

# the served model's own routes, which the schema must list (each app lists the other kinds' too, refused)
ROUTES = {
    "server": {"/embed", "/v1/embeddings", "/tokenize", "/info", "/health"},
    "rerank_server": {"/rerank", "/v1/rerank", "/info", "/health"},
}


@pytest.mark.parametrize("which", sorted(ROUTES))
def test_no_request_breaks_the_server(which: str, request: pytest.FixtureRequest) -> None:
    server: RunningServer = request.getfixturevalue(which)
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= ROUTES[which]
    seen: dict[str, set[int]] = {}
    not_tei: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
            seen.setdefault(case.operation.path, set()).add(response.status_code)
            assert response.status_code < 500, (case.operation.path, case.body, response.text[:300])
            if response.status_code >= 400:  # every refusal in TEI's shape, its status from the one table
                shape = _error_shape(case.operation.path, response)
                if shape:
                    not_tei.append(f"{case.operation.path} {response.status_code}: {shape}")
            assert API_KEY not in response.text

        call()
    print(f"\nstatus codes seen per route: { {path: sorted(codes) for path, codes in seen.items()} }")
    assert any(200 in codes for codes in seen.values()) and any(422 in codes for codes in seen.values())
    assert not_tei == [], not_tei[:10]  # 0 error bodies outside TEI's shapes


def _error_shape(path: str, response) -> str | None:
    """None when `response` is TEI's error body for its route, else what is wrong with it."""
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:100]!r}"
    if path in OPENAI_ERROR_PATHS:
        if not isinstance(body, dict) or set(body) != {"message", "code", "type"}:
            return f"not OpenAI-route shaped: {body!r:.200}"
        error_type, message = body["type"], body["message"]
        if body["code"] != response.status_code:
            return f"code {body['code']} != status"
    else:
        if not isinstance(body, dict) or set(body) != {"error", "error_type"}:
            return f"not TEI shaped: {body!r:.200}"
        error_type, message = body["error_type"], body["error"]
    if ERROR_STATUS.get(error_type) != response.status_code:
        return f"{error_type!r} is not answered {response.status_code} by ERROR_STATUS"
    return None if isinstance(message, str) and message else f"empty message: {body!r}"
