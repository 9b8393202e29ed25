"""Schemathesis against the served /api/openapi.json: generated requests for every operation, signed in
with a session (and its CSRF token) and anonymously; no server error and no response off its schema."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from web.conftest import WebApp

EXAMPLES = 6  # per operation and caller: seconds in all, not a soak (bench-style runs raise it)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_generated_requests_find_no_server_error_and_no_schema_violation(web: WebApp) -> None:
    web.add_user("fuzz@example.com")
    with web.client() as client:
        csrf = web.sign_in(client, "fuzz@example.com")
        raw = client.get("/api/openapi.json").json()
        cookie = client.cookies["__Host-thingward_session"]
    schema = schemathesis.openapi.from_dict(raw)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    failures: list[str] = []
    http = requests.Session()
    http.verify = str(web.platform.ca_certificate_path)
    callers = {
        "anonymous": {},
        "signed-in": {"Cookie": f"__Host-thingward_session={cookie}", "X-CSRF-Token": csrf},
    }
    try:
        for operation in operations:
            if operation.path in {"/api/v1/enroll", "/api/v1/auth/logout"}:
                continue  # enrollment has its own attack tests; logging out would end the fuzzing session
            for caller, headers in callers.items():
                _fuzz(operation, web.url, http, caller, headers, failures)
    finally:
        http.close()
    assert not failures, "\n".join(failures[:10])


def _fuzz(
    operation: schemathesis.APIOperation,
    base_url: str,
    http: requests.Session,
    caller: str,
    headers: dict[str, str],
    failures: list[str],
) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, session=http, headers=headers, timeout=10, verify=http.verify)
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        except Exception as e:  # collected, so one run reports every operation that fails
            failures.append(f"{caller} {operation.method.upper()} {operation.path}: {str(e)[:600]}")

    run()
