"""The control plane's OpenAPI, fuzzed by schemathesis: no 5xx, every response matches its schema.

One control plane (real broker and database) serves every operation in its own
OpenAPI document; schemathesis generates valid and invalid requests for each, with an
admin token so the handlers, not only the auth layer, are exercised. Failures are
collected per operation and reported together.
"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.integration

schemathesis = pytest.importorskip("schemathesis") if os.environ.get("EDGEFLEET_REQUIRE_SERVICES") != "1" else None
if schemathesis is None:  # CI: a missing fuzzer is an error, not a skip
    import schemathesis

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error, response_schema_conformance  # noqa: E402

MAX_EXAMPLES = int(os.environ.get("EDGEFLEET_FUZZ_EXAMPLES", "25"))


def _summary(exc: BaseException) -> str:
    """The failure codes and the curl line: enough to reproduce, short enough to read 10 of."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line.startswith(("- ST", "- ", "curl", "["))][:8]
    return "; ".join(kept) or f"{type(exc).__name__}: {lines[0] if lines else ''}"


def test_every_operation_survives_generated_requests(control_plane) -> None:
    from tests.conftest import control_plane_admin_headers

    base_url = control_plane.base_url
    headers = control_plane_admin_headers(control_plane)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case) -> None:
            response = case.call(base_url=base_url, headers=headers, timeout=30)
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {_summary(exc)}")
    assert operations > 10, "the OpenAPI document lists suspiciously few operations"
    assert not failures, f"{len(failures)} of {operations} operations failed:\n\n" + "\n\n".join(failures)
