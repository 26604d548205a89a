# ruff: noqa: F811
"""Property-based requests generated from the app's OpenAPI document (schemathesis): no input makes a 5xx, and
every documented answer has its documented shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from apitools import RunningApi, api, bearer, tokens  # noqa: F401
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance


@pytest.fixture(scope="module")
def api_schema(api: RunningApi) -> Any:
    document = httpx.get(f"{api.url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    schema.config.base_url = api.url  # type: ignore[attr-defined]
    return schema.exclude(path="/api/v1/stream")  # an endless response: covered by test_api_stream


SETTINGS = hypothesis_settings(max_examples=8, deadline=None, derandomize=True, database=None,
                              suppress_health_check=list(HealthCheck))


def check_every_operation(schema: Any, api: RunningApi, token: str) -> int:
    """Run generated cases of every operation; returns how many operations were exercised."""
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @SETTINGS
        def exercise(case: Any) -> None:
            response = case.call(base_url=api.url, headers=bearer(token))
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        exercise()
    return operations


@pytest.mark.parametrize("who", ["a-001", "w-001", "s-001"])
def test_generated_requests_never_get_a_server_error(api_schema: Any, api: RunningApi, tokens: dict[str, str],
                                                     who: str) -> None:
    assert check_every_operation(api_schema, api, tokens[who]) >= 18
